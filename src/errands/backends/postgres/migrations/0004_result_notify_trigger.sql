-- Wake-ups for errands.wait_for_result(): each statement that writes results
-- (completions, cancellations, rescues) sends one NOTIFY on channel
-- errands_results, delivered at commit. A trigger rather than a pg_notify in each
-- of those statements, so that no writer of results can forget it. One
-- notification per statement, not per row, keeps a batch of completions at one
-- NOTIFY. The payload lists the request uuids of the new results, comma-separated,
-- or is empty (meaning "any") when they would not fit: payloads must stay under
-- 8000 bytes.
CREATE FUNCTION errands_notify_results() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    finished text;
BEGIN
    SELECT string_agg(DISTINCT request_uuid::text, ',') INTO finished FROM written;
    IF finished IS NOT NULL THEN
        PERFORM pg_notify(
            'errands_results', CASE WHEN length(finished) < 7900 THEN finished ELSE '' END
        );
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER errands_result_notify
    AFTER INSERT ON errands_result
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION errands_notify_results();

INSERT INTO errands_schema (version) VALUES (4);
