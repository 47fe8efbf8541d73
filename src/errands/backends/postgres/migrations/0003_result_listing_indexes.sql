-- For the dashboard's listings and its job detail page. Plain CREATE INDEX
-- blocks writes to errands_result while it builds (seconds on millions of rows):
-- run `errands migrate` when a short pause of job completions is acceptable.
-- Results of one queue, newest first (other filters got their index in migration_1).
CREATE INDEX errands_result_queue_idx ON errands_result (queue, ended_at);
-- Results of one concurrency key; most jobs have none, so they are left out.
CREATE INDEX errands_result_slot_idx ON errands_result (concurrency_key, ended_at)
    WHERE concurrency_key <> '';
-- The result a retry or deferral came from (the retry chain, walked backwards);
-- only retried and deferred results have one.
CREATE INDEX errands_result_retry_idx ON errands_result (retry_request_uuid)
    WHERE retry_request_uuid IS NOT NULL;

INSERT INTO errands_schema (version) VALUES (3);
