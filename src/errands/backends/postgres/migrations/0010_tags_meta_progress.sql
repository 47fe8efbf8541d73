-- Tags and metadata (errands.tagging) and progress (errands.progress).
-- tags: text[], NULL for none; a GIN index per table answers "rows carrying a tag"
-- (tags @> ARRAY[tag]); partial, so jobs without tags add nothing to it. meta: a
-- JSON object, NULL for none. progress_*: the last progress a running job reported
-- (its worker writes it with its batches), kept on the result; NULL before any.
ALTER TABLE errands_request ADD COLUMN tags text[], ADD COLUMN meta jsonb;
ALTER TABLE errands_process ADD COLUMN tags text[], ADD COLUMN meta jsonb,
    ADD COLUMN progress_done bigint, ADD COLUMN progress_total bigint,
    ADD COLUMN progress_message text;
ALTER TABLE errands_result ADD COLUMN tags text[], ADD COLUMN meta jsonb,
    ADD COLUMN progress_done bigint, ADD COLUMN progress_total bigint,
    ADD COLUMN progress_message text;

CREATE INDEX errands_request_tags_idx ON errands_request USING gin (tags)
    WHERE tags IS NOT NULL;
CREATE INDEX errands_process_tags_idx ON errands_process USING gin (tags)
    WHERE tags IS NOT NULL;
CREATE INDEX errands_result_tags_idx ON errands_result USING gin (tags)
    WHERE tags IS NOT NULL;

INSERT INTO errands_schema (version) VALUES (10);
