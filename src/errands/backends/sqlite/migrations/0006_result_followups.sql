-- Work owed on a LOST result that the worker which wrote it may be unable to do:
-- run the job's on_aborted hooks, and retry it when it has attempts left. The
-- rescue writes one row here in the transaction that writes the result; any
-- worker that can load the job's class settles it (deleting the row is the
-- exactly-once gate), so a rescuer that cannot load the class, or that dies
-- right after the rescue, loses neither the retry nor the hooks.
CREATE TABLE errands_followup (
    result_uuid TEXT PRIMARY KEY,
    job_class TEXT NOT NULL,
    created_at REAL NOT NULL
);
