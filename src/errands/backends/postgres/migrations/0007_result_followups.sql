-- Work owed on a LOST result that the worker which wrote it may be unable to do:
-- run the job's on_aborted hooks, and retry it when it has attempts left. The
-- rescue writes one row here in the transaction that writes the result; any
-- worker that can load the job's class settles it (deleting the row is the
-- exactly-once gate), so a rescuer that cannot load the class, or that dies
-- right after the rescue, loses neither the retry nor the hooks.
CREATE TABLE errands_followup (
    result_uuid uuid PRIMARY KEY,
    job_class text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO errands_schema (version) VALUES (7);
