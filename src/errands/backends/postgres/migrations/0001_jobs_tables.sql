-- Pending jobs. Rows live briefly: inserted at enqueue, deleted at claim.
CREATE TABLE errands_request (
    uuid uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    start_at timestamptz NOT NULL,
    job_class text NOT NULL,
    parameters jsonb NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    retries integer NOT NULL DEFAULT 0,
    retry_attempt integer NOT NULL DEFAULT 0,
    concurrency_key text NOT NULL DEFAULT '',
    timeout double precision,
    source text NOT NULL DEFAULT '',
    trace_id text,
    span_id text
) WITH (
    -- Queue tables churn: every job inserts one row and deletes it soon after,
    -- while few rows are live. The default threshold (20 percent of live rows)
    -- lets a large backlog pile up dead tuples that the claim query's index scan
    -- must step over; vacuuming after 1 percent, unthrottled, keeps it short.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Claiming walks this index in claim order within a queue and stops at LIMIT.
CREATE INDEX errands_request_claim_idx
    ON errands_request (queue, priority DESC, start_at, created_at);

-- Concurrency-key checks at enqueue; most jobs have no key, so they are left out.
CREATE INDEX errands_request_slot_idx
    ON errands_request (job_class, concurrency_key)
    WHERE concurrency_key <> '';

-- Claimed jobs, owned by one worker; running once started_at is set.
-- start_at is kept so that release() can restore the request exactly.
CREATE TABLE errands_process (
    uuid uuid PRIMARY KEY,
    request_uuid uuid NOT NULL,
    requested_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    worker_id uuid NOT NULL,
    start_at timestamptz NOT NULL,
    job_class text NOT NULL,
    parameters jsonb NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL,
    retries integer NOT NULL,
    retry_attempt integer NOT NULL,
    concurrency_key text NOT NULL DEFAULT '',
    timeout double precision,
    source text NOT NULL DEFAULT '',
    trace_id text,
    span_id text,
    cancel_requested boolean NOT NULL DEFAULT false
) WITH (
    -- Same churn as errands_request (see above).
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    -- Room on each page for the started_at / cancel_requested updates to stay
    -- HOT (no index entry rewritten: neither column is indexed).
    fillfactor = 90
);

CREATE INDEX errands_process_worker_idx ON errands_process (worker_id);
CREATE INDEX errands_process_slot_idx ON errands_process (job_class, concurrency_key);
CREATE INDEX errands_process_request_idx ON errands_process (request_uuid);

-- History: one row per finished process.
CREATE TABLE errands_result (
    uuid uuid PRIMARY KEY,
    -- UNIQUE: one process produces at most one result, even if two writers
    -- (a late completion and a rescue) ever raced past the DELETE guard.
    process_uuid uuid NOT NULL UNIQUE,
    request_uuid uuid NOT NULL,
    requested_at timestamptz NOT NULL,
    started_at timestamptz,
    ended_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL
        CHECK (status IN ('SUCCESSFUL', 'ERRORED', 'CANCELLED', 'DEFERRED', 'LOST')),
    worker_id uuid,
    job_class text NOT NULL,
    parameters jsonb NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL,
    retries integer NOT NULL,
    retry_attempt integer NOT NULL,
    concurrency_key text NOT NULL DEFAULT '',
    timeout double precision,
    source text NOT NULL DEFAULT '',
    trace_id text,
    span_id text,
    error_type text NOT NULL DEFAULT '',
    error text NOT NULL DEFAULT '',
    traceback text NOT NULL DEFAULT '',
    return_value jsonb,
    retry_request_uuid uuid
);

-- Listing newest first (scanned backwards) and pruning by age (a range scan on
-- the low end) share this index rather than maintaining two on the hot insert path.
CREATE INDEX errands_result_ended_idx ON errands_result (ended_at, created_at);
CREATE INDEX errands_result_status_idx ON errands_result (status, ended_at);
CREATE INDEX errands_result_job_class_idx ON errands_result (job_class, ended_at);
CREATE INDEX errands_result_request_idx ON errands_result (request_uuid);

-- Live workers: one row each, refreshed every heartbeat interval.
CREATE TABLE errands_worker (
    worker_id uuid PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO errands_schema (version) VALUES (1);
