-- The result a retry or deferral came from (the dashboard's retry chain, walked
-- backwards); only retried and deferred results have one.
CREATE INDEX errands_result_retry ON errands_result (retry_request_uuid)
    WHERE retry_request_uuid IS NOT NULL;
