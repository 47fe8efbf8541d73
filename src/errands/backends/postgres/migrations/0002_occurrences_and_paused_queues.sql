-- Schedule occurrences: one row per (schedule entry, run time) ever enqueued.
-- The primary key is the exactly-once guarantee of schedules: every worker
-- tries to insert the same upcoming occurrences, and only one insert succeeds.
CREATE TABLE errands_occurrence (
    entry_key text NOT NULL,
    run_at timestamptz NOT NULL,
    request_uuid uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entry_key, run_at)
);

-- Paused queues: no worker claims requests of a queue listed here.
CREATE TABLE errands_paused_queue (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO errands_schema (version) VALUES (2);
