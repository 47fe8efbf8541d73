CREATE TABLE errands_request (
    uuid TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    start_at REAL NOT NULL,
    job_class TEXT NOT NULL,
    parameters TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    retry_attempt INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT NOT NULL DEFAULT '',
    timeout REAL,
    source TEXT NOT NULL DEFAULT '',
    trace_id TEXT,
    span_id TEXT
);
-- The claim order, per queue (workers of named queues) ...
CREATE INDEX errands_request_claim_order
    ON errands_request (queue, priority DESC, start_at, created_at);
-- ... and across all queues (workers of every queue).
CREATE INDEX errands_request_claim_order_any_queue
    ON errands_request (priority DESC, start_at, created_at);
CREATE INDEX errands_request_slot ON errands_request (job_class, concurrency_key);

-- start_at is kept (though JobProcess does not show it) so that a released
-- process goes back to exactly the request it was.
CREATE TABLE errands_process (
    uuid TEXT PRIMARY KEY,
    request_uuid TEXT NOT NULL,
    requested_at REAL NOT NULL,
    start_at REAL NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    worker_id TEXT NOT NULL,
    job_class TEXT NOT NULL,
    parameters TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    retry_attempt INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT NOT NULL DEFAULT '',
    timeout REAL,
    source TEXT NOT NULL DEFAULT '',
    trace_id TEXT,
    span_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX errands_process_worker ON errands_process (worker_id);
CREATE INDEX errands_process_request ON errands_process (request_uuid);
CREATE INDEX errands_process_slot ON errands_process (job_class, concurrency_key);

CREATE TABLE errands_result (
    uuid TEXT PRIMARY KEY,
    -- One process produces one result: a second write for it is ignored.
    process_uuid TEXT NOT NULL UNIQUE,
    request_uuid TEXT NOT NULL,
    requested_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    worker_id TEXT,
    job_class TEXT NOT NULL,
    parameters TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    retry_attempt INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT NOT NULL DEFAULT '',
    timeout REAL,
    source TEXT NOT NULL DEFAULT '',
    trace_id TEXT,
    span_id TEXT,
    error_type TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    traceback TEXT NOT NULL DEFAULT '',
    return_value TEXT,
    retry_request_uuid TEXT
);
CREATE INDEX errands_result_ended_at ON errands_result (ended_at);
CREATE INDEX errands_result_status ON errands_result (status);
CREATE INDEX errands_result_job_class ON errands_result (job_class);
CREATE INDEX errands_result_request ON errands_result (request_uuid);

CREATE TABLE errands_worker (
    worker_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    queues TEXT NOT NULL,
    started_at REAL NOT NULL,
    last_heartbeat_at REAL NOT NULL
);
