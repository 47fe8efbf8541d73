-- Every SQL statement of the PostgreSQL backend, as named blocks (see sqlfile.py).
--
-- Conventions:
-- * Parameters are named (%(name)s) and always bound, never spliced into the text.
--   Batches travel as typed arrays unpacked with unnest(), so one statement (one
--   round trip) handles any number of rows.
-- * Times that decide behaviour (due times, heartbeat staleness) use the database
--   clock, now(), so workers and enqueuers with skewed clocks agree.
-- * A job moves between tables by DELETE ... RETURNING feeding an INSERT in the
--   same statement. A row can be deleted only once, so whoever's DELETE returns
--   it owns the transition: that is what makes claims, completions, cancellations
--   and rescues happen exactly once without any application-level locking.
-- * The worker's processes and results get time-ordered keys (UUIDv7, made in
--   SQL since PostgreSQL 15 has no function for them): their inserts fill the
--   right edge of the key indexes, which stay in memory however long the history,
--   where random keys would touch a random page of an index larger than memory.
-- * NOTIFY payloads are queue names on channel errands_jobs. Notifications are
--   delivered only when (and if) the transaction commits, and identical payloads
--   in one transaction are delivered once, so enqueueing 10 000 jobs of one queue
--   sends one wake-up.


-- Schema ------------------------------------------------------------------------

-- name: lock_migrations
-- A transaction-scoped advisory lock on a constant key: concurrent migrators
-- (say, every pod of a deploy running "errands migrate") queue here, and each
-- later one finds the versions already recorded and applies nothing. The lock is
-- released at commit or rollback, so a crashed migrator never leaves it held.
-- It cannot deadlock: it is the first lock of the migration's transaction, so a
-- migrator waiting for it holds nothing another migrator could be waiting for.
SELECT pg_advisory_xact_lock(hashtext('errands.migrate'))

-- name: create_schema_table
CREATE TABLE IF NOT EXISTS errands_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_table_exists
SELECT to_regclass('errands_schema') IS NOT NULL AS present

-- name: recorded_schema_version
SELECT max(version) AS version FROM errands_schema


-- Enqueueing -------------------------------------------------------------------

-- name: lock_slots
-- One transaction-scoped advisory lock per (job class, concurrency key): a second
-- enqueue of the same slot waits here until the first commits, then its next
-- statement (read committed: a fresh snapshot) sees the first one's job. That
-- makes "check the slot is free, then insert" race-free without locking tables.
-- The two-key form keeps errands' locks apart from an application's one-key
-- locks. Locks are taken in hash order so two batches never wait on each other
-- in a cycle.
SELECT count(pg_advisory_xact_lock(hashtext('errands.slot'), slot.lock_key))
FROM (
    SELECT DISTINCT hashtext(job_class || ':' || concurrency_key) AS lock_key
    FROM unnest(%(job_class)s::text[], %(concurrency_key)s::text[])
        AS s(job_class, concurrency_key)
    ORDER BY lock_key
) AS slot

-- name: slots_in_use
SELECT s.job_class, s.concurrency_key
FROM unnest(%(job_class)s::text[], %(concurrency_key)s::text[]) AS s(job_class, concurrency_key)
WHERE EXISTS (
        SELECT 1 FROM errands_request AS r
        WHERE r.job_class = s.job_class AND r.concurrency_key = s.concurrency_key
    )
    OR EXISTS (
        SELECT 1 FROM errands_process AS p
        WHERE p.job_class = s.job_class AND p.concurrency_key = s.concurrency_key
    )

-- name: requests_for_slot
SELECT *
FROM errands_request
WHERE job_class = %(job_class)s AND concurrency_key = %(concurrency_key)s
ORDER BY priority DESC, start_at, created_at

-- name: processes_for_slot
SELECT *
FROM errands_process
WHERE job_class = %(job_class)s AND concurrency_key = %(concurrency_key)s
ORDER BY created_at

-- name: unique_slots
-- Uniqueness (errands.Unique): for each (job class, key) slot any job holds, its
-- first pending request in claim order, whether a process holds it, and (only when
-- asked: :successes) how many seconds ago its latest SUCCESSFUL result ended, by
-- the database clock. Each lookup goes through a slot index (results: the partial
-- index on (concurrency_key, ended_at), whose predicate the query repeats).
SELECT *
FROM (
    SELECT
        s.job_class,
        s.concurrency_key,
        (
            SELECT r.uuid FROM errands_request AS r
            WHERE r.job_class = s.job_class AND r.concurrency_key = s.concurrency_key
            ORDER BY r.priority DESC, r.start_at, r.created_at
            LIMIT 1
        ) AS pending,
        EXISTS (
            SELECT 1 FROM errands_process AS p
            WHERE p.job_class = s.job_class AND p.concurrency_key = s.concurrency_key
        ) AS running,
        CASE WHEN %(successes)s THEN (
            SELECT extract(epoch FROM now() - x.ended_at)::float8
            FROM errands_result AS x
            WHERE x.concurrency_key = s.concurrency_key AND x.concurrency_key <> ''
                AND x.job_class = s.job_class AND x.status = 'SUCCESSFUL'
            ORDER BY x.ended_at DESC
            LIMIT 1
        ) END AS success_age
    FROM unnest(%(job_class)s::text[], %(concurrency_key)s::text[])
        AS s(job_class, concurrency_key)
) AS slot
WHERE pending IS NOT NULL OR running OR success_age IS NOT NULL

-- name: replace_request
-- Uniqueness, on_conflict "replace" or "debounce": the pending request takes the new
-- job's arguments and options (not its uuid, creation time, class or key), and with
-- :move_due_time its due time, from this statement's time (taken after the slot's
-- lock, so of a burst of enqueues the last to get the lock moves it last), not the
-- transaction's. A request claimed meanwhile is gone: nothing returned. Its queue is
-- notified when it is due, as an insert notifies.
WITH replaced AS (
    UPDATE errands_request SET
        start_at = CASE WHEN %(move_due_time)s
            THEN coalesce(
                %(start_at)s::timestamptz,
                statement_timestamp() + %(delay_seconds)s::float8 * interval '1 second'
            )
            ELSE start_at END,
        parameters = %(parameters)s::jsonb,
        queue = %(queue)s,
        priority = %(priority)s,
        retries = %(retries)s,
        retry_attempt = %(retry_attempt)s,
        timeout = %(timeout)s::float8,
        source = %(source)s,
        trace_id = %(trace_id)s,
        span_id = %(span_id)s,
        limits = %(limits)s::jsonb,
        limit_key = %(limit_key)s::text,
        expires_at = %(expires_at)s::timestamptz,
        tags = %(tags)s::text[],
        meta = %(meta)s::jsonb
    WHERE uuid = %(target)s
    RETURNING *
)
SELECT replaced.*
FROM replaced
CROSS JOIN (
    SELECT count(pg_notify('errands_jobs', queue)) FROM replaced WHERE start_at <= now()
) AS notified

-- name: insert_request
-- One job (run_in_worker): scalar parameters, otherwise as insert_requests.
WITH inserted AS (
    INSERT INTO errands_request (
        uuid, start_at, job_class, parameters, queue, priority, retries,
        retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
        expires_at, tags, meta
    )
    VALUES (
        %(uuid)s,
        coalesce(%(start_at)s::timestamptz, now() + %(delay_seconds)s::float8 * interval '1 second'),
        %(job_class)s, %(parameters)s::jsonb, %(queue)s, %(priority)s, %(retries)s,
        %(retry_attempt)s, %(concurrency_key)s, %(timeout)s::float8, %(source)s,
        %(trace_id)s, %(span_id)s, %(limits)s::jsonb, %(limit_key)s::text,
        %(expires_at)s::timestamptz, %(tags)s::text[], %(meta)s::jsonb
    )
    RETURNING uuid, created_at, start_at, queue
)
SELECT inserted.uuid, inserted.created_at, inserted.start_at
FROM inserted
CROSS JOIN (
    SELECT count(pg_notify('errands_jobs', queue))
    FROM inserted WHERE start_at <= now()
) AS notified

-- name: insert_requests
-- The whole batch in one statement. A job without an absolute start_at is due
-- delay_seconds after the database's now(). The queues of jobs due now are
-- notified from the same statement (the cross join with a one-row aggregate
-- makes the notify subquery run without changing the rows returned). Only the
-- values the database computed come back: the caller has the rest.
WITH inserted AS (
    INSERT INTO errands_request (
        uuid, start_at, job_class, parameters, queue, priority, retries,
        retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
        expires_at, tags, meta
    )
    SELECT
        r.uuid,
        coalesce(r.start_at, now() + r.delay_seconds * interval '1 second'),
        r.job_class, r.parameters::jsonb, r.queue, r.priority, r.retries,
        r.retry_attempt, r.concurrency_key, r.timeout, r.source, r.trace_id, r.span_id,
        r.limits::jsonb, r.limit_key, r.expires_at,
        -- Tags travel as the JSON text of each request's list (arrays of arrays
        -- must be rectangular).
        CASE WHEN r.tags IS NOT NULL
            THEN ARRAY(SELECT jsonb_array_elements_text(r.tags::jsonb)) END,
        r.meta::jsonb
    FROM unnest(
        %(uuid)s::uuid[], %(start_at)s::timestamptz[], %(delay_seconds)s::float8[],
        %(job_class)s::text[], %(parameters)s::text[], %(queue)s::text[],
        %(priority)s::int[], %(retries)s::int[], %(retry_attempt)s::int[],
        %(concurrency_key)s::text[], %(timeout)s::float8[], %(source)s::text[],
        %(trace_id)s::text[], %(span_id)s::text[], %(limits)s::text[], %(limit_key)s::text[],
        %(expires_at)s::timestamptz[], %(tags)s::text[], %(meta)s::text[]
    ) AS r(
        uuid, start_at, delay_seconds, job_class, parameters, queue, priority, retries,
        retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
        expires_at, tags, meta
    )
    RETURNING uuid, created_at, start_at, queue
)
SELECT inserted.uuid, inserted.created_at, inserted.start_at
FROM inserted
CROSS JOIN (
    SELECT count(pg_notify('errands_jobs', due.queue))
    FROM (SELECT DISTINCT queue FROM inserted WHERE start_at <= now()) AS due
) AS notified

-- name: transaction_now
-- now() is the start time of the transaction: every row written in it carries
-- the same value, whichever statement computes it.
SELECT now() AS now

-- name: copy_requests
-- Large enqueue batches (see copy_requests in postgres.py); binary format, the
-- rows encoded by postgres_copy.py: key and parameters first, then the columns
-- that usually repeat across a batch in the order of its REPEATED_TYPES.
COPY errands_request (
    uuid, parameters, created_at, start_at, job_class, queue, priority, retries,
    retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limit_key, expires_at,
    limits
) FROM STDIN (FORMAT BINARY)

-- name: notify_queues
-- Delivered at commit, once per distinct queue of the transaction (see the
-- conventions at the top of this file).
SELECT count(pg_notify('errands_jobs', queue)) AS notified
FROM unnest(%(queues)s::text[]) AS due(queue)

-- name: reserve_occurrences
-- ON CONFLICT DO NOTHING: an occurrence another scheduler recorded first (even
-- one whose transaction is still open: the insert waits for it) is not returned.
INSERT INTO errands_occurrence (entry_key, run_at)
SELECT * FROM unnest(%(entry_key)s::text[], %(run_at)s::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING entry_key, run_at

-- name: link_occurrence
UPDATE errands_occurrence
SET request_uuid = %(request_uuid)s
WHERE entry_key = %(entry_key)s AND run_at = %(run_at)s

-- name: link_retry
-- Once per result: a second retry (or one racing this) links nothing.
UPDATE errands_result
SET retry_request_uuid = %(request_uuid)s
WHERE uuid = %(result_uuid)s AND retry_request_uuid IS NULL


-- Workers ------------------------------------------------------------------------

-- name: register_worker
INSERT INTO errands_worker (worker_id, hostname, pid, queues)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(queues)s::text[])
ON CONFLICT (worker_id) DO UPDATE
SET hostname = excluded.hostname,
    pid = excluded.pid,
    queues = excluded.queues,
    last_heartbeat_at = now()

-- name: heartbeat
UPDATE errands_worker SET last_heartbeat_at = now() WHERE worker_id = %(worker_id)s

-- name: deregister_worker
DELETE FROM errands_worker WHERE worker_id = %(worker_id)s

-- name: claim
-- The jobs without limits (limited jobs: see claim_limited below).
-- FOR UPDATE SKIP LOCKED: concurrent claimers skip the rows another claimer has
-- locked instead of queueing behind it, so N workers take N disjoint batches
-- at once. A row that another claimer deleted after this statement's snapshot
-- is skipped as well (the lock re-checks the latest row version), so one request
-- is never claimed twice. The requests are deleted and their processes inserted
-- in the same statement: there is no moment when a job is in neither table.
-- SKIP LOCKED never waits for a lock, so a claim cannot take part in a deadlock.
--
-- Cost: every read walks errands_request_claim_idx (the requests without limits)
-- in order and stops early, so a claim costs the same with ten due requests or a
-- million, and delayed requests (due later, so after the due ones of their
-- priority) are not read:
-- * present: the distinct queues that have requests, one index probe per queue
--   (a "loose index scan"), for a worker of every queue;
-- * wanted: those queues, or the worker's, each with the room the worker has for
--   it (NULL: no cap of its own), less the queues that queue_limits caps (their
--   jobs are counted under the cap, so they are claimed as limited jobs);
-- * due: the first LIMIT due requests of each wanted queue, then the first LIMIT
--   of those. Rows an inner LIMIT locked but the outer one drops stay requests;
--   their locks end with this statement's transaction.
-- A last row of NULLs says that limited requests exist (the worker then runs
-- claim_limited): one probe of the limited index, which is empty without them.
-- Expiry: "expired" turns the requests whose expires_at passed (any queue, due or
-- not, limited or not) into results (status, error type and error are parameters:
-- errands.expiry.EXPIRED), at most :expire_batch of them, through the partial index
-- errands_request_expires_idx: one probe of an empty index where no job expires.
-- "due" skips them (the complement of expired's condition at the same now(), so
-- no request is both claimed and expired).
WITH RECURSIVE present(queue) AS (
    (SELECT queue FROM errands_request WHERE limit_key IS NULL ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (
        SELECT r.queue FROM errands_request AS r
        WHERE r.limit_key IS NULL AND r.queue > present.queue
        ORDER BY r.queue
        LIMIT 1
    )
    FROM present
    WHERE present.queue IS NOT NULL
),
wanted AS (
    SELECT queue, room FROM (
        SELECT queue, NULL::int AS room FROM present
        WHERE cardinality(%(queues)s::text[]) = 0 AND queue IS NOT NULL
        UNION ALL
        SELECT queue, room FROM unnest(%(queues)s::text[], %(rooms)s::int[]) AS named(queue, room)
    ) AS w
    WHERE queue <> ALL(%(capped)s::text[]) AND coalesce(room, 1) > 0
),
due AS (
    SELECT r.uuid
    FROM wanted AS w
    CROSS JOIN LATERAL (
        SELECT uuid, priority, start_at, created_at
        FROM errands_request
        WHERE queue = w.queue AND limit_key IS NULL AND start_at <= now()
            AND (expires_at IS NULL OR expires_at > now())
        ORDER BY priority DESC, start_at, created_at
        LIMIT least(%(limit)s, coalesce(w.room, %(limit)s))
        FOR UPDATE SKIP LOCKED
    ) AS r
    WHERE NOT EXISTS (SELECT 1 FROM errands_paused_queue AS p WHERE p.queue = w.queue)
    ORDER BY r.priority DESC, r.start_at, r.created_at
    LIMIT %(limit)s
),
claimed AS (
    -- By primary key (= ANY of an array): a join with "due" may be planned as a
    -- scan of the whole backlog.
    DELETE FROM errands_request AS r
    WHERE r.uuid = ANY(ARRAY(SELECT uuid FROM due))
    RETURNING r.*
),
expired AS (
    DELETE FROM errands_request AS r
    WHERE r.uuid = ANY(ARRAY(
        SELECT uuid FROM errands_request
        WHERE expires_at <= now()
        ORDER BY expires_at
        LIMIT %(expire_batch)s
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING r.*
),
expired_results AS (
    INSERT INTO errands_result (
        uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, status,
        worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
        concurrency_key, timeout, source, trace_id, span_id, error_type, error, start_at,
        limits, expires_at, tags, meta
    )
    SELECT
        gen_random_uuid(), gen_random_uuid(), e.uuid, e.created_at, NULL, now(),
        %(expired_status)s, NULL, e.job_class, e.parameters, e.queue, e.priority, e.retries,
        e.retry_attempt, e.concurrency_key, e.timeout, e.source, e.trace_id, e.span_id,
        %(expired_type)s, %(expired_error)s, e.start_at, e.limits, e.expires_at, e.tags, e.meta
    FROM expired AS e
),
inserted AS (
    INSERT INTO errands_process (
        uuid, request_uuid, requested_at, worker_id, start_at, job_class, parameters, queue,
        priority, retries, retry_attempt, concurrency_key, timeout, source, trace_id, span_id,
        expires_at, tags, meta
    )
    SELECT
        -- A UUIDv7 (RFC 9562): milliseconds first, so that new keys land at the
        -- right edge of the indexes instead of on random pages (see the conventions).
        encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
            PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
            FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
        c.uuid, c.created_at, %(worker_id)s, c.start_at, c.job_class,
        c.parameters, c.queue, c.priority, c.retries, c.retry_attempt, c.concurrency_key,
        c.timeout, c.source, c.trace_id, c.span_id, c.expires_at, c.tags, c.meta
    FROM claimed AS c
    -- The fields of JobProcess in their order, of which limits is NULL here (claim()
    -- in postgres/backend.py builds the models from these positions).
    RETURNING
        uuid, request_uuid, requested_at, created_at, started_at, worker_id, job_class,
        parameters, queue, priority, retries, retry_attempt, concurrency_key, timeout,
        source, trace_id, span_id, cancel_requested, start_at, limits, expires_at, tags, meta
)
-- Last, whether the job is a workflow's (its result releases others: the worker
-- writes it at once): one probe of the small index of open workflow jobs.
SELECT i.*, EXISTS (
    SELECT 1 FROM errands_workflow_node AS n
    WHERE n.request_uuid = i.request_uuid AND n.state IN ('waiting', 'pending')
)
FROM inserted AS i
UNION ALL
SELECT
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE EXISTS (SELECT 1 FROM errands_request WHERE limit_key IS NOT NULL)
UNION ALL
-- Each request that expired, by its uuid and queue (for the worker's metrics).
SELECT
    NULL, e.uuid, NULL, NULL, NULL, NULL, NULL, NULL, e.queue, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM expired AS e

-- name: limited_keys
-- Flow control, step 1 of a claim of limited jobs (one transaction; the rule that
-- picks the jobs is errands.backends.admission): the keys that have due requests
-- in the wanted queues, and the queues that queue_limits caps, each locked for
-- this transaction when no other claim holds it. A key another worker is claiming
-- right now is skipped, never waited for (pg_try_advisory_xact_lock). The locks
-- serialise the claims of one key: the next statement, which counts the key's
-- running jobs, sees every claim of it that committed before.
-- * keys: the distinct limit keys, one probe of errands_request_limited_idx each;
-- * due_keys: those with a due request in a wanted, unpaused queue;
-- * wanted: those and the keys given: the capped queues' (queue:<name>), or the
--   other keys of the jobs found (a second call, with max_keys 0).
WITH RECURSIVE keys(key) AS (
    (SELECT limit_key FROM errands_request WHERE limit_key IS NOT NULL ORDER BY limit_key LIMIT 1)
    UNION ALL
    SELECT (
        SELECT r.limit_key FROM errands_request AS r
        WHERE r.limit_key > keys.key
        ORDER BY r.limit_key
        LIMIT 1
    )
    FROM keys
    WHERE keys.key IS NOT NULL
),
due_keys AS MATERIALIZED (
    SELECT k.key
    FROM keys AS k
    WHERE k.key IS NOT NULL AND EXISTS (
        SELECT 1 FROM errands_request AS r
        WHERE r.limit_key = k.key AND r.start_at <= now()
            AND (cardinality(%(queues)s::text[]) = 0 OR r.queue = ANY(%(queues)s::text[]))
            -- Paused queues as one array, read once: a correlated NOT EXISTS here is
            -- planned as an anti-join over the whole backlog, then sorted.
            AND r.queue <> ALL(ARRAY(SELECT queue FROM errands_paused_queue))
    )
    ORDER BY k.key
    LIMIT %(max_keys)s
),
wanted AS MATERIALIZED (
    SELECT key FROM due_keys
    UNION
    SELECT key FROM unnest(%(keys)s::text[]) AS extra(key)
)
-- With each key, the limits of its first request: they bound how many of its
-- requests the next step needs to read.
SELECT w.key, (
    SELECT r.limits FROM errands_request AS r
    WHERE r.limit_key = w.key
    ORDER BY r.priority DESC, r.start_at, r.created_at
    LIMIT 1
) AS head_limits
FROM wanted AS w
WHERE pg_try_advisory_xact_lock(hashtext('errands.limit:' || w.key))

-- name: limited_usage
-- Step 2: for the keys locked in step 1, how many of each key's jobs are claimed or
-- running (errands_process_limits_idx finds them), how long ago its recent starts
-- were, and its due requests in claim order (at most caps[i] for keys[i]: no more
-- than its first request's limits could let in); for each capped queue, how many
-- of its jobs are claimed or running, and its due requests without limits. The
-- requests are not locked: the key locks keep other claims of them away, and the
-- claim's DELETE takes only those still there (a cancel may have come first).
SELECT 'running' AS kind, k.key, count(*)::float8 AS amount,
    NULL::uuid AS uuid, NULL::jsonb AS limits, NULL::text AS queue, NULL::int AS priority,
    NULL::timestamptz AS start_at, NULL::timestamptz AS created_at
FROM unnest(%(keys)s::text[]) AS k(key)
JOIN errands_process AS p
    ON p.limits IS NOT NULL AND p.limits @> jsonb_build_array(jsonb_build_object('key', k.key))
GROUP BY k.key
UNION ALL
SELECT 'running', %(queue_prefix)s || queue, count(*)::float8, NULL, NULL, NULL, NULL, NULL, NULL
FROM errands_process
WHERE cardinality(%(capped)s::text[]) > 0 AND queue = ANY(%(capped)s::text[])
GROUP BY queue
UNION ALL
SELECT 'start', key, extract(epoch FROM clock_timestamp() - started_at)::float8,
    NULL, NULL, NULL, NULL, NULL, NULL
FROM errands_limit_start
WHERE key = ANY(%(keys)s::text[])
    AND started_at > clock_timestamp() - %(window)s::float8 * interval '1 second'
UNION ALL
SELECT 'candidate', NULL, NULL, r.uuid, r.limits, r.queue, r.priority, r.start_at, r.created_at
FROM unnest(%(keys)s::text[], %(caps)s::int[]) AS k(key, cap)
CROSS JOIN LATERAL (
    SELECT uuid, limits, queue, priority, start_at, created_at
    FROM errands_request
    WHERE limit_key = k.key AND start_at <= now()
        AND (cardinality(%(queues)s::text[]) = 0 OR queue = ANY(%(queues)s::text[]))
        -- Expired requests are the claim's to end (see claim), never to run.
        AND (expires_at IS NULL OR expires_at > now())
    ORDER BY priority DESC, start_at, created_at
    LIMIT k.cap
) AS r
-- Paused queues are left out after the LIMIT: inside it, the planner takes the
-- filter for a rare one and sorts the key's whole backlog instead of reading its
-- index in order. (A key's requests of a paused queue take room from the others
-- of the key this way, until the queue is resumed.)
WHERE r.queue <> ALL(ARRAY(SELECT queue FROM errands_paused_queue))
UNION ALL
SELECT 'candidate', NULL, NULL, r.uuid, r.limits, r.queue, r.priority, r.start_at, r.created_at
FROM unnest(%(capped)s::text[]) AS c(queue)
CROSS JOIN LATERAL (
    SELECT uuid, limits, queue, priority, start_at, created_at
    FROM errands_request
    WHERE queue = c.queue AND limit_key IS NULL AND start_at <= now()
        AND (expires_at IS NULL OR expires_at > now())
        AND c.queue <> ALL(ARRAY(SELECT queue FROM errands_paused_queue))
    ORDER BY priority DESC, start_at, created_at
    LIMIT %(limit)s
) AS r

-- name: claim_limited
-- Step 3: claim the requests errands.backends.admission chose, record the starts
-- of rate-limited keys (one row per start) and forget starts older than any
-- window. Then the transaction commits and the key locks end.
WITH claimed AS (
    DELETE FROM errands_request AS r
    WHERE r.uuid = ANY(%(uuids)s::uuid[])
    RETURNING r.*
),
logged AS (
    INSERT INTO errands_limit_start (key, started_at)
    SELECT s.key, clock_timestamp()
    FROM unnest(%(started_keys)s::text[], %(started_counts)s::int[]) AS s(key, n)
    CROSS JOIN LATERAL generate_series(1, s.n)
),
trimmed AS (
    DELETE FROM errands_limit_start
    WHERE key = ANY(%(keys)s::text[])
        AND started_at < clock_timestamp() - %(window)s::float8 * interval '1 second'
)
INSERT INTO errands_process (
    uuid, request_uuid, requested_at, worker_id, start_at, job_class, parameters, queue,
    priority, retries, retry_attempt, concurrency_key, timeout, source, trace_id, span_id,
    limits, expires_at, tags, meta
)
SELECT
    encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
    c.uuid, c.created_at, %(worker_id)s, c.start_at, c.job_class,
    c.parameters, c.queue, c.priority, c.retries, c.retry_attempt, c.concurrency_key,
    c.timeout, c.source, c.trace_id, c.span_id, c.limits, c.expires_at, c.tags, c.meta
FROM claimed AS c
RETURNING
    uuid, request_uuid, requested_at, created_at, started_at, worker_id, job_class,
    parameters, queue, priority, retries, retry_attempt, concurrency_key, timeout,
    source, trace_id, span_id, cancel_requested, start_at, limits, expires_at, tags, meta

-- name: queue_size_estimate
-- The planner's row count of the requests table (as of its last analyze): no scan.
SELECT greatest(reltuples, 0)::float8 AS size
FROM pg_class
WHERE oid = 'errands_request'::regclass

-- name: vacuum_queue
-- Removes the index entries of claimed requests, which claims would otherwise
-- step over (see _vacuum_queue_if_due in postgres.py). INDEX_CLEANUP ON: by
-- default a vacuum leaves the indexes alone when few rows are dead, and the
-- index is what claims read. Takes no lock that blocks enqueues or claims.
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) errands_request

-- name: vacuum_processes
-- After claims of limited jobs (see _vacuum_queue_if_due): they count a key's
-- running jobs through errands_process_limits_idx, whose entries of ended jobs stay
-- until a vacuum.
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) errands_process

-- name: no_statement_timeout
-- Around the vacuum: the worker's statement_timeout (database_timeout) is for its
-- own short statements.
SET statement_timeout = 0

-- name: worker_statement_timeout
SELECT set_config('statement_timeout', %(ms)s::text, false)

-- name: mark_started
UPDATE errands_process AS p
SET started_at = s.started_at
FROM unnest(%(uuid)s::uuid[], %(started_at)s::timestamptz[]) AS s(uuid, started_at)
WHERE p.uuid = s.uuid AND p.started_at IS NULL

-- name: record_progress
-- Progress (errands.progress): the latest each job reported, written by its worker
-- with a batch (before the batch's outcomes, so a result gets its job's last one).
UPDATE errands_process AS p
SET progress_done = s.done::bigint, progress_total = s.total::bigint,
    progress_message = s.message
FROM unnest(%(uuid)s::uuid[], %(done)s::text[], %(total)s::text[], %(message)s::text[])
    AS s(uuid, done, total, message)
WHERE p.uuid = s.uuid

-- name: complete_many
-- One statement, so one transaction: processes become results, and results that
-- asked for a requeue get their new request, all or nothing.
-- * locked: rows are locked in uuid order so that this and a concurrent rescue
--   of the same processes cannot deadlock.
-- * finished: processes that no longer exist (rescued as LOST, cancelled) are
--   simply absent here, so a late completion writes no second result.
-- * written: ON CONFLICT is a second guard on "one process, one result".
-- * requeued: built from the written results, so no request is enqueued for a
--   result that was not written.
-- * Notifications (a limited job's slot freed, a requeue due now) are sent from the
--   RETURNING lists of finished and requeued: data-modifying CTEs always run to the
--   end, whatever the plan of the final SELECT. A notify in a one-row subquery cross
--   joined with the returned rows was skipped whenever the planner chose a hash join
--   and no row was returned (a worker asks for none but LOST and CANCELLED ones).
-- The outcomes arrive as four typed arrays, plus a JSON object of details for
-- an outcome that has any (an error, a return value, a requeue; NULL for most):
-- binary arrays cost the client and the server a fraction of parsing JSON for
-- every outcome (outcome_columns in postgres.py).
WITH outcome AS (
    SELECT
        o.process_uuid, o.status, o.started_at, o.ended_at,
        coalesce(d.error_type, '') AS error_type, coalesce(d.error, '') AS error,
        coalesce(d.traceback, '') AS traceback, d.return_value, d.retry_request_uuid,
        d.requeue_delay_seconds, d.requeue_attempt
    FROM unnest(
        %(process_uuid)s::uuid[], %(status)s::text[], %(started_at)s::timestamptz[],
        %(ended_at)s::timestamptz[], %(details)s::json[]
    ) AS o(process_uuid, status, started_at, ended_at, details)
    LEFT JOIN LATERAL json_to_record(o.details) AS d(
        error_type text, error text, traceback text, return_value jsonb,
        retry_request_uuid uuid, requeue_delay_seconds float8, requeue_attempt int
    ) ON true
),
locked AS (
    SELECT p.uuid
    FROM errands_process AS p
    WHERE p.uuid = ANY(%(process_uuid)s::uuid[])
    ORDER BY p.uuid
    FOR UPDATE
),
finished AS (
    -- A limited job that ended frees a slot of its keys: held jobs may be claimed now.
    DELETE FROM errands_process AS p
    WHERE p.uuid = ANY(ARRAY(SELECT uuid FROM locked))
    RETURNING p.*, CASE WHEN p.limits IS NOT NULL THEN pg_notify('errands_jobs', p.queue) END
),
written AS (
    INSERT INTO errands_result (
        uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, status,
        worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
        concurrency_key, timeout, source, trace_id, span_id, error_type, error,
        traceback, return_value, retry_request_uuid, start_at, limits, expires_at, tags, meta,
        progress_done, progress_total, progress_message
    )
    SELECT
        -- A UUIDv7 (RFC 9562): milliseconds first, so that new keys land at the
        -- right edge of the indexes instead of on random pages (see the conventions).
        encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
            PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
            FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
        f.uuid, f.request_uuid, f.requested_at,
        coalesce(o.started_at, f.started_at), o.ended_at, o.status, f.worker_id,
        f.job_class, f.parameters, f.queue, f.priority, f.retries, f.retry_attempt,
        f.concurrency_key, f.timeout, f.source, f.trace_id, f.span_id, o.error_type,
        o.error, o.traceback, o.return_value, o.retry_request_uuid, f.start_at, f.limits,
        f.expires_at, f.tags, f.meta, f.progress_done, f.progress_total, f.progress_message
    FROM finished AS f
    JOIN outcome AS o ON o.process_uuid = f.uuid
    ON CONFLICT (process_uuid) DO NOTHING
    RETURNING *
),
requeued AS (
    INSERT INTO errands_request (
        uuid, start_at, job_class, parameters, queue, priority, retries, retry_attempt,
        concurrency_key, timeout, source, trace_id, span_id, limits, limit_key, expires_at,
        tags, meta
    )
    SELECT
        w.retry_request_uuid, now() + o.requeue_delay_seconds * interval '1 second',
        w.job_class, w.parameters, w.queue, w.priority, w.retries, o.requeue_attempt,
        w.concurrency_key, w.timeout, w.source, w.trace_id, w.span_id,
        w.limits, w.limits -> 0 ->> 'key', w.expires_at, w.tags, w.meta
    FROM written AS w
    JOIN outcome AS o ON o.process_uuid = w.process_uuid
    WHERE w.retry_request_uuid IS NOT NULL
    RETURNING CASE WHEN start_at <= now() THEN pg_notify('errands_jobs', queue) END
)
-- The fields of JobResult in their order (complete_many() in postgres.py builds
-- the models from these positions).
SELECT
    w.uuid, w.process_uuid, w.request_uuid, w.requested_at, w.started_at, w.ended_at,
    w.created_at, w.status, w.worker_id, w.job_class, w.parameters, w.queue, w.priority,
    w.retries, w.retry_attempt, w.concurrency_key, w.timeout, w.source, w.trace_id,
    w.span_id, w.error_type, w.error, w.traceback, w.return_value, w.retry_request_uuid,
    w.start_at, w.limits, w.expires_at, w.tags, w.meta, w.progress_done, w.progress_total,
    w.progress_message
FROM written AS w
-- Every result, or only those of the asked statuses: reading back the rows
-- costs the worker more than writing them.
WHERE %(returned_statuses)s::text[] IS NULL OR w.status = ANY(%(returned_statuses)s::text[])
UNION ALL
-- The outcomes whose process is gone (rescued as LOST meanwhile, or written by an
-- earlier try of this batch): their process uuid alone, without a result uuid, for
-- PostgresBackend.complete_many to keep them on the LOST results (record_late_outcomes).
SELECT
    NULL, o.process_uuid, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL
FROM outcome AS o
WHERE NOT EXISTS (SELECT 1 FROM locked AS l WHERE l.uuid = o.process_uuid)

-- name: release
-- Only processes that never started go back: the request gets its own uuid,
-- enqueue time and due time again, so it keeps its place in the claim order.
WITH released AS (
    DELETE FROM errands_process
    WHERE uuid = ANY(%(process_uuids)s::uuid[]) AND started_at IS NULL
    RETURNING *
),
restored AS (
    INSERT INTO errands_request (
        uuid, created_at, start_at, job_class, parameters, queue, priority, retries,
        retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
        expires_at, tags, meta
    )
    SELECT
        request_uuid, requested_at, start_at, job_class, parameters, queue, priority,
        retries, retry_attempt, concurrency_key, timeout, source, trace_id, span_id,
        limits, limits -> 0 ->> 'key', expires_at, tags, meta
    FROM released
    RETURNING queue
)
SELECT
    (SELECT count(*) FROM restored) AS released,
    (SELECT count(pg_notify('errands_jobs', q.queue))
     FROM (SELECT DISTINCT queue FROM restored) AS q) AS notified


-- Rescuing lost jobs -----------------------------------------------------------

-- name: stale_workers
-- Never the rescuer itself: a worker whose own beat is late (cut off, or back from
-- an outage) still runs its jobs, and must not turn them into LOST results.
SELECT worker_id
FROM errands_worker
WHERE last_heartbeat_at < now() - %(timeout_seconds)s::float8 * interval '1 second'
    AND worker_id IS DISTINCT FROM %(rescuer)s::uuid
ORDER BY last_heartbeat_at

-- name: delete_stale_worker
-- The exactly-once gate of a rescue. Concurrent rescuers all try this delete;
-- the first takes the row lock, the others wait for it and then find the row
-- gone (or fresh again, if the worker beat meanwhile: the condition is checked
-- once more on the latest row version) and return nothing. Only the rescuer that
-- gets the row back converts the worker's processes, in the same transaction.
DELETE FROM errands_worker
WHERE worker_id = %(worker_id)s
    AND last_heartbeat_at < now() - %(timeout_seconds)s::float8 * interval '1 second'
RETURNING worker_id

-- name: orphaned_workers
-- Processes whose worker has no heartbeat row at all (it deregistered with work
-- left behind, or its row vanished). Only processes claimed longer ago than the
-- heartbeat timeout count: a live worker whose row a peer deleted registers
-- again at its next beat, well within that time.
SELECT DISTINCT p.worker_id
FROM errands_process AS p
WHERE p.created_at < now() - %(timeout_seconds)s::float8 * interval '1 second'
    AND p.worker_id IS DISTINCT FROM %(rescuer)s::uuid
    AND NOT EXISTS (SELECT 1 FROM errands_worker AS w WHERE w.worker_id = p.worker_id)

-- name: lock_orphaned_processes
-- SKIP LOCKED: processes another rescuer (or a late completion) holds are its
-- to convert; this rescuer takes the rest. The row locks keep those two from
-- both writing a result for one process; SKIP LOCKED never waits, so taking
-- them cannot deadlock.
SELECT p.uuid
FROM errands_process AS p
WHERE p.worker_id = %(worker_id)s
    AND p.created_at < now() - %(timeout_seconds)s::float8 * interval '1 second'
    AND NOT EXISTS (SELECT 1 FROM errands_worker AS w WHERE w.worker_id = p.worker_id)
ORDER BY p.uuid
FOR UPDATE OF p SKIP LOCKED

-- name: lose_processes
-- Turn a worker's processes (all of them when process_uuids is NULL) into LOST
-- results (status, error_type and error are parameters: errands.lifecycle's rules). Rows are locked in uuid order, like complete_many, so the two cannot
-- deadlock; a process already completed is gone and produces nothing here.
WITH locked AS (
    SELECT uuid
    FROM errands_process
    WHERE worker_id = %(worker_id)s
        AND (%(process_uuids)s::uuid[] IS NULL OR uuid = ANY(%(process_uuids)s::uuid[]))
    ORDER BY uuid
    FOR UPDATE
),
lost AS (
    DELETE FROM errands_process AS p
    USING locked
    WHERE p.uuid = locked.uuid
    RETURNING p.*
),
written AS (
    INSERT INTO errands_result (
        uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, status,
        worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
        concurrency_key, timeout, source, trace_id, span_id, error_type, error, start_at,
        limits, expires_at, tags, meta, progress_done, progress_total, progress_message
    )
    SELECT
        gen_random_uuid(), l.uuid, l.request_uuid, l.requested_at, l.started_at, now(), %(status)s,
        l.worker_id, l.job_class, l.parameters, l.queue, l.priority, l.retries, l.retry_attempt,
        l.concurrency_key, l.timeout, l.source, l.trace_id, l.span_id, %(error_type)s, %(error)s,
        l.start_at, l.limits, l.expires_at, l.tags, l.meta, l.progress_done, l.progress_total,
        l.progress_message
    FROM lost AS l
    ON CONFLICT (process_uuid) DO NOTHING
    RETURNING *
),
owed AS (
    -- What the LOST job is still owed (hooks, a retry), in the same transaction.
    INSERT INTO errands_followup (result_uuid, job_class)
    SELECT uuid, job_class FROM written
),
woken AS (
    -- Slots of the lost jobs' keys are free: held jobs may be claimed now.
    SELECT count(pg_notify('errands_jobs', q.queue)) AS notified
    FROM (SELECT DISTINCT queue FROM written WHERE limits IS NOT NULL) AS q
)
SELECT written.* FROM written, woken

-- name: followups
-- LOST results whose hooks and retry no worker has settled yet, oldest first.
SELECT r.*
FROM errands_followup AS f
JOIN errands_result AS r ON r.uuid = f.result_uuid
ORDER BY f.created_at
LIMIT %(limit)s

-- name: settle_followup
-- The exactly-once gate: of the workers settling one follow-up at once, the one
-- whose DELETE takes the row enqueues the retry, in the same transaction.
DELETE FROM errands_followup WHERE result_uuid = %(result_uuid)s

-- name: forget_orphaned_followups
-- Follow-ups whose result is gone (pruned, deleted by an operator): nothing is owed.
DELETE FROM errands_followup AS f
WHERE NOT EXISTS (SELECT 1 FROM errands_result AS r WHERE r.uuid = f.result_uuid)

-- Late outcomes ------------------------------------------------------------------
-- An outcome whose process a peer recorded LOST meanwhile (the worker was cut off
-- or paused past the heartbeat timeout) is kept on that LOST result; a late
-- SUCCESSFUL withdraws the retry that has not started yet (SqlBackend.record_late).

-- name: lost_result_of_process
SELECT uuid, error, retry_request_uuid
FROM errands_result
WHERE process_uuid = %(process_uuid)s AND status = 'LOST'

-- name: lock_lost_result
-- After the follow-up's delete (the order settle_followup takes them in: no deadlock).
SELECT uuid, error, retry_request_uuid FROM errands_result WHERE uuid = %(uuid)s FOR UPDATE

-- name: withdraw_request
DELETE FROM errands_request WHERE uuid = %(uuid)s

-- name: annotate_late_outcome
UPDATE errands_result
SET error = %(error)s,
    started_at = coalesce(started_at, %(started_at)s::timestamptz),
    retry_request_uuid = %(retry_request_uuid)s
WHERE uuid = %(uuid)s

-- name: processes_of_worker
SELECT * FROM errands_process WHERE worker_id = %(worker_id)s ORDER BY created_at

-- name: prune_results
-- Bounded batches keep each delete's transaction short. The row locks keep two
-- pruners from deleting the same rows; SKIP LOCKED lets the workers that prune at
-- about the same time take different rows instead of waiting on each other, and
-- since it never waits, pruning cannot deadlock.
DELETE FROM errands_result
WHERE uuid IN (
    SELECT uuid
    FROM errands_result
    WHERE ended_at < now() - %(older_than_seconds)s::float8 * interval '1 second'
    ORDER BY ended_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)

-- name: prune_status_results
-- results_retention by status: one status's results, through the (status, ended_at)
-- index, but not those of the job classes with a longer retention of their own
-- (prune_class_results keeps those; rows skipped here are rescanned each pass, so
-- only classes that keep longer than the setting are excepted). As prune_results.
DELETE FROM errands_result
WHERE uuid IN (
    SELECT uuid
    FROM errands_result
    WHERE status = %(status)s
        AND ended_at < now() - %(older_than_seconds)s::float8 * interval '1 second'
        AND NOT (job_class = ANY(%(except_classes)s::text[]))
    ORDER BY ended_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)

-- name: prune_class_results
-- A job class's own results_retention (registered by the workers that import it), by
-- status, through the (job_class, ended_at) index. As prune_results.
DELETE FROM errands_result
WHERE uuid IN (
    SELECT uuid
    FROM errands_result
    WHERE job_class = %(job_class)s
        AND status = %(status)s
        AND ended_at < now() - %(older_than_seconds)s::float8 * interval '1 second'
    ORDER BY ended_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)


-- Notifications ----------------------------------------------------------------

-- name: listen
LISTEN errands_jobs

-- name: listen_results
-- Sent by the trigger of migration_4 whenever results are written.
LISTEN errands_results


-- Inspecting and operating ---------------------------------------------------------
-- Selections are fixed SQL (the *_selection fragments): a NULL parameter means "any".

-- name: limited_jobs
-- errands limits: the stored limits of every pending or claimed job that has any,
-- with its state.
SELECT limits,
    CASE WHEN start_at <= now() THEN 'waiting' ELSE 'scheduled' END AS state
FROM errands_request
WHERE limit_key IS NOT NULL
UNION ALL
SELECT limits, 'running' FROM errands_process WHERE limits IS NOT NULL

-- name: limit_start_ages
-- errands limits: how long ago each recorded start of a rate-limited key was.
SELECT key, extract(epoch FROM clock_timestamp() - started_at)::float8 AS age
FROM errands_limit_start

-- name: next_requests
-- Selected requests in the order workers claim them (highest priority, then due
-- soonest): those without limits and the limited ones each read from their own
-- claim index, then merged.
(
    SELECT * FROM errands_request
    WHERE {{requests_selection}} AND limit_key IS NULL
    ORDER BY priority DESC, start_at, created_at
    LIMIT %(limit)s
)
UNION ALL
(
    SELECT * FROM errands_request
    WHERE {{requests_selection}} AND limit_key IS NOT NULL
    ORDER BY priority DESC, start_at, created_at
    LIMIT %(limit)s
)
ORDER BY priority DESC, start_at, created_at
LIMIT %(limit)s

-- name: prefix_requests
-- Short ids: uuids starting with a prefix are the range [%(low)s, %(high)s] (the
-- prefix padded with 0s, then with fs), a range scan of each uuid column's index.
SELECT * FROM errands_request WHERE uuid BETWEEN %(low)s AND %(high)s ORDER BY uuid LIMIT %(limit)s

-- name: prefix_processes
SELECT * FROM errands_process
WHERE uuid BETWEEN %(low)s AND %(high)s OR request_uuid BETWEEN %(low)s AND %(high)s
ORDER BY uuid
LIMIT %(limit)s

-- name: prefix_results
SELECT * FROM errands_result
WHERE uuid BETWEEN %(low)s AND %(high)s
    OR process_uuid BETWEEN %(low)s AND %(high)s
    OR request_uuid BETWEEN %(low)s AND %(high)s
ORDER BY uuid
LIMIT %(limit)s

-- name: get_request
SELECT * FROM errands_request WHERE uuid = %(uuid)s

-- name: get_process
SELECT * FROM errands_process WHERE uuid = %(uuid)s OR request_uuid = %(uuid)s LIMIT 1

-- name: get_result
-- A result's own uuid or its process's uuid first, else the latest result of
-- the request with this uuid.
SELECT *
FROM errands_result
WHERE uuid = %(uuid)s OR process_uuid = %(uuid)s OR request_uuid = %(uuid)s
ORDER BY (uuid = %(uuid)s OR process_uuid = %(uuid)s) DESC, ended_at DESC, created_at DESC
LIMIT 1

-- name: cancel_pending
-- A pending request has no process yet, so its result gets a fresh process uuid.
-- Status, error_type and error are parameters (lifecycle.CANCELLED_PENDING).
WITH cancelled AS (
    DELETE FROM errands_request WHERE uuid = %(uuid)s RETURNING *
)
INSERT INTO errands_result (
    uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, status,
    worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
    concurrency_key, timeout, source, trace_id, span_id, error_type, error, start_at, limits,
    expires_at, tags, meta
)
SELECT
    gen_random_uuid(), gen_random_uuid(), c.uuid, c.created_at, NULL, now(), %(status)s,
    NULL, c.job_class, c.parameters, c.queue, c.priority, c.retries, c.retry_attempt,
    c.concurrency_key, c.timeout, c.source, c.trace_id, c.span_id, %(error_type)s, %(error)s,
    c.start_at, c.limits, c.expires_at, c.tags, c.meta
FROM cancelled AS c
RETURNING *

-- name: flag_to_stop
UPDATE errands_process
SET cancel_requested = true
WHERE uuid = %(uuid)s OR request_uuid = %(uuid)s

-- name: flagged_to_stop
SELECT uuid FROM errands_process WHERE worker_id = %(worker_id)s AND cancel_requested

-- name: purge_all_results
DELETE FROM errands_result

-- name: purge_results_before
DELETE FROM errands_result
WHERE ended_at < now() - %(older_than_seconds)s::float8 * interval '1 second'

-- name: list_workers
SELECT
    *,
    last_heartbeat_at < now() - %(timeout_seconds)s::float8 * interval '1 second' AS stale
FROM errands_worker
ORDER BY started_at, worker_id

-- name: queue_stats
WITH waiting AS (
    SELECT
        queue,
        count(*) FILTER (WHERE start_at <= now()) AS pending,
        count(*) FILTER (WHERE start_at > now()) AS scheduled,
        extract(epoch FROM now() - min(start_at) FILTER (WHERE start_at <= now()))::float8
            AS oldest_pending_age
    FROM errands_request
    GROUP BY queue
),
running AS (
    SELECT queue, count(*) AS running FROM errands_process GROUP BY queue
)
SELECT
    coalesce(w.queue, r.queue) AS queue,
    coalesce(w.pending, 0) AS pending,
    coalesce(w.scheduled, 0) AS scheduled,
    coalesce(r.running, 0) AS running,
    w.oldest_pending_age
FROM waiting AS w
FULL JOIN running AS r ON r.queue = w.queue
ORDER BY 1

-- name: results_by_status
SELECT status, count(*) AS count FROM errands_result GROUP BY status ORDER BY status

-- name: worker_counts
SELECT
    count(*) FILTER (
        WHERE last_heartbeat_at >= now() - %(timeout_seconds)s::float8 * interval '1 second'
    ) AS active,
    count(*) FILTER (
        WHERE last_heartbeat_at < now() - %(timeout_seconds)s::float8 * interval '1 second'
    ) AS stale
FROM errands_worker

-- Schedules and queues -------------------------------------------------------------

-- name: last_occurrences
SELECT DISTINCT ON (entry_key) entry_key, run_at, request_uuid
FROM errands_occurrence
ORDER BY entry_key, run_at DESC

-- name: withdraw_requests_of_forgotten_entries
-- Entries no longer configured: delete the requests of those still pending (a
-- claimed or finished one is left alone); forget_entries then drops their
-- occurrences, in the same transaction.
DELETE FROM errands_request
WHERE uuid IN (
    SELECT request_uuid FROM errands_occurrence
    WHERE NOT (entry_key = ANY(%(keep)s::text[]))
)

-- name: forget_entries
DELETE FROM errands_occurrence WHERE NOT (entry_key = ANY(%(keep)s::text[]))

-- name: trim_occurrences
DELETE FROM errands_occurrence AS o
WHERE o.run_at < %(trim_before)s
    AND o.run_at < (
        SELECT max(latest.run_at) FROM errands_occurrence AS latest
        WHERE latest.entry_key = o.entry_key
    )

-- name: pause_queue
INSERT INTO errands_paused_queue (queue) VALUES (%(queue)s) ON CONFLICT DO NOTHING

-- name: resume_queue
DELETE FROM errands_paused_queue WHERE queue = %(queue)s

-- name: paused_queues
SELECT queue FROM errands_paused_queue ORDER BY queue

-- name: now
-- clock_timestamp(), not now(): now() is frozen at the start of the transaction.
SELECT clock_timestamp() AS now


-- Dashboard: secrets and sessions ------------------------------------------------

-- name: insert_secret
-- Two dashboards starting at once both try; the primary key keeps the first
-- value and the other insert does nothing (it waits for the first to commit).
INSERT INTO errands_secret (name, value) VALUES (%(name)s, %(value)s)
ON CONFLICT (name) DO NOTHING

-- name: secret
-- A separate statement after insert_secret: its fresh snapshot sees the row
-- whichever insert won.
SELECT value FROM errands_secret WHERE name = %(name)s

-- name: prune_dashboard_sessions
-- Expired logins are deleted as new ones start, so the table stays small.
DELETE FROM errands_dashboard_session WHERE expires_at <= clock_timestamp()

-- name: start_dashboard_session
INSERT INTO errands_dashboard_session (id, expires_at)
VALUES (%(id)s, clock_timestamp() + make_interval(secs => %(lifetime)s::float8))

-- name: dashboard_session_active
SELECT EXISTS (
    SELECT 1 FROM errands_dashboard_session
    WHERE id = %(id)s AND expires_at > clock_timestamp()
) AS active

-- name: end_dashboard_session
DELETE FROM errands_dashboard_session WHERE id = %(id)s


-- Dashboard: pages, counts and bulk operations ------------------------------------
-- A Selection's filters are fixed SQL where a NULL parameter means "any" (each
-- execution is planned with its values, so a NULL filter costs nothing and the
-- others can use their index). Pages are found by keyset: the row comparison
-- "(sort time, uuid) after the cursor" starts an index scan at the cursor, so
-- the thousandth page costs what the first does, unlike OFFSET.
-- Each table's filters are written once, as a fragment below: sqlfile.py puts its
-- text where a query says {{requests_selection}} (and so on) when loading.

-- fragment: requests_selection
-- A Selection of requests (the dashboard's filters; a NULL parameter means "any").
(%(queue)s::text IS NULL OR queue = %(queue)s::text)
    AND (%(job_class)s::text IS NULL OR job_class = %(job_class)s::text)
    AND (%(concurrency_key)s::text IS NULL OR concurrency_key = %(concurrency_key)s::text)
    AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
    AND (%(until)s::timestamptz IS NULL OR created_at <= %(until)s::timestamptz)
    AND (%(uuid)s::uuid IS NULL OR uuid = %(uuid)s::uuid)
    AND (%(due)s::boolean IS NULL OR (start_at <= now()) = %(due)s::boolean)
    AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])

-- fragment: processes_selection
-- A Selection of processes: a uuid matches the process or its request.
(%(queue)s::text IS NULL OR queue = %(queue)s::text)
    AND (%(job_class)s::text IS NULL OR job_class = %(job_class)s::text)
    AND (%(concurrency_key)s::text IS NULL OR concurrency_key = %(concurrency_key)s::text)
    AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
    AND (%(until)s::timestamptz IS NULL OR created_at <= %(until)s::timestamptz)
    AND (%(uuid)s::uuid IS NULL OR uuid = %(uuid)s::uuid OR request_uuid = %(uuid)s::uuid)
    AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])

-- fragment: results_selection
-- A Selection of results: a uuid matches the result, its request or its process.
(%(queue)s::text IS NULL OR queue = %(queue)s::text)
    AND (%(job_class)s::text IS NULL OR job_class = %(job_class)s::text)
    AND (%(concurrency_key)s::text IS NULL OR concurrency_key = %(concurrency_key)s::text)
    AND (%(since)s::timestamptz IS NULL OR ended_at >= %(since)s::timestamptz)
    AND (%(until)s::timestamptz IS NULL OR ended_at <= %(until)s::timestamptz)
    AND (%(uuid)s::uuid IS NULL
        OR uuid = %(uuid)s::uuid OR request_uuid = %(uuid)s::uuid OR process_uuid = %(uuid)s::uuid)
    AND (%(status)s::text IS NULL OR status = %(status)s::text)
    AND (%(retried)s::boolean IS NULL
        OR (retry_request_uuid IS NOT NULL) = %(retried)s::boolean)
    -- Final failures ("dead letters"): failed with no attempts left, never retried since.
    AND (%(final)s::boolean IS NULL
        OR (status IN ('ERRORED', 'LOST') AND retry_attempt >= retries
            AND retry_request_uuid IS NULL) = %(final)s::boolean)
    AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])

-- name: page_requests
SELECT *
FROM errands_request
WHERE {{requests_selection}}
    AND (%(after_at)s::timestamptz IS NULL
        OR (start_at, uuid) > (%(after_at)s::timestamptz, %(after_uuid)s::uuid))
ORDER BY start_at, uuid
LIMIT %(limit)s

-- name: page_requests_reversed
SELECT *
FROM errands_request
WHERE {{requests_selection}}
    AND (%(after_at)s::timestamptz IS NULL
        OR (start_at, uuid) < (%(after_at)s::timestamptz, %(after_uuid)s::uuid))
ORDER BY start_at DESC, uuid DESC
LIMIT %(limit)s

-- name: page_processes
SELECT *
FROM errands_process
WHERE {{processes_selection}}
    AND (%(after_at)s::timestamptz IS NULL
        OR (created_at, uuid) > (%(after_at)s::timestamptz, %(after_uuid)s::uuid))
ORDER BY created_at, uuid
LIMIT %(limit)s

-- name: page_processes_reversed
SELECT *
FROM errands_process
WHERE {{processes_selection}}
    AND (%(after_at)s::timestamptz IS NULL
        OR (created_at, uuid) < (%(after_at)s::timestamptz, %(after_uuid)s::uuid))
ORDER BY created_at DESC, uuid DESC
LIMIT %(limit)s

-- name: page_results
SELECT *
FROM errands_result
WHERE {{results_selection}}
    AND (%(after_at)s::timestamptz IS NULL
        OR (ended_at, uuid) < (%(after_at)s::timestamptz, %(after_uuid)s::uuid))
ORDER BY ended_at DESC, uuid DESC
LIMIT %(limit)s

-- name: page_results_reversed
SELECT *
FROM errands_result
WHERE {{results_selection}}
    AND (%(after_at)s::timestamptz IS NULL
        OR (ended_at, uuid) > (%(after_at)s::timestamptz, %(after_uuid)s::uuid))
ORDER BY ended_at, uuid
LIMIT %(limit)s

-- name: count_requests
SELECT count(*) AS count
FROM errands_request
WHERE {{requests_selection}}

-- name: count_processes
SELECT count(*) AS count
FROM errands_process
WHERE {{processes_selection}}

-- name: count_results
SELECT count(*) AS count
FROM errands_result
WHERE {{results_selection}}

-- name: throughput
-- One pass over the window, grouped in the database: the dashboard's chart and
-- its outcome cards both come from these rows. Rows are grouped by bucket number
-- in float8 arithmetic (extract() would compute in numeric, several times slower)
-- and turned into times once per group.
SELECT
    to_timestamp(counted.bucket * %(bucket_seconds)s::float8) AS bucket_start,
    counted.status,
    counted.count,
    counted.retried
FROM (
    SELECT
        floor(date_part('epoch', ended_at) / %(bucket_seconds)s::float8) AS bucket,
        status,
        count(*) AS count,
        count(*) FILTER (WHERE retry_request_uuid IS NOT NULL AND status <> 'DEFERRED')
            AS retried
    FROM errands_result
    WHERE ended_at >= %(since)s::timestamptz
    GROUP BY 1, 2
) AS counted
ORDER BY 1, 2

-- name: retried_by
SELECT *
FROM errands_result
WHERE retry_request_uuid = %(request_uuid)s
ORDER BY ended_at DESC
LIMIT 1

-- name: cancel_pending_selected
-- SKIP LOCKED: a request a worker is claiming right now is the worker's (the
-- claim deletes it); the rest are deleted here and become CANCELLED results in
-- the same statement, so each ends in exactly one of the two. SKIP LOCKED never
-- waits, so cancelling cannot deadlock with claims or with another cancel.
WITH chosen AS (
    SELECT uuid
    FROM errands_request
    WHERE {{requests_selection}}
    ORDER BY start_at, uuid
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
cancelled AS (
    DELETE FROM errands_request AS r USING chosen WHERE r.uuid = chosen.uuid RETURNING r.*
)
INSERT INTO errands_result (
    uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, status,
    worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
    concurrency_key, timeout, source, trace_id, span_id, error_type, error, start_at, limits,
    expires_at, tags, meta
)
SELECT
    gen_random_uuid(), gen_random_uuid(), c.uuid, c.created_at, NULL, now(), %(status)s,
    NULL, c.job_class, c.parameters, c.queue, c.priority, c.retries, c.retry_attempt,
    c.concurrency_key, c.timeout, c.source, c.trace_id, c.span_id, %(error_type)s, %(error)s,
    c.start_at, c.limits, c.expires_at, c.tags, c.meta
FROM cancelled AS c
RETURNING *

-- name: flag_to_stop_selected
UPDATE errands_process
SET cancel_requested = true
WHERE {{processes_selection}}

-- name: delete_requests
-- SKIP LOCKED: requests being claimed right now are left to their worker (the
-- row locks keep a request from being both claimed and deleted); it never waits,
-- so deleting cannot deadlock with claims.
DELETE FROM errands_request
WHERE uuid IN (
    SELECT uuid
    FROM errands_request
    WHERE {{requests_selection}}
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- name: delete_results
-- Bounded batches keep each transaction short, as in prune_results; the row
-- locks keep two deleters (or a pruner) off the same rows, and SKIP LOCKED never
-- waits, so it cannot deadlock.
DELETE FROM errands_result
WHERE uuid IN (
    SELECT uuid
    FROM errands_result
    WHERE {{results_selection}}
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)


-- Workflows (errands.workflows; the rule that moves them is in migrations/0011) ---

-- name: insert_workflow
INSERT INTO errands_workflow (uuid, name) VALUES (%(uuid)s, %(name)s)

-- name: insert_workflow_nodes
-- A node waits for as many dependencies as it has; one without any is pending.
INSERT INTO errands_workflow_node (
    workflow_uuid, node, name, job_class, run_on_failure, waiting, state, request_uuid
)
SELECT %(workflow_uuid)s, n.node, n.name, n.job_class, n.run_on_failure, n.waiting,
    CASE WHEN n.waiting > 0 THEN 'waiting' ELSE 'pending' END, n.request_uuid
FROM unnest(
    %(node)s::int[], %(name)s::text[], %(job_class)s::text[], %(run_on_failure)s::bool[],
    %(waiting)s::int[], %(request_uuid)s::uuid[]
) AS n(node, name, job_class, run_on_failure, waiting, request_uuid)

-- name: insert_workflow_edges
INSERT INTO errands_workflow_edge (workflow_uuid, parent, child, position)
SELECT %(workflow_uuid)s, e.parent, e.child, e.position
FROM unnest(%(parent)s::int[], %(child)s::int[], %(position)s::int[])
    AS e(parent, child, position)

-- name: end_workflow_node
-- A result no retry follows that did not end its node when written (a LOST one
-- whose follow-up enqueued no retry, a deferral whose re-enqueue was declined) ends
-- it now, failed; its trigger moves the dependents. A result that a retry follows matches nothing:
-- the node follows the retry.
UPDATE errands_workflow_node AS n
SET state = 'failed', result_uuid = r.uuid
FROM errands_result AS r
WHERE r.uuid = %(result_uuid)s AND r.retry_request_uuid IS NULL
    AND n.request_uuid = r.request_uuid AND n.state = 'pending'

-- name: workflow
SELECT uuid, name, created_at FROM errands_workflow WHERE uuid = %(uuid)s

-- name: workflow_nodes
-- Each node with its final result, or the process that runs it now.
SELECT
    n.node, n.name, n.job_class, n.state, n.run_on_failure, n.request_uuid, n.result_uuid,
    r.status, coalesce(r.error_type, '') AS error_type, coalesce(r.error, '') AS error,
    coalesce(r.started_at, p.started_at) AS started_at, r.ended_at,
    p.uuid AS process_uuid,
    coalesce(r.retry_attempt, p.retry_attempt, q.retry_attempt, 0) AS retry_attempt
FROM errands_workflow_node AS n
LEFT JOIN errands_result AS r ON r.uuid = n.result_uuid
LEFT JOIN errands_process AS p ON p.request_uuid = n.request_uuid AND n.result_uuid IS NULL
LEFT JOIN errands_request AS q ON q.uuid = n.request_uuid
WHERE n.workflow_uuid = %(uuid)s
ORDER BY n.node

-- name: workflow_edges
SELECT parent, child FROM errands_workflow_edge
WHERE workflow_uuid = %(uuid)s
ORDER BY child, position

-- name: workflow_of_request
SELECT workflow_uuid FROM errands_workflow_node WHERE request_uuid = %(request_uuid)s

-- name: recent_workflows
SELECT uuid, name, created_at FROM errands_workflow ORDER BY created_at DESC, uuid LIMIT %(limit)s

-- name: dependency_results
SELECT e.position, p.name, coalesce(r.status, '') AS status, r.return_value
FROM errands_workflow_node AS c
JOIN errands_workflow_edge AS e ON e.workflow_uuid = c.workflow_uuid AND e.child = c.node
JOIN errands_workflow_node AS p ON p.workflow_uuid = e.workflow_uuid AND p.node = e.parent
LEFT JOIN errands_result AS r ON r.uuid = p.result_uuid
WHERE c.request_uuid = %(request_uuid)s
ORDER BY e.position

-- name: ended_workflows
-- Workflows made before the cutoff whose jobs all ended, oldest first, in bounded
-- batches; SKIP LOCKED: two pruners take different ones and never wait.
SELECT w.uuid
FROM errands_workflow AS w
WHERE w.created_at < now() - %(older_than_seconds)s::float8 * interval '1 second'
    AND NOT EXISTS (
        SELECT 1 FROM errands_workflow_node AS n
        WHERE n.workflow_uuid = w.uuid AND n.state IN ('waiting', 'pending')
    )
ORDER BY w.created_at
LIMIT %(batch_size)s
FOR UPDATE OF w SKIP LOCKED

-- name: delete_workflow_edges
DELETE FROM errands_workflow_edge WHERE workflow_uuid = ANY(%(uuids)s::uuid[])

-- name: delete_workflow_nodes
DELETE FROM errands_workflow_node WHERE workflow_uuid = ANY(%(uuids)s::uuid[])

-- name: delete_workflows
DELETE FROM errands_workflow WHERE uuid = ANY(%(uuids)s::uuid[])

-- name: late_success_ends_workflow_node
-- A LOST workflow job whose own SUCCESSFUL outcome came late, with no retry left to
-- run (withdrawn, or none owed), ends its node as succeeded: the node is at the LOST
-- result's request, or at the retry just withdrawn. Its trigger moves the dependents.
UPDATE errands_workflow_node AS n
SET state = 'succeeded', result_uuid = r.uuid
FROM errands_result AS r
WHERE r.uuid = %(result_uuid)s AND n.state = 'pending'
    AND (n.request_uuid = r.request_uuid OR n.request_uuid = %(retry)s::uuid)
