-- Expiry (errands.expiry): a job not claimed by expires_at never runs; each claim
-- turns the expired requests into CANCELLED results first. NULL for the jobs that
-- never expire. The partial index holds only the requests that may expire, so the
-- claim's look for expired ones is one probe of an empty index for queues without
-- expiry.
ALTER TABLE errands_request ADD COLUMN expires_at timestamptz;
ALTER TABLE errands_process ADD COLUMN expires_at timestamptz;
ALTER TABLE errands_result ADD COLUMN expires_at timestamptz;

CREATE INDEX errands_request_expires_idx ON errands_request (expires_at)
    WHERE expires_at IS NOT NULL;

INSERT INTO errands_schema (version) VALUES (9);
