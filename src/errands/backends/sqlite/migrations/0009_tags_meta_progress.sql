-- Tags and metadata (errands.tagging) and progress (errands.progress): see the
-- PostgreSQL migration of the same name. tags and meta are JSON text (NULL for
-- none); listings filter by a tag through json_each(tags).
ALTER TABLE errands_request ADD COLUMN tags TEXT;
ALTER TABLE errands_request ADD COLUMN meta TEXT;
ALTER TABLE errands_process ADD COLUMN tags TEXT;
ALTER TABLE errands_process ADD COLUMN meta TEXT;
ALTER TABLE errands_process ADD COLUMN progress_done INTEGER;
ALTER TABLE errands_process ADD COLUMN progress_total INTEGER;
ALTER TABLE errands_process ADD COLUMN progress_message TEXT;
ALTER TABLE errands_result ADD COLUMN tags TEXT;
ALTER TABLE errands_result ADD COLUMN meta TEXT;
ALTER TABLE errands_result ADD COLUMN progress_done INTEGER;
ALTER TABLE errands_result ADD COLUMN progress_total INTEGER;
ALTER TABLE errands_result ADD COLUMN progress_message TEXT;
