-- Results keep when their request was due (a delayed job's wait is measured from
-- it); results written before this version keep NULL.
ALTER TABLE errands_result ADD COLUMN start_at REAL;
