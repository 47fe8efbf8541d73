-- Flow control (errands.Limit): see the PostgreSQL migration of the same name.
ALTER TABLE errands_request ADD COLUMN limits TEXT;
ALTER TABLE errands_request ADD COLUMN limit_key TEXT;
ALTER TABLE errands_process ADD COLUMN limits TEXT;
ALTER TABLE errands_result ADD COLUMN limits TEXT;

DROP INDEX errands_request_claim_order;
DROP INDEX errands_request_claim_order_any_queue;
CREATE INDEX errands_request_claim_order
    ON errands_request (queue, priority DESC, start_at, created_at)
    WHERE limit_key IS NULL;
CREATE INDEX errands_request_claim_order_any_queue
    ON errands_request (priority DESC, start_at, created_at)
    WHERE limit_key IS NULL;
CREATE INDEX errands_request_limited
    ON errands_request (limit_key, priority DESC, start_at, created_at)
    WHERE limit_key IS NOT NULL;

CREATE TABLE errands_limit_start (
    key TEXT NOT NULL,
    started_at REAL NOT NULL
);
CREATE INDEX errands_limit_start_by_key ON errands_limit_start (key, started_at);
