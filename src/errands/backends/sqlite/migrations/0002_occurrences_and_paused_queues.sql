-- Schedule occurrences: the primary key makes each (entry, run time) enqueued
-- once, however many workers try.
CREATE TABLE errands_occurrence (
    entry_key TEXT NOT NULL,
    run_at REAL NOT NULL,
    request_uuid TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (entry_key, run_at)
);

-- Paused queues: no worker claims requests of a queue listed here.
CREATE TABLE errands_paused_queue (
    queue TEXT PRIMARY KEY,
    paused_at REAL NOT NULL
);
