-- Results keep when their request was due, so that the wait before a delayed
-- job started can be measured from its due time rather than from its enqueueing.
-- Nullable, with no default: PostgreSQL adds such a column without rewriting the
-- table, and results written before this version keep NULL.
ALTER TABLE errands_result ADD COLUMN start_at timestamptz;

INSERT INTO errands_schema (version) VALUES (5);
