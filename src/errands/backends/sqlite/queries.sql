-- The SQLite backend's SQL: the schema and every query, as named blocks that
-- errands.backends.sqlfile.load_queries("sqlite.sql") returns by name.
--
-- Conventions
--   * uuids are TEXT (canonical lower-case, hyphenated form);
--   * timestamps are REAL unix seconds (UTC). "Now" is always the database clock,
--     read once per transaction with the `now` query and passed back as :now, so
--     every row written by one transaction carries the same time;
--   * JSON (parameters, return values, a worker's queues) is TEXT;
--   * lists of values are passed as one JSON array parameter and expanded with
--     json_each(), so no statement ever needs a variable number of placeholders
--     (nor hits SQLite's limit on bound variables) and all SQL stays static.
--
-- Locking
--   SQLite has one writer at a time per database file. Every write transaction
--   starts with BEGIN IMMEDIATE, which takes the write lock up front (waiting up
--   to busy_timeout for it). A plain (DEFERRED) BEGIN would start as a reader and
--   try to upgrade to a writer at its first write; two such transactions that
--   both read first can never both upgrade, and one fails with SQLITE_BUSY at
--   once (the busy handler cannot help a reader that holds a snapshot others
--   changed). Taking the lock first makes writers queue instead of fail, and
--   makes each write transaction fully serialised: a claim that reads the due
--   requests and then moves them cannot interleave with another claim, so no
--   request is ever claimed twice. WAL journal mode lets readers (listings,
--   stats, the listener) proceed while a writer holds the lock.
--   Write transactions are kept short: no user code runs while one is open,
--   except should_enqueue hooks inside an enqueue transaction.


-- name: begin_write
-- Take the write lock now rather than at the first write (see "Locking" above).
BEGIN IMMEDIATE

-- name: begin_read
-- A read transaction: every statement until COMMIT sees one snapshot (WAL),
-- so a job moving from request to process mid-lookup is seen exactly once.
BEGIN DEFERRED

-- name: commit
COMMIT

-- name: rollback
ROLLBACK

-- name: savepoint
-- Joins a caller's open transaction: errands' writes can be undone on their own
-- (rollback_to_savepoint) but become durable only when the caller commits.
SAVEPOINT errands_enqueue

-- name: release_savepoint
RELEASE SAVEPOINT errands_enqueue

-- name: rollback_to_savepoint
ROLLBACK TO SAVEPOINT errands_enqueue

-- name: now
-- julianday('now') is fixed for the duration of one statement; converting it
-- keeps sub-second precision (unixepoch('subsec') needs SQLite 3.42).
SELECT (julianday('now') - 2440587.5) * 86400.0 AS now


-- ---------------------------------------------------------------------------
-- Connection setup and schema
-- ---------------------------------------------------------------------------

-- name: journal_mode
PRAGMA journal_mode

-- name: enable_wal
-- Write-ahead log: readers never block the writer and the writer never blocks
-- readers. The mode is stored in the file, so only the first connection to a
-- new file needs this. Switching needs an exclusive lock and may fail with
-- SQLITE_BUSY without waiting (the busy handler is not always called for it),
-- so the Python side retries it while other connections hold the file.
PRAGMA journal_mode = WAL

-- name: set_synchronous
-- With WAL, NORMAL is durable against application crashes and keeps the
-- database consistent after a power loss (the last commits may be lost).
PRAGMA synchronous = NORMAL

-- name: set_recursive_triggers
-- Workflows: a cancelled dependent's result ends its node, whose trigger may cancel
-- the next dependent (see migrations/0010_workflows.sql): triggers fire triggers.
PRAGMA recursive_triggers = ON

-- name: data_version
-- Changes whenever another connection commits to the file; reading it touches
-- no table, so polling it is almost free.
PRAGMA data_version

-- name: database_file
-- The file behind a connection ("main" database), to check a caller's connection.
SELECT file FROM pragma_database_list WHERE name = 'main'

-- name: schema_table_exists
SELECT count(*) AS found FROM sqlite_master WHERE type = 'table' AND name = 'errands_schema'

-- name: recorded_schema_version
SELECT max(version) AS version FROM errands_schema

-- name: create_schema_table
CREATE TABLE IF NOT EXISTS errands_schema (
    version INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
);

-- name: record_schema_version
INSERT INTO errands_schema (version, applied_at)
VALUES (:version, (julianday('now') - 2440587.5) * 86400.0)


-- ---------------------------------------------------------------------------
-- Enqueueing
-- ---------------------------------------------------------------------------

-- name: slots_in_use
-- :slots is a JSON array of [job_class, concurrency_key] pairs; each pair is
-- looked up through the slot indexes of requests and processes.
SELECT DISTINCT slot.value ->> 0 AS job_class, slot.value ->> 1 AS concurrency_key
FROM json_each(:slots) AS slot
WHERE EXISTS (
        SELECT 1 FROM errands_request AS r
        WHERE r.job_class = slot.value ->> 0 AND r.concurrency_key = slot.value ->> 1
    )
    OR EXISTS (
        SELECT 1 FROM errands_process AS p
        WHERE p.job_class = slot.value ->> 0 AND p.concurrency_key = slot.value ->> 1
    )

-- name: requests_for_slot
SELECT * FROM errands_request
WHERE job_class = :job_class AND concurrency_key = :concurrency_key
ORDER BY priority DESC, start_at, created_at

-- name: processes_for_slot
SELECT * FROM errands_process
WHERE job_class = :job_class AND concurrency_key = :concurrency_key
ORDER BY created_at

-- name: unique_slots
-- Uniqueness (errands.Unique): for each [job_class, concurrency_key] of :slots that
-- any job holds, its first pending request in claim order, whether a process holds
-- it, and (only when :successes) how many seconds ago its latest SUCCESSFUL result
-- ended. The write lock (BEGIN IMMEDIATE) keeps other enqueues out meanwhile.
SELECT *
FROM (
    SELECT
        s.value ->> 0 AS job_class,
        s.value ->> 1 AS concurrency_key,
        (
            SELECT r.uuid FROM errands_request AS r
            WHERE r.job_class = s.value ->> 0 AND r.concurrency_key = s.value ->> 1
            ORDER BY r.priority DESC, r.start_at, r.created_at
            LIMIT 1
        ) AS pending,
        EXISTS (
            SELECT 1 FROM errands_process AS p
            WHERE p.job_class = s.value ->> 0 AND p.concurrency_key = s.value ->> 1
        ) AS running,
        CASE WHEN :successes THEN (
            SELECT :now - max(x.ended_at)
            FROM errands_result AS x
            WHERE x.job_class = s.value ->> 0 AND x.concurrency_key = s.value ->> 1
                AND x.status = 'SUCCESSFUL'
        ) END AS success_age
    FROM json_each(:slots) AS s
) AS slot
WHERE pending IS NOT NULL OR running OR success_age IS NOT NULL

-- name: replace_request
-- Uniqueness, on_conflict "replace" or "debounce": the pending request takes the new
-- job's arguments and options (not its uuid, creation time, class or key), and with
-- :move_due_time its due time. A request claimed meanwhile is gone: nothing returned.
UPDATE errands_request SET
    start_at = CASE WHEN :move_due_time
        THEN coalesce(:start_at, :now + :delay_seconds)
        ELSE start_at END,
    parameters = :parameters,
    queue = :queue,
    priority = :priority,
    retries = :retries,
    retry_attempt = :retry_attempt,
    timeout = :timeout,
    source = :source,
    trace_id = :trace_id,
    span_id = :span_id,
    limits = :limits,
    limit_key = :limit_key,
    expires_at = :expires_at,
    tags = :tags,
    meta = :meta
WHERE uuid = :target
RETURNING *

-- name: insert_requests
-- All requests of one enqueue in one statement. :requests is a JSON array of
-- objects; a request without start_at is due :now + delay_seconds (database clock).
INSERT INTO errands_request (
    uuid, created_at, start_at, job_class, parameters, queue, priority, retries,
    retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
    expires_at, tags, meta
)
SELECT
    r.value ->> 'uuid',
    :now,
    coalesce(r.value ->> 'start_at', :now + (r.value ->> 'delay_seconds')),
    r.value ->> 'job_class',
    r.value ->> 'parameters',
    r.value ->> 'queue',
    r.value ->> 'priority',
    r.value ->> 'retries',
    r.value ->> 'retry_attempt',
    r.value ->> 'concurrency_key',
    r.value ->> 'timeout',
    r.value ->> 'source',
    r.value ->> 'trace_id',
    r.value ->> 'span_id',
    r.value ->> 'limits',
    r.value ->> 'limit_key',
    r.value ->> 'expires_at',
    r.value ->> 'tags',
    r.value ->> 'meta'
FROM json_each(:requests) AS r
RETURNING *

-- name: reserve_occurrences
-- :occurrences is a JSON array of [entry_key, run_at]. INSERT OR IGNORE skips
-- the occurrences already recorded; the write lock (BEGIN IMMEDIATE) means no
-- other scheduler is inserting meanwhile.
INSERT OR IGNORE INTO errands_occurrence (entry_key, run_at, created_at)
SELECT o.value ->> 0, o.value ->> 1, :now FROM json_each(:occurrences) AS o
RETURNING entry_key, run_at

-- name: link_occurrence
UPDATE errands_occurrence SET request_uuid = :request_uuid
WHERE entry_key = :entry_key AND run_at = :run_at

-- name: last_occurrences
-- SQLite returns the other columns from the row holding the max().
SELECT entry_key, max(run_at) AS run_at, request_uuid
FROM errands_occurrence
GROUP BY entry_key

-- name: withdraw_requests_of_forgotten_entries
DELETE FROM errands_request
WHERE uuid IN (
    SELECT request_uuid FROM errands_occurrence
    WHERE entry_key NOT IN (SELECT value FROM json_each(:keep))
)

-- name: forget_entries
DELETE FROM errands_occurrence WHERE entry_key NOT IN (SELECT value FROM json_each(:keep))

-- name: trim_occurrences
DELETE FROM errands_occurrence AS o
WHERE o.run_at < :trim_before
    AND o.run_at < (
        SELECT max(latest.run_at) FROM errands_occurrence AS latest
        WHERE latest.entry_key = o.entry_key
    )

-- name: pause_queue
INSERT OR IGNORE INTO errands_paused_queue (queue, paused_at) VALUES (:queue, :now)

-- name: resume_queue
DELETE FROM errands_paused_queue WHERE queue = :queue

-- name: paused_queues
SELECT queue FROM errands_paused_queue ORDER BY queue


-- ---------------------------------------------------------------------------
-- Dashboard: secrets and sessions
-- ---------------------------------------------------------------------------

-- name: insert_secret
-- Two dashboards starting at once both try; the first keeps its value.
INSERT OR IGNORE INTO errands_secret (name, value, created_at) VALUES (:name, :value, :now)

-- name: secret
SELECT value FROM errands_secret WHERE name = :name

-- name: prune_dashboard_sessions
-- Expired logins are deleted as new ones start, so the table stays small.
DELETE FROM errands_dashboard_session WHERE expires_at <= :now

-- name: start_dashboard_session
INSERT INTO errands_dashboard_session (id, expires_at) VALUES (:id, :now + :lifetime)

-- name: dashboard_session_active
SELECT count(*) AS active FROM errands_dashboard_session WHERE id = :id AND expires_at > :now

-- name: end_dashboard_session
DELETE FROM errands_dashboard_session WHERE id = :id

-- name: link_retry
-- Once per result: a second retry (or one racing this) links nothing.
UPDATE errands_result SET retry_request_uuid = :request_uuid
WHERE uuid = :result_uuid AND retry_request_uuid IS NULL


-- ---------------------------------------------------------------------------
-- Claiming and finishing (the worker)
-- ---------------------------------------------------------------------------

-- name: due_requests_any_queue
-- Runs inside BEGIN IMMEDIATE with claim_move_to_process and
-- claim_delete_requests: no other writer can claim the same rows in between.
-- Only requests without limits (limit_key IS NULL: the partial claim-order
-- indexes), and none of the queues queue_limits caps (:capped, a JSON array):
-- those are claimed as limited jobs (limited_keys, limited_usage).
SELECT uuid, priority, start_at, created_at FROM errands_request
WHERE limit_key IS NULL AND start_at <= :now
    AND queue NOT IN (SELECT queue FROM errands_paused_queue)
    AND queue NOT IN (SELECT value FROM json_each(:capped))
ORDER BY priority DESC, start_at, created_at
LIMIT :limit

-- name: due_requests_of_queues
-- :queues is a JSON array of queue names (the capped ones left out by the caller;
-- a queue with a room of its own is read alone, with that room as its limit).
SELECT uuid, priority, start_at, created_at FROM errands_request
WHERE limit_key IS NULL AND start_at <= :now AND queue IN (SELECT value FROM json_each(:queues))
    AND queue NOT IN (SELECT queue FROM errands_paused_queue)
ORDER BY priority DESC, start_at, created_at
LIMIT :limit

-- name: claim_move_to_process
-- :claims is a JSON object {request uuid: new process uuid}.
INSERT INTO errands_process (
    uuid, request_uuid, requested_at, start_at, created_at, started_at, worker_id,
    job_class, parameters, queue, priority, retries, retry_attempt, concurrency_key,
    timeout, source, trace_id, span_id, cancel_requested, limits, expires_at, tags, meta
)
SELECT
    claim.value, r.uuid, r.created_at, r.start_at, :now, NULL, :worker_id,
    r.job_class, r.parameters, r.queue, r.priority, r.retries, r.retry_attempt,
    r.concurrency_key, r.timeout, r.source, r.trace_id, r.span_id, 0, r.limits, r.expires_at,
    r.tags, r.meta
FROM json_each(:claims) AS claim
JOIN errands_request AS r ON r.uuid = claim.key
RETURNING *

-- name: claim_delete_requests
DELETE FROM errands_request WHERE uuid IN (SELECT key FROM json_each(:claims))

-- name: expired_exist
-- Expiry (errands.expiry): whether a request's expires_at passed, due or not. The
-- claim's read-only look asks (one probe of errands_request_expires, empty where no
-- job expires), so an idle worker still takes the write lock to end them.
SELECT 1 AS expired FROM errands_request WHERE expires_at <= :now LIMIT 1

-- name: take_expired_requests
-- First in each claim's write transaction: the expired requests (any queue, due or
-- not) leave the table; errands.backends.sqlite.rules.expire writes their results.
-- The claim then reads the due requests at the same :now, so none of them is expired.
DELETE FROM errands_request WHERE expires_at <= :now RETURNING *

-- name: limited_keys
-- Flow control, step 1 of a claim of limited jobs (inside the claim's BEGIN
-- IMMEDIATE: the write lock serialises every claim, so no key needs a lock of
-- its own; the rule that picks the jobs is errands.backends.admission): the
-- keys that have due requests in the wanted (:queues, a JSON array; empty: every
-- queue), unpaused queues, at most :max_keys of them.
-- * keys: the distinct limit keys, one probe of errands_request_limited each (a
--   "loose index scan", read lazily: it stops once :max_keys keys are found);
-- * each kept when one of its requests is due in a wanted, unpaused queue.
WITH RECURSIVE keys(key) AS (
    SELECT (SELECT min(limit_key) FROM errands_request WHERE limit_key IS NOT NULL)
    UNION ALL
    SELECT (SELECT min(r.limit_key) FROM errands_request AS r WHERE r.limit_key > keys.key)
    FROM keys
    WHERE keys.key IS NOT NULL
)
SELECT k.key
FROM keys AS k
WHERE k.key IS NOT NULL AND EXISTS (
    SELECT 1 FROM errands_request AS r
    WHERE r.limit_key = k.key AND r.start_at <= :now
        AND (:queues = '[]' OR r.queue IN (SELECT value FROM json_each(:queues)))
        AND r.queue NOT IN (SELECT queue FROM errands_paused_queue)
)
LIMIT :max_keys

-- name: limited_usage
-- Step 2: for :keys (a JSON array), how many of each key's jobs are claimed or
-- running (a process holds a key when any of its limits names it), how long ago
-- its recent starts were (errands_limit_start, within :window seconds), and its
-- due requests in claim order (at most :limit per key, one probe of
-- errands_request_limited each); for each capped queue (:capped), how many of
-- its jobs are claimed or running (counted under :queue_prefix || queue), and
-- its first :limit due requests without limits. Limits that are not a JSON array
-- (raw SQL can store anything) hold no key. Python orders the candidates.
SELECT 'running' AS kind, l.value ->> 'key' AS key, count(DISTINCT p.uuid) AS amount,
    NULL AS uuid, NULL AS limits, NULL AS queue, NULL AS priority,
    NULL AS start_at, NULL AS created_at
FROM errands_process AS p
CROSS JOIN json_each(
    CASE WHEN json_valid(p.limits) AND json_type(p.limits) = 'array' THEN p.limits ELSE '[]' END
) AS l
WHERE p.limits IS NOT NULL
    AND l.value ->> 'key' IN (SELECT value FROM json_each(:keys))
GROUP BY l.value ->> 'key'
UNION ALL
SELECT 'running', :queue_prefix || queue, count(*), NULL, NULL, NULL, NULL, NULL, NULL
FROM errands_process
WHERE queue IN (SELECT value FROM json_each(:capped))
GROUP BY queue
UNION ALL
SELECT 'start', key, :now - started_at, NULL, NULL, NULL, NULL, NULL, NULL
FROM errands_limit_start
WHERE key IN (SELECT value FROM json_each(:keys)) AND started_at > :now - :window
UNION ALL
SELECT 'candidate', NULL, NULL, r.uuid, r.limits, r.queue, r.priority, r.start_at, r.created_at
FROM json_each(:keys) AS k
CROSS JOIN errands_request AS r
WHERE r.rowid IN (
    SELECT c.rowid FROM errands_request AS c
    WHERE c.limit_key = k.value AND c.start_at <= :now
        AND (:queues = '[]' OR c.queue IN (SELECT value FROM json_each(:queues)))
        AND c.queue NOT IN (SELECT queue FROM errands_paused_queue)
    ORDER BY c.priority DESC, c.start_at, c.created_at
    LIMIT :limit
)
UNION ALL
SELECT 'candidate', NULL, NULL, r.uuid, r.limits, r.queue, r.priority, r.start_at, r.created_at
FROM json_each(:capped) AS q
CROSS JOIN errands_request AS r
WHERE r.rowid IN (
    SELECT c.rowid FROM errands_request AS c
    WHERE c.queue = q.value AND c.limit_key IS NULL AND c.start_at <= :now
        AND c.queue NOT IN (SELECT queue FROM errands_paused_queue)
    ORDER BY c.priority DESC, c.start_at, c.created_at
    LIMIT :limit
)

-- name: log_limit_starts
-- Step 3, after the chosen requests moved (claim_move_to_process,
-- claim_delete_requests): one row per start of a rate-limited key (:starts, a
-- JSON array holding each key once per start), at the claim's time.
INSERT INTO errands_limit_start (key, started_at)
SELECT s.value, :now FROM json_each(:starts) AS s

-- name: trim_limit_starts
-- And the starts of the keys read (:keys) older than any window are forgotten.
DELETE FROM errands_limit_start
WHERE key IN (SELECT value FROM json_each(:keys)) AND started_at < :now - :window

-- name: take_keyless_requests
-- Requests whose uuid is NULL or a blob (SQLite lets a TEXT PRIMARY KEY hold
-- both), which only raw SQL can write: no claim can move them to a process, so
-- the claim that meets one removes them all (scanning the table: only then).
DELETE FROM errands_request WHERE uuid IS NULL OR typeof(uuid) <> 'text'
RETURNING *

-- name: mark_started
-- Only the first stamp counts (a re-sent start must not move it).
UPDATE errands_process SET started_at = :started_at WHERE uuid = :uuid AND started_at IS NULL

-- name: record_progress
-- Progress (errands.progress): the latest a job reported, written by its worker.
UPDATE errands_process
SET progress_done = :done, progress_total = :total, progress_message = :message
WHERE uuid = :uuid

-- name: delete_processes
-- Only processes that still exist come back: one rescued (LOST) or cancelled
-- meanwhile yields no row, so it never gets a second result.
DELETE FROM errands_process
WHERE uuid IN (SELECT value FROM json_each(:uuids))
RETURNING *

-- name: delete_processes_of_worker
DELETE FROM errands_process WHERE worker_id = :worker_id RETURNING *

-- name: delete_listed_processes_of_worker
DELETE FROM errands_process
WHERE worker_id = :worker_id AND uuid IN (SELECT value FROM json_each(:uuids))
RETURNING *

-- name: insert_request
-- One request with an explicit due time (a requeue of a finished process). It
-- waits under the key of its first limit, as at enqueue.
INSERT INTO errands_request (
    uuid, created_at, start_at, job_class, parameters, queue, priority, retries,
    retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
    expires_at, tags, meta
) VALUES (
    :uuid, :now, :start_at, :job_class, :parameters, :queue, :priority, :retries,
    :retry_attempt, :concurrency_key, :timeout, :source, :trace_id, :span_id, :limits,
    CASE WHEN json_valid(:limits) THEN :limits ->> '$[0].key' END, :expires_at, :tags, :meta
)

-- name: insert_result
-- OR IGNORE: the UNIQUE process_uuid guards "one process, one result"; an
-- ignored row returns nothing, so callers report only results written.
INSERT OR IGNORE INTO errands_result (
    uuid, process_uuid, request_uuid, requested_at, started_at, ended_at, created_at,
    status, worker_id, job_class, parameters, queue, priority, retries, retry_attempt,
    concurrency_key, timeout, source, trace_id, span_id, error_type, error, traceback,
    return_value, retry_request_uuid, start_at, limits, expires_at, tags, meta,
    progress_done, progress_total, progress_message
) VALUES (
    :uuid, :process_uuid, :request_uuid, :requested_at, :started_at, :ended_at, :now,
    :status, :worker_id, :job_class, :parameters, :queue, :priority, :retries,
    :retry_attempt, :concurrency_key, :timeout, :source, :trace_id, :span_id,
    :error_type, :error, :traceback, :return_value, :retry_request_uuid, :start_at, :limits,
    :expires_at, :tags, :meta, :progress_done, :progress_total, :progress_message
)
RETURNING *

-- name: release_to_requests
-- Claimed but never started: back to the request it was (same uuid, created_at
-- and start_at, so it keeps its place in the claim order; the key of its first
-- limit again).
INSERT INTO errands_request (
    uuid, created_at, start_at, job_class, parameters, queue, priority, retries,
    retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits, limit_key,
    expires_at, tags, meta
)
SELECT
    request_uuid, requested_at, start_at, job_class, parameters, queue, priority, retries,
    retry_attempt, concurrency_key, timeout, source, trace_id, span_id, limits,
    CASE WHEN json_valid(limits) THEN limits ->> '$[0].key' END, expires_at, tags, meta
FROM errands_process
WHERE uuid IN (SELECT value FROM json_each(:uuids)) AND started_at IS NULL

-- name: release_delete_processes
DELETE FROM errands_process
WHERE uuid IN (SELECT value FROM json_each(:uuids)) AND started_at IS NULL


-- ---------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------

-- name: register_worker
INSERT INTO errands_worker (worker_id, hostname, pid, queues, started_at, last_heartbeat_at)
VALUES (:worker_id, :hostname, :pid, :queues, :now, :now)
ON CONFLICT (worker_id) DO UPDATE SET
    hostname = excluded.hostname,
    pid = excluded.pid,
    queues = excluded.queues,
    last_heartbeat_at = excluded.last_heartbeat_at

-- name: heartbeat
UPDATE errands_worker SET last_heartbeat_at = :now WHERE worker_id = :worker_id

-- name: deregister_worker
DELETE FROM errands_worker WHERE worker_id = :worker_id

-- name: stale_workers
-- Never the rescuer itself: a worker whose own beat is late (cut off, or back from
-- an outage) still runs its jobs, and must not turn them into LOST results.
SELECT worker_id FROM errands_worker
WHERE last_heartbeat_at < :now - :timeout_seconds AND worker_id IS NOT :rescuer

-- name: delete_stale_worker
-- The rescuer whose delete removes the row (rowcount 1) owns the rescue of
-- that worker; a concurrent rescuer, or a worker that beat meanwhile, gets 0.
DELETE FROM errands_worker WHERE worker_id = :worker_id AND last_heartbeat_at < :now - :timeout_seconds

-- name: orphaned_workers
-- Workers that have processes but no heartbeat row at all (one deregistered
-- with work left behind, or its row vanished). Only processes claimed longer
-- ago than the heartbeat timeout count: a live worker whose row a peer deleted
-- registers again at its next beat, well within that time.
SELECT DISTINCT p.worker_id
FROM errands_process AS p
WHERE p.created_at < :now - :timeout_seconds
    AND p.worker_id IS NOT :rescuer
    AND NOT EXISTS (SELECT 1 FROM errands_worker AS w WHERE w.worker_id = p.worker_id)

-- name: delete_orphaned_processes_of_worker
-- Re-checked inside the write transaction: the worker may have registered again.
DELETE FROM errands_process
WHERE worker_id = :worker_id
    AND created_at < :now - :timeout_seconds
    AND NOT EXISTS (SELECT 1 FROM errands_worker AS w WHERE w.worker_id = :worker_id)
RETURNING *

-- name: insert_followup
-- What a LOST job is still owed (hooks, a retry), written with its result.
INSERT INTO errands_followup (result_uuid, job_class, created_at)
VALUES (:result_uuid, :job_class, :now)

-- name: followups
-- LOST results whose hooks and retry no worker has settled yet, oldest first.
SELECT r.*
FROM errands_followup AS f
JOIN errands_result AS r ON r.uuid = f.result_uuid
ORDER BY f.created_at
LIMIT :limit

-- name: settle_followup
-- The exactly-once gate: the write lock serialises settlers; the one whose
-- DELETE takes the row enqueues the retry, in the same transaction.
DELETE FROM errands_followup WHERE result_uuid = :result_uuid

-- name: forget_orphaned_followups
-- Follow-ups whose result is gone (pruned, deleted by an operator): nothing is owed.
DELETE FROM errands_followup
WHERE NOT EXISTS (SELECT 1 FROM errands_result AS r WHERE r.uuid = errands_followup.result_uuid)

-- name: processes_of_worker
SELECT * FROM errands_process WHERE worker_id = :worker_id ORDER BY created_at

-- name: flagged_to_stop
SELECT uuid FROM errands_process WHERE worker_id = :worker_id AND cancel_requested

-- name: list_workers
SELECT *, last_heartbeat_at < :now - :timeout_seconds AS stale FROM errands_worker
ORDER BY started_at, worker_id


-- ---------------------------------------------------------------------------
-- Inspecting and operating
-- ---------------------------------------------------------------------------

-- name: limited_jobs
-- errands limits: the stored limits of every pending or claimed job that has any,
-- with its state.
SELECT limits, CASE WHEN start_at <= :now THEN 'waiting' ELSE 'scheduled' END AS state
FROM errands_request
WHERE limit_key IS NOT NULL
UNION ALL
SELECT limits, 'running' FROM errands_process WHERE limits IS NOT NULL

-- name: limit_start_ages
-- errands limits: how long ago each recorded start of a rate-limited key was.
SELECT key, :now - started_at AS age FROM errands_limit_start

-- name: next_requests
-- Selected requests in the order workers claim them (highest priority, then due
-- soonest): those without limits (read in the order of their partial claim-order
-- index) and the limited ones, each their first :limit, then merged.
SELECT * FROM (
    SELECT * FROM errands_request
    WHERE {{requests_selection}} AND limit_key IS NULL
    ORDER BY priority DESC, start_at, created_at
    LIMIT :limit
)
UNION ALL
SELECT * FROM (
    SELECT * FROM errands_request
    WHERE {{requests_selection}} AND limit_key IS NOT NULL
    ORDER BY priority DESC, start_at, created_at
    LIMIT :limit
)
ORDER BY priority DESC, start_at, created_at
LIMIT :limit

-- name: prefix_requests
-- Short ids: uuids starting with a prefix are the range [:low, :high] (the
-- prefix padded with 0s, then with fs), a range scan of each uuid column's index.
SELECT * FROM errands_request WHERE uuid BETWEEN :low AND :high ORDER BY uuid LIMIT :limit

-- name: prefix_processes
SELECT * FROM errands_process
WHERE uuid BETWEEN :low AND :high OR request_uuid BETWEEN :low AND :high
ORDER BY uuid
LIMIT :limit

-- name: prefix_results
SELECT * FROM errands_result
WHERE uuid BETWEEN :low AND :high
    OR process_uuid BETWEEN :low AND :high
    OR request_uuid BETWEEN :low AND :high
ORDER BY uuid
LIMIT :limit

-- name: get_request
SELECT * FROM errands_request WHERE uuid = :uuid

-- name: get_process
SELECT * FROM errands_process WHERE uuid = :uuid OR request_uuid = :uuid LIMIT 1

-- name: get_result
-- By its own uuid or its process's; failing both, the latest result of the request.
SELECT * FROM errands_result
WHERE uuid = :uuid OR process_uuid = :uuid OR request_uuid = :uuid
ORDER BY request_uuid = :uuid, ended_at DESC
LIMIT 1

-- name: delete_request
DELETE FROM errands_request WHERE uuid = :uuid RETURNING *

-- name: flag_to_stop
UPDATE errands_process SET cancel_requested = 1 WHERE uuid = :uuid OR request_uuid = :uuid

-- name: purge_all_results
DELETE FROM errands_result

-- name: purge_results_before
DELETE FROM errands_result WHERE ended_at < :now - :older_than_seconds

-- Late outcomes ------------------------------------------------------------------
-- An outcome whose process a peer recorded LOST meanwhile (the worker was cut off
-- or paused past the heartbeat timeout) is kept on that LOST result; a late
-- SUCCESSFUL withdraws the retry that has not started yet (SqlBackend.record_late).

-- name: lost_result_of_process
SELECT uuid, error, retry_request_uuid
FROM errands_result
WHERE process_uuid = :process_uuid AND status = 'LOST'

-- name: lock_lost_result
-- Under the write lock already: the same read again (as PostgreSQL's takes a row lock).
SELECT uuid, error, retry_request_uuid FROM errands_result WHERE uuid = :uuid

-- name: withdraw_request
DELETE FROM errands_request WHERE uuid = :uuid

-- name: annotate_late_outcome
UPDATE errands_result
SET error = :error,
    started_at = coalesce(started_at, :started_at),
    retry_request_uuid = :retry_request_uuid
WHERE uuid = :uuid

-- name: prune_results
-- Oldest first, in bounded batches, so one prune never holds the write lock long.
-- By rowid, which no row lacks (a result's uuid may be NULL if raw SQL wrote it).
DELETE FROM errands_result
WHERE rowid IN (
    SELECT rowid FROM errands_result
    WHERE ended_at < :now - :older_than_seconds
    ORDER BY ended_at
    LIMIT :batch_size
)

-- name: prune_status_results
-- results_retention by status, but not the job classes with a longer retention of
-- their own (prune_class_results keeps those). As prune_results.
DELETE FROM errands_result
WHERE rowid IN (
    SELECT rowid FROM errands_result
    WHERE status = :status
        AND ended_at < :now - :older_than_seconds
        AND job_class NOT IN (SELECT value FROM json_each(:except_classes))
    ORDER BY ended_at
    LIMIT :batch_size
)

-- name: prune_class_results
-- A job class's own results_retention, by status. As prune_results.
DELETE FROM errands_result
WHERE rowid IN (
    SELECT rowid FROM errands_result
    WHERE job_class = :job_class
        AND status = :status
        AND ended_at < :now - :older_than_seconds
    ORDER BY ended_at
    LIMIT :batch_size
)

-- name: queue_stats
WITH waiting AS (
    SELECT
        queue,
        sum(start_at <= :now) AS pending,
        sum(start_at > :now) AS scheduled,
        :now - min(CASE WHEN start_at <= :now THEN start_at END) AS oldest_pending_age
    FROM errands_request
    GROUP BY queue
),
running AS (
    SELECT queue, count(*) AS running FROM errands_process GROUP BY queue
),
queues AS (
    SELECT queue FROM waiting UNION SELECT queue FROM running
)
SELECT
    queues.queue,
    coalesce(waiting.pending, 0) AS pending,
    coalesce(waiting.scheduled, 0) AS scheduled,
    coalesce(running.running, 0) AS running,
    waiting.oldest_pending_age
FROM queues
LEFT JOIN waiting ON waiting.queue = queues.queue
LEFT JOIN running ON running.queue = queues.queue
ORDER BY queues.queue

-- name: results_by_status
SELECT status, count(*) AS count FROM errands_result GROUP BY status ORDER BY status

-- name: worker_counts
SELECT
    coalesce(sum(last_heartbeat_at >= :now - :timeout_seconds), 0) AS active,
    coalesce(sum(last_heartbeat_at < :now - :timeout_seconds), 0) AS stale
FROM errands_worker


-- ---------------------------------------------------------------------------
-- Dashboard: pages, counts and bulk operations
-- ---------------------------------------------------------------------------
-- A Selection's filters are fixed SQL where a NULL parameter means "any".
-- Pages are found by keyset: "(sort time, uuid) after the cursor" is a range on
-- the sort-time index (without a cursor, up to an infinite time), so a deep page
-- costs what the first one does, unlike OFFSET. The cursor's time went through a
-- datetime (microseconds) and back, so times within half a microsecond of it
-- count as equal to it and the uuid decides.
-- Each table's filters are written once, as a fragment below: sqlfile.py puts its
-- text where a query says {{requests_selection}} (and so on) when loading.

-- fragment: requests_selection
-- A Selection of requests (the dashboard's filters; a NULL parameter means "any").
(:queue IS NULL OR queue = :queue)
    AND (:job_class IS NULL OR job_class = :job_class)
    AND (:concurrency_key IS NULL OR concurrency_key = :concurrency_key)
    AND (:since IS NULL OR created_at >= :since)
    AND (:until IS NULL OR created_at <= :until)
    AND (:uuid IS NULL OR uuid = :uuid)
    AND (:due IS NULL OR (start_at <= :now) = :due)
    AND (:tag IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = :tag))

-- fragment: processes_selection
-- A Selection of processes: a uuid matches the process or its request.
(:queue IS NULL OR queue = :queue)
    AND (:job_class IS NULL OR job_class = :job_class)
    AND (:concurrency_key IS NULL OR concurrency_key = :concurrency_key)
    AND (:since IS NULL OR created_at >= :since)
    AND (:until IS NULL OR created_at <= :until)
    AND (:uuid IS NULL OR uuid = :uuid OR request_uuid = :uuid)
    AND (:tag IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = :tag))

-- fragment: results_selection
-- A Selection of results: a uuid matches the result, its request or its process.
(:queue IS NULL OR queue = :queue)
    AND (:job_class IS NULL OR job_class = :job_class)
    AND (:concurrency_key IS NULL OR concurrency_key = :concurrency_key)
    AND (:since IS NULL OR ended_at >= :since)
    AND (:until IS NULL OR ended_at <= :until)
    AND (:uuid IS NULL OR uuid = :uuid OR request_uuid = :uuid OR process_uuid = :uuid)
    AND (:status IS NULL OR status = :status)
    AND (:retried IS NULL OR (retry_request_uuid IS NOT NULL) = :retried)
    -- Final failures ("dead letters"): failed with no attempts left, never retried since.
    AND (:final IS NULL
        OR (status IN ('ERRORED', 'LOST') AND retry_attempt >= retries
            AND retry_request_uuid IS NULL) = :final)
    AND (:tag IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = :tag))

-- name: page_requests
SELECT * FROM errands_request
WHERE {{requests_selection}}
    AND start_at >= coalesce(:after_at - 5e-7, -9e999)
    AND (start_at > :after_at + 5e-7 OR :after_uuid IS NULL OR uuid > :after_uuid)
ORDER BY start_at, uuid
LIMIT :limit

-- name: page_requests_reversed
SELECT * FROM errands_request
WHERE {{requests_selection}}
    AND start_at <= coalesce(:after_at + 5e-7, 9e999)
    AND (start_at < :after_at - 5e-7 OR :after_uuid IS NULL OR uuid < :after_uuid)
ORDER BY start_at DESC, uuid DESC
LIMIT :limit

-- name: page_processes
SELECT * FROM errands_process
WHERE {{processes_selection}}
    AND created_at >= coalesce(:after_at - 5e-7, -9e999)
    AND (created_at > :after_at + 5e-7 OR :after_uuid IS NULL OR uuid > :after_uuid)
ORDER BY created_at, uuid
LIMIT :limit

-- name: page_processes_reversed
SELECT * FROM errands_process
WHERE {{processes_selection}}
    AND created_at <= coalesce(:after_at + 5e-7, 9e999)
    AND (created_at < :after_at - 5e-7 OR :after_uuid IS NULL OR uuid < :after_uuid)
ORDER BY created_at DESC, uuid DESC
LIMIT :limit

-- name: page_results
SELECT * FROM errands_result
WHERE {{results_selection}}
    AND ended_at <= coalesce(:after_at + 5e-7, 9e999)
    AND (ended_at < :after_at - 5e-7 OR :after_uuid IS NULL OR uuid < :after_uuid)
ORDER BY ended_at DESC, uuid DESC
LIMIT :limit

-- name: page_results_reversed
SELECT * FROM errands_result
WHERE {{results_selection}}
    AND ended_at >= coalesce(:after_at - 5e-7, -9e999)
    AND (ended_at > :after_at + 5e-7 OR :after_uuid IS NULL OR uuid > :after_uuid)
ORDER BY ended_at, uuid
LIMIT :limit

-- name: count_requests
SELECT count(*) AS count FROM errands_request
WHERE {{requests_selection}}

-- name: count_processes
SELECT count(*) AS count FROM errands_process
WHERE {{processes_selection}}

-- name: count_results
SELECT count(*) AS count FROM errands_result
WHERE {{results_selection}}

-- name: throughput
-- Bucket starts are whole multiples of :bucket_seconds (times are positive,
-- so the cast's truncation is a floor).
SELECT
    CAST(ended_at / :bucket_seconds AS INTEGER) * :bucket_seconds AS bucket_start,
    status,
    count(*) AS count,
    sum(retry_request_uuid IS NOT NULL AND status <> 'DEFERRED') AS retried
FROM errands_result
WHERE ended_at >= :since
GROUP BY 1, 2
ORDER BY 1, 2

-- name: retried_by
SELECT * FROM errands_result
WHERE retry_request_uuid = :request_uuid
ORDER BY ended_at DESC
LIMIT 1

-- name: delete_selected_requests_returning
-- Runs in a write transaction that turns each deleted request into a CANCELLED
-- result (cancel_pending_selected); the write lock keeps workers from claiming meanwhile.
DELETE FROM errands_request
WHERE uuid IN (
    SELECT uuid FROM errands_request
    WHERE {{requests_selection}}
    ORDER BY start_at, uuid
    LIMIT :limit
)
RETURNING *

-- name: flag_to_stop_selected
UPDATE errands_process SET cancel_requested = 1
WHERE {{processes_selection}}

-- name: delete_requests
DELETE FROM errands_request
WHERE uuid IN (
    SELECT uuid FROM errands_request
    WHERE {{requests_selection}}
    LIMIT :limit
)

-- name: delete_results
DELETE FROM errands_result
WHERE uuid IN (
    SELECT uuid FROM errands_result
    WHERE {{results_selection}}
    LIMIT :limit
)


-- ---------------------------------------------------------------------------
-- Workflows (errands.workflows; the rule that moves them is in migrations/0010)
-- ---------------------------------------------------------------------------

-- name: insert_workflow
INSERT INTO errands_workflow (uuid, name, created_at) VALUES (:uuid, :name, :now)

-- name: insert_workflow_nodes
-- :nodes is a JSON array of objects. A node waits for as many dependencies as it
-- has; one without any is pending.
INSERT INTO errands_workflow_node (
    workflow_uuid, node, name, job_class, run_on_failure, waiting, state, request_uuid
)
SELECT :workflow_uuid, n.value ->> 'node', n.value ->> 'name', n.value ->> 'job_class',
    n.value ->> 'run_on_failure', n.value ->> 'waiting',
    CASE WHEN n.value ->> 'waiting' > 0 THEN 'waiting' ELSE 'pending' END,
    n.value ->> 'request_uuid'
FROM json_each(:nodes) AS n

-- name: insert_workflow_edges
INSERT INTO errands_workflow_edge (workflow_uuid, parent, child, position)
SELECT :workflow_uuid, e.value ->> 'parent', e.value ->> 'child', e.value ->> 'position'
FROM json_each(:edges) AS e

-- name: claimed_in_workflows
-- Which of a claim's requests are a workflow's jobs (their results release others).
SELECT request_uuid FROM errands_workflow_node
WHERE state IN ('waiting', 'pending')
    AND request_uuid IN (SELECT value FROM json_each(:requests))

-- name: end_workflow_node
-- See the PostgreSQL query of the same name.
UPDATE errands_workflow_node
SET state = 'failed', result_uuid = :result_uuid
WHERE state = 'pending' AND request_uuid = (
    SELECT request_uuid FROM errands_result
    WHERE uuid = :result_uuid AND retry_request_uuid IS NULL
)

-- name: workflow
SELECT uuid, name, created_at FROM errands_workflow WHERE uuid = :uuid

-- name: workflow_nodes
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
WHERE n.workflow_uuid = :uuid
ORDER BY n.node

-- name: workflow_edges
SELECT parent, child FROM errands_workflow_edge
WHERE workflow_uuid = :uuid
ORDER BY child, position

-- name: workflow_of_request
SELECT workflow_uuid FROM errands_workflow_node WHERE request_uuid = :request_uuid

-- name: recent_workflows
SELECT uuid, name, created_at FROM errands_workflow ORDER BY created_at DESC, uuid LIMIT :limit

-- name: dependency_results
SELECT e.position, p.name, coalesce(r.status, '') AS status, r.return_value
FROM errands_workflow_node AS c
JOIN errands_workflow_edge AS e ON e.workflow_uuid = c.workflow_uuid AND e.child = c.node
JOIN errands_workflow_node AS p ON p.workflow_uuid = e.workflow_uuid AND p.node = e.parent
LEFT JOIN errands_result AS r ON r.uuid = p.result_uuid
WHERE c.request_uuid = :request_uuid
ORDER BY e.position

-- name: ended_workflows
-- See the PostgreSQL query of the same name.
SELECT w.uuid
FROM errands_workflow AS w
WHERE w.created_at < :now - :older_than_seconds
    AND NOT EXISTS (
        SELECT 1 FROM errands_workflow_node AS n
        WHERE n.workflow_uuid = w.uuid AND n.state IN ('waiting', 'pending')
    )
ORDER BY w.created_at
LIMIT :batch_size

-- name: delete_workflow_edges
DELETE FROM errands_workflow_edge WHERE workflow_uuid IN (SELECT value FROM json_each(:uuids))

-- name: delete_workflow_nodes
DELETE FROM errands_workflow_node WHERE workflow_uuid IN (SELECT value FROM json_each(:uuids))

-- name: delete_workflows
DELETE FROM errands_workflow WHERE uuid IN (SELECT value FROM json_each(:uuids))

-- name: late_success_ends_workflow_node
-- See the PostgreSQL query of the same name.
UPDATE errands_workflow_node
SET state = 'succeeded', result_uuid = :result_uuid
WHERE state = 'pending' AND (
    request_uuid = (SELECT request_uuid FROM errands_result WHERE uuid = :result_uuid)
    OR request_uuid = :retry
)
