-- Workflows (errands.workflows): jobs that wait for other jobs.
--
-- A workflow's jobs are ordinary requests, enqueued together in one transaction. A
-- job with dependencies waits as a request due at the end of time (9999-12-31,
-- errands.workflow_models.HELD_UNTIL), which no claim takes, until its node is
-- released. Each job is a node:
-- * waiting: how many of its dependencies have not ended yet; failed: how many of
--   those that ended did not succeed;
-- * state: waiting (held), pending (released: requested, running or retrying),
--   then succeeded, failed or cancelled;
-- * request_uuid: the request of its current attempt (it follows retries), by which
--   a result finds its node.
--
-- The rule lives in two triggers, so that every writer of results (completions,
-- rescues, cancellations, expiry) moves workflows in the transaction that writes
-- the result, and none can forget to; a worker that dies at any moment therefore
-- neither loses a release nor releases twice:
-- 1. errands_workflow_results (results): a result no retry follows ends its node
--    (SUCCESSFUL: succeeded; CANCELLED: cancelled; others: failed); a LOST one does
--    not (its follow-up decides: a retry, or end_workflow_node), nor does a
--    DEFERRED one (it is enqueued again). A retry moves the node to its request.
-- 2. errands_workflow_advance (nodes): the children of the nodes that ended count
--    them; a child whose last dependency ended is released (due now, with a NOTIFY)
--    if none failed or it runs anyway (run_on_failure); a waiting child with a
--    failed dependency, and every waiting descendant reached through such children,
--    is cancelled at once (its request becomes a CANCELLED result, which ends its
--    node through trigger 1, so their run_on_failure children count it).
-- A wide fan-in costs one counter update per child per statement (a batch of
-- completions), taken in one order, so concurrent completions cannot deadlock.
CREATE TABLE errands_workflow (
    uuid uuid PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The latest first (errands workflows), the oldest first (pruning).
CREATE INDEX errands_workflow_created_idx ON errands_workflow (created_at);

CREATE TABLE errands_workflow_node (
    workflow_uuid uuid NOT NULL REFERENCES errands_workflow (uuid) ON DELETE CASCADE,
    node int NOT NULL,
    name text NOT NULL,
    job_class text NOT NULL,
    run_on_failure boolean NOT NULL DEFAULT false,
    waiting int NOT NULL,
    failed int NOT NULL DEFAULT 0,
    state text NOT NULL,
    request_uuid uuid NOT NULL,
    result_uuid uuid,
    PRIMARY KEY (workflow_uuid, node)
);
CREATE UNIQUE INDEX errands_workflow_node_request_idx ON errands_workflow_node (request_uuid);
-- The nodes a result can still end: one probe of it tells a statement writing
-- results that no workflow is running.
CREATE INDEX errands_workflow_node_open_idx ON errands_workflow_node (request_uuid)
    WHERE state IN ('waiting', 'pending');

-- position: where the parent stands in the child's list of dependencies
-- (JobContext.dependencies[0] is the first).
CREATE TABLE errands_workflow_edge (
    workflow_uuid uuid NOT NULL,
    parent int NOT NULL,
    child int NOT NULL,
    position int NOT NULL,
    PRIMARY KEY (workflow_uuid, parent, child),
    FOREIGN KEY (workflow_uuid, child)
        REFERENCES errands_workflow_node (workflow_uuid, node) ON DELETE CASCADE
);
CREATE INDEX errands_workflow_edge_child_idx ON errands_workflow_edge (workflow_uuid, child);

CREATE FUNCTION errands_workflow_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Every statement that may write results fires this, a claim (its expiry) too:
    -- without results, or without a running workflow, it touches nothing.
    IF NOT EXISTS (SELECT 1 FROM written)
        OR NOT EXISTS (
            SELECT 1 FROM errands_workflow_node WHERE state IN ('waiting', 'pending')
        )
    THEN
        RETURN NULL;
    END IF;
    UPDATE errands_workflow_node AS n
    SET state = CASE w.status
            WHEN 'SUCCESSFUL' THEN 'succeeded' WHEN 'CANCELLED' THEN 'cancelled' ELSE 'failed'
        END,
        result_uuid = w.uuid
    FROM written AS w
    WHERE n.request_uuid = w.request_uuid AND w.retry_request_uuid IS NULL
        AND w.status NOT IN ('LOST', 'DEFERRED') AND n.state IN ('waiting', 'pending');
    UPDATE errands_workflow_node AS n
    SET request_uuid = w.retry_request_uuid
    FROM written AS w
    WHERE n.request_uuid = w.request_uuid AND w.retry_request_uuid IS NOT NULL
        AND n.state = 'pending';
    RETURN NULL;
END
$$;

CREATE TRIGGER errands_result_workflows
    AFTER INSERT ON errands_result
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION errands_workflow_results();

-- A retry linked later (a LOST job's follow-up, a deferral, errands retry): the
-- node follows it.
CREATE FUNCTION errands_workflow_follow_retry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE errands_workflow_node
    SET request_uuid = NEW.retry_request_uuid
    WHERE request_uuid = NEW.request_uuid AND state = 'pending';
    RETURN NULL;
END
$$;

CREATE TRIGGER errands_result_retry_linked
    AFTER UPDATE OF retry_request_uuid ON errands_result
    FOR EACH ROW
    WHEN (OLD.retry_request_uuid IS NULL AND NEW.retry_request_uuid IS NOT NULL)
    EXECUTE FUNCTION errands_workflow_follow_retry();

CREATE FUNCTION errands_workflow_advance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hit_workflows uuid[];
    hit_nodes int[];
    hit_ended int[];
    hit_failed int[];
    doomed_workflows uuid[];
    doomed_nodes int[];
    notified bigint;
BEGIN
    -- A node in an ended state was ended by this statement: only the result trigger
    -- and end_workflow_node set one, each on nodes not yet ended; the other updates
    -- (counts and releases, retries followed) touch no ended node.
    IF NOT EXISTS (SELECT 1 FROM new_nodes WHERE state IN ('succeeded', 'failed', 'cancelled'))
    THEN
        RETURN NULL;
    END IF;
    -- The children of the nodes that ended: how many of their dependencies ended,
    -- and how many of those did not succeed.
    SELECT array_agg(h.workflow_uuid ORDER BY h.workflow_uuid, h.child),
        array_agg(h.child ORDER BY h.workflow_uuid, h.child),
        array_agg(h.ended ORDER BY h.workflow_uuid, h.child),
        array_agg(h.failed ORDER BY h.workflow_uuid, h.child)
    INTO hit_workflows, hit_nodes, hit_ended, hit_failed
    FROM (
        SELECT e.workflow_uuid, e.child, count(*)::int AS ended,
            (count(*) FILTER (WHERE n.state <> 'succeeded'))::int AS failed
        FROM new_nodes AS n
        JOIN errands_workflow_edge AS e ON e.workflow_uuid = n.workflow_uuid AND e.parent = n.node
        WHERE n.state IN ('succeeded', 'failed', 'cancelled')
        GROUP BY e.workflow_uuid, e.child
    ) AS h;
    IF hit_workflows IS NULL THEN
        RETURN NULL;  -- the nodes that ended have no dependents
    END IF;
    -- Lock the children in one order, so that concurrent completions in one
    -- workflow cannot deadlock.
    PERFORM 1 FROM errands_workflow_node AS c
    JOIN unnest(hit_workflows, hit_nodes) AS h(workflow_uuid, node)
        ON c.workflow_uuid = h.workflow_uuid AND c.node = h.node
    ORDER BY c.workflow_uuid, c.node
    FOR UPDATE OF c;
    -- Count, and release in the same update the children whose dependencies all
    -- ended (due now, with a NOTIFY), if none failed or they run anyway. Only
    -- waiting children: one cancelled already counts nothing more. Those left
    -- waiting with a failed dependency are doomed.
    WITH counted AS (
        UPDATE errands_workflow_node AS c
        SET waiting = c.waiting - h.ended,
            failed = c.failed + h.failed,
            state = CASE
                WHEN c.waiting - h.ended = 0 AND (c.failed + h.failed = 0 OR c.run_on_failure)
                THEN 'pending' ELSE 'waiting'
            END
        FROM unnest(hit_workflows, hit_nodes, hit_ended, hit_failed)
            AS h(workflow_uuid, node, ended, failed)
        WHERE c.workflow_uuid = h.workflow_uuid AND c.node = h.node AND c.state = 'waiting'
        RETURNING c.workflow_uuid, c.node, c.state, c.failed, c.run_on_failure, c.request_uuid
    ),
    due AS (
        UPDATE errands_request AS r
        SET start_at = now()
        FROM counted
        WHERE counted.state = 'pending' AND r.uuid = counted.request_uuid
        RETURNING r.queue
    )
    SELECT
        (SELECT count(pg_notify('errands_jobs', q.queue)) FROM (SELECT DISTINCT queue FROM due) AS q),
        array_agg(counted.workflow_uuid) FILTER (
            WHERE counted.state = 'waiting' AND counted.failed > 0 AND NOT counted.run_on_failure
        ),
        array_agg(counted.node) FILTER (
            WHERE counted.state = 'waiting' AND counted.failed > 0 AND NOT counted.run_on_failure
        )
    INTO notified, doomed_workflows, doomed_nodes
    FROM counted;
    IF doomed_workflows IS NULL THEN
        RETURN NULL;
    END IF;
    -- Cancel the doomed children, and the waiting descendants reached through them
    -- that do not run anyway: their requests become CANCELLED results, which end
    -- their nodes (the result trigger), so their run_on_failure dependents count them.
    WITH RECURSIVE doomed(workflow_uuid, node) AS (
        SELECT h.workflow_uuid, h.node FROM unnest(doomed_workflows, doomed_nodes) AS h(workflow_uuid, node)
        UNION
        SELECT c.workflow_uuid, c.node
        FROM doomed AS d
        JOIN errands_workflow_edge AS e ON e.workflow_uuid = d.workflow_uuid AND e.parent = d.node
        JOIN errands_workflow_node AS c ON c.workflow_uuid = e.workflow_uuid AND c.node = e.child
        WHERE c.state = 'waiting' AND NOT c.run_on_failure
    ),
    gone AS (
        DELETE FROM errands_request AS r
        USING errands_workflow_node AS c, doomed AS d
        WHERE c.workflow_uuid = d.workflow_uuid AND c.node = d.node AND r.uuid = c.request_uuid
        RETURNING r.*
    )
    INSERT INTO errands_result (
        uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, status,
        worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
        concurrency_key, timeout, source, trace_id, span_id, error_type, error, start_at,
        limits, expires_at, tags, meta
    )
    SELECT
        gen_random_uuid(), gen_random_uuid(), g.uuid, g.created_at, NULL, now(), 'CANCELLED',
        NULL, g.job_class, g.parameters, g.queue, g.priority, g.retries, g.retry_attempt,
        g.concurrency_key, g.timeout, g.source, g.trace_id, g.span_id,
        'errands.DependencyFailed', 'a job it depends on did not succeed', NULL,
        g.limits, g.expires_at, g.tags, g.meta
    FROM gone AS g;
    RETURN NULL;
END
$$;

CREATE TRIGGER errands_workflow_node_advance
    AFTER UPDATE ON errands_workflow_node
    REFERENCING NEW TABLE AS new_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION errands_workflow_advance();

INSERT INTO errands_schema (version) VALUES (11);
