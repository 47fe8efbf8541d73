-- Flow control (errands.Limit): a job's limits travel with it from request to
-- result, as a JSON list; NULL for the jobs that have none, which stay on the
-- claim path they had. limit_key, a request's first limit key, is what its held
-- jobs wait under: claims find a key's next jobs by it, so jobs held by a full key
-- are never read past by claims of other jobs (no head-of-line blocking).
ALTER TABLE errands_request ADD COLUMN limits jsonb;
ALTER TABLE errands_request ADD COLUMN limit_key text;
ALTER TABLE errands_process ADD COLUMN limits jsonb;
ALTER TABLE errands_result ADD COLUMN limits jsonb;

-- The claim index now holds the jobs without limits only, and limited jobs get an
-- index of their own by key: each request is in exactly one of the two, so an
-- enqueue maintains as many indexes as before.
DROP INDEX errands_request_claim_idx;
CREATE INDEX errands_request_claim_idx
    ON errands_request (queue, priority DESC, start_at, created_at)
    WHERE limit_key IS NULL;
CREATE INDEX errands_request_limited_idx
    ON errands_request (limit_key, priority DESC, start_at, created_at)
    WHERE limit_key IS NOT NULL;

-- The claimed and running jobs of a key, counted by each claim of the key.
-- fastupdate off: a pending list would be read whole by every such count.
CREATE INDEX errands_process_limits_idx ON errands_process USING gin (limits jsonb_path_ops)
    WITH (fastupdate = off) WHERE limits IS NOT NULL;

-- When the jobs of a rate-limited key were claimed, for the sliding window of its
-- rate: written by the claim that takes them, trimmed by the next claims of the key.
CREATE TABLE errands_limit_start (
    key text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX errands_limit_start_idx ON errands_limit_start (key, started_at);

INSERT INTO errands_schema (version) VALUES (8);
