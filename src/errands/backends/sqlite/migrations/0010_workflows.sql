-- Workflows (errands.workflows): see the PostgreSQL migration of the same name for
-- the tables and the rule. SQLite triggers are per row and cannot use CTEs, so the
-- rule is spread over row triggers that fire one another (the connection enables
-- recursive_triggers): a result ends its node; an ended node counts in its
-- children; a child whose count reaches zero is released, or, with a failed
-- dependency, cancelled (its CANCELLED result ends it in turn). One writer at a
-- time, so no order of locks is needed. Held requests are due at 253402214400
-- (9999-12-31, errands.workflow_models.HELD_UNTIL).
CREATE TABLE errands_workflow (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
-- The latest first (errands workflows), the oldest first (pruning).
CREATE INDEX errands_workflow_created ON errands_workflow (created_at);

CREATE TABLE errands_workflow_node (
    workflow_uuid TEXT NOT NULL REFERENCES errands_workflow (uuid) ON DELETE CASCADE,
    node INTEGER NOT NULL,
    name TEXT NOT NULL,
    job_class TEXT NOT NULL,
    run_on_failure INTEGER NOT NULL DEFAULT 0,
    waiting INTEGER NOT NULL,
    failed INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    request_uuid TEXT NOT NULL,
    result_uuid TEXT,
    PRIMARY KEY (workflow_uuid, node)
);
CREATE UNIQUE INDEX errands_workflow_node_request ON errands_workflow_node (request_uuid);

CREATE TABLE errands_workflow_edge (
    workflow_uuid TEXT NOT NULL,
    parent INTEGER NOT NULL,
    child INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (workflow_uuid, parent, child)
);
CREATE INDEX errands_workflow_edge_child ON errands_workflow_edge (workflow_uuid, child);

CREATE TRIGGER errands_result_ends_node
    AFTER INSERT ON errands_result
    WHEN NEW.retry_request_uuid IS NULL AND NEW.status NOT IN ('LOST', 'DEFERRED')
BEGIN
    UPDATE errands_workflow_node
    SET state = CASE NEW.status
            WHEN 'SUCCESSFUL' THEN 'succeeded' WHEN 'CANCELLED' THEN 'cancelled' ELSE 'failed'
        END,
        result_uuid = NEW.uuid
    WHERE request_uuid = NEW.request_uuid AND state IN ('waiting', 'pending');
END;

CREATE TRIGGER errands_result_retried
    AFTER INSERT ON errands_result
    WHEN NEW.retry_request_uuid IS NOT NULL
BEGIN
    UPDATE errands_workflow_node SET request_uuid = NEW.retry_request_uuid
    WHERE request_uuid = NEW.request_uuid AND state = 'pending';
END;

CREATE TRIGGER errands_result_retry_linked
    AFTER UPDATE OF retry_request_uuid ON errands_result
    WHEN OLD.retry_request_uuid IS NULL AND NEW.retry_request_uuid IS NOT NULL
BEGIN
    UPDATE errands_workflow_node SET request_uuid = NEW.retry_request_uuid
    WHERE request_uuid = NEW.request_uuid AND state = 'pending';
END;

CREATE TRIGGER errands_workflow_node_ended
    AFTER UPDATE OF state ON errands_workflow_node
    WHEN OLD.state IN ('waiting', 'pending')
        AND NEW.state IN ('succeeded', 'failed', 'cancelled')
BEGIN
    UPDATE errands_workflow_node
    SET waiting = waiting - 1, failed = failed + (NEW.state <> 'succeeded')
    WHERE workflow_uuid = NEW.workflow_uuid AND node IN (
        SELECT child FROM errands_workflow_edge
        WHERE workflow_uuid = NEW.workflow_uuid AND parent = NEW.node
    );
END;

CREATE TRIGGER errands_workflow_node_released
    AFTER UPDATE OF waiting ON errands_workflow_node
    WHEN NEW.state = 'waiting' AND NEW.waiting = 0 AND (NEW.failed = 0 OR NEW.run_on_failure)
BEGIN
    UPDATE errands_workflow_node SET state = 'pending'
    WHERE workflow_uuid = NEW.workflow_uuid AND node = NEW.node;
    UPDATE errands_request SET start_at = (julianday('now') - 2440587.5) * 86400.0
    WHERE uuid = NEW.request_uuid;
END;

CREATE TRIGGER errands_workflow_node_doomed
    AFTER UPDATE OF failed ON errands_workflow_node
    WHEN NEW.state = 'waiting' AND NEW.failed > 0 AND NOT NEW.run_on_failure
BEGIN
    INSERT INTO errands_result (
        uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, created_at,
        status, worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
        concurrency_key, timeout, source, trace_id, span_id, error_type, error, start_at,
        limits, expires_at, tags, meta
    )
    SELECT
        lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
            || substr(hex(randomblob(2)), 2) || '-a' || substr(hex(randomblob(2)), 2) || '-'
            || hex(randomblob(6))),
        lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
            || substr(hex(randomblob(2)), 2) || '-a' || substr(hex(randomblob(2)), 2) || '-'
            || hex(randomblob(6))),
        r.uuid, r.created_at, NULL, (julianday('now') - 2440587.5) * 86400.0,
        (julianday('now') - 2440587.5) * 86400.0, 'CANCELLED', NULL, r.job_class,
        r.parameters, r.queue, r.priority, r.retries, r.retry_attempt, r.concurrency_key,
        r.timeout, r.source, r.trace_id, r.span_id, 'errands.DependencyFailed',
        'a job it depends on did not succeed', NULL, r.limits, r.expires_at, r.tags, r.meta
    FROM errands_request AS r
    WHERE r.uuid = NEW.request_uuid;
    DELETE FROM errands_request WHERE uuid = NEW.request_uuid;
END;
