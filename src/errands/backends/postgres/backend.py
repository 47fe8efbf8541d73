"""The PostgreSQL backend: what only PostgreSQL does, beside the operations written
once for both dialects in ``errands.backends.sql.backend``. Every query lives in
``queries.sql`` beside this file, the schema changes in ``migrations/``.

Connections come from a small ``psycopg_pool`` pool opened on first use; each
operation is one statement in autocommit mode (so one transaction) unless it says
otherwise. How the statements stay correct under concurrency (SKIP LOCKED claims,
advisory locks for concurrency keys, DELETE ... RETURNING as the exactly-once
gate) is explained next to the SQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from errands import lifecycle
from errands import settings as settings_module
from errands.backends.base import EnqueueTransaction
from errands.backends.postgres import rescue
from errands.backends.postgres.arrays import timestamptz_array, uuid_array
from errands.backends.postgres.codec import (
    EXPIRY_PARAMS,
    PostgresCodec,
    ending_params,
    first_per_process,
    outcome_columns,
    result_from_tuple,
    tags_of,
    to_result,
)
from errands.backends.postgres.connection import (
    CONNECTION_WAIT_SECONDS,
    COPY_THRESHOLD,
    MAX_CONNECTIONS,
    TRANSACTION_POOLER,
    WORKER_CONNECTIONS,
    Connection,
    Pool,
    PostgresSession,
    check_idle,
    connection_parameters,
    create_schema,
    database_errors,
    execute,
    fetch,
    fetch_tuples,
    in_schema,
    probe,
    queries,
    schema_script,
    schema_setup,
    session_options,
    worker_configuration,
)
from errands.backends.postgres.deadlines import Deadlines
from errands.backends.postgres.enqueue import (
    PostgresEnqueueTransaction,
    caller_schema,
    insert_requests,
    joined_transaction,
)
from errands.backends.postgres.limited import claim_limited
from errands.backends.postgres.listener import NoListener, PostgresListener, PostgresResultListener
from errands.backends.postgres.vacuum import QueueVacuum
from errands.backends.sql import rows as poison
from errands.backends.sql.backend import SqlBackend
from errands.backends.sql.files import load_migrations
from errands.backends.store import Claimed, ClaimRoom
from errands.models import (
    ABORTED_STATUSES,
    JobRequest,
    JobResult,
    NewRequest,
    Outcome,
    Progress,
    Selection,
    build_job_process,
)

logger = logging.getLogger("errands")

#: How long a call waits for a pooled connection before it checks, with a direct
#: connection, that the server can be reached at all (and says why not).
QUICK_WAIT_SECONDS = 1.0


class PostgresBackend(SqlBackend):
    """errands' tables in a PostgreSQL database (``postgresql://`` or ``postgres://`` URL)."""

    name = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        database_timeout: float | None = None,
        pooler: str | None = None,
        listen_url: str | None = None,
        schema: str | None = None,
    ) -> None:
        """``pooler``, ``listen_url``, ``schema``: the ``database_pooler``,
        ``listen_database_url`` and ``schema`` settings unless given."""
        config = settings_module.current()
        self.url = url
        self.max_connections = max_connections
        #: seconds without an answer after which a connection counts as dead
        self.database_timeout = (
            config.database_timeout if database_timeout is None else database_timeout
        )
        #: "transaction": ``url`` leads to a transaction pooler (see session_options)
        self.pooler: str = (
            config.database_pooler
            if pooler is None
            else settings_module.parse_setting("database_pooler", pooler, "PostgresBackend()")
        )
        #: behind a transaction pooler: no prepared statements nor session settings
        self.pooled = self.pooler == TRANSACTION_POOLER
        #: where LISTEN connects: a session of its own, never through a transaction
        #: pooler ("": ``url``, or no LISTEN behind a transaction pooler)
        given = config.listen_database_url if listen_url is None else listen_url
        self.listen_url = given or ("" if self.pooled else url)
        #: where errands' tables and channels are ("": the search_path's; see in_schema)
        self.schema: str = (
            config.schema
            if schema is None
            else settings_module.parse_setting("schema", schema, "PostgresBackend()")
        )
        #: a deadline on every call, once ``bound_calls`` set one (a worker's)
        self.call_seconds: float | None = None
        self._deadlines = Deadlines()
        self._pool: Pool | None = None
        self._pool_lock = threading.Lock()
        self._worker_pool: Pool | None = None
        self._vacuum = QueueVacuum(None if self.pooled else self._statement_ms())
        self._listeners: list[PostgresListener] = []
        self._said_polling = False
        self.codec = PostgresCodec()

    # -- connections ------------------------------------------------------------------
    def bound_calls(self, *, seconds: float) -> None:
        """Give every call a deadline of ``seconds`` from now on (see JobStore)."""
        self.call_seconds = seconds

    def _open_pool(self) -> Pool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = self._new_pool(
                    "errands", self.max_connections, configure=poison.bound_json
                )
            return self._pool

    def _open_worker_pool(self) -> Pool:
        with self._pool_lock:
            if self._worker_pool is None:
                # The worker's own statements: a statement that runs longer than the
                # database timeout is ended by the server (its connection stays usable),
                # except behind a transaction pooler (see worker_configuration).
                configure = worker_configuration(self.database_timeout, pooler=self.pooler)
                self._worker_pool = self._new_pool("errands-worker", WORKER_CONNECTIONS, configure)
            return self._worker_pool

    def _new_pool(
        self,
        name: str,
        size: int,
        configure: Callable[[Connection], None] | None = None,
    ) -> Pool:
        parameters = connection_parameters(self.url, self.database_timeout)
        options, check, configure = schema_setup(self.url, self.schema, self.pooler, configure)
        # The first connection, made directly: a server that refuses, a host that does
        # not resolve, a missing database or a wrong password fail here at once, with
        # the server's reason, instead of after the pool's wait for a connection.
        probe(self.url, {**parameters, **options}, check)
        # Autocommit: most operations are one statement, which is then its own
        # transaction without a BEGIN/COMMIT round trip. Operations of several
        # statements open a transaction explicitly.
        pool = Pool(
            self.url,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True, **parameters, **options, **session_options(self.pooler)},
            configure=configure,
            check=check_idle,
            timeout=min(CONNECTION_WAIT_SECONDS, max(self.database_timeout, 1.0)),
            name=name,
            open=False,
        )
        pool.open(wait=False)
        return pool

    @contextlib.contextmanager
    def _pooled(self, open_pool: Callable[[], Pool]) -> Iterator[Connection]:
        pool: Pool | None = None

        def last_error() -> BaseException | None:
            return pool.last_error if pool is not None else None

        with database_errors(self.url, last_error), contextlib.ExitStack() as stack:
            pool = open_pool()
            try:
                conn = stack.enter_context(pool.connection(timeout=QUICK_WAIT_SECONDS))
            except PoolTimeout:
                # No connection soon: a server gone says why at once (the pool would
                # only time out); one that answers means a busy pool: wait on.
                probe(self.url, connection_parameters(self.url, self.database_timeout))
                conn = stack.enter_context(pool.connection())
            if self.call_seconds is not None:
                stack.enter_context(self._deadlines.bound(conn, self.call_seconds))
            yield conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self._pooled(self._open_pool) as conn:
            yield conn

    @contextlib.contextmanager
    def _worker_connection(self) -> Iterator[Connection]:
        """A connection for the worker's claims and writes (see configure_worker_connection)."""
        with self._pooled(self._open_worker_pool) as conn:
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[PostgresSession]:
        with self._connection() as conn:
            yield PostgresSession(conn)

    # Autocommit: one statement is its own transaction, without BEGIN/COMMIT round trips.
    _writing = _reading

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[PostgresSession]:
        with self._connection() as conn, conn.transaction():
            yield PostgresSession(conn)

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        with self._pool_lock:
            pools = [self._pool, self._worker_pool]
            self._pool = self._worker_pool = None
        for pool in pools:
            if pool is not None:
                pool.close()

    # -- schema -----------------------------------------------------------------------
    def _migrations(self) -> tuple[tuple[int, str], ...]:
        """The files of migrations/postgres by version, for the schema (see in_schema);
        each records its own version."""
        return tuple((v, in_schema(sql, self.schema)) for v, sql in load_migrations("postgres"))

    def migrate(self) -> list[int]:
        applied = []
        with self._connection() as conn, conn.transaction():
            execute(conn, "lock_migrations")
            if self.schema:
                create_schema(conn, self.schema)
            execute(conn, "create_schema_table")
            current = fetch(conn, "recorded_schema_version")[0]["version"] or 0
            for version, sql in self._migrations():
                if version > current:
                    conn.execute(sql)  # each migration records its own version
                    applied.append(version)
        return applied

    def migration_sql(self) -> str:
        blocks = [*schema_script(self.schema), queries(self.schema)["create_schema_table"]]
        blocks += [sql for _, sql in self._migrations()]
        return "\n\n".join(blocks) + "\n"

    def schema_version(self) -> int | None:
        with self._connection() as conn:
            if not fetch(conn, "schema_table_exists")[0]["present"]:
                return None
            version: int | None = fetch(conn, "recorded_schema_version")[0]["version"]
            return version

    def latest_schema_version(self) -> int:
        return self._migrations()[-1][0]

    # -- enqueue ----------------------------------------------------------------------
    @contextlib.contextmanager
    def enqueue_transaction(self, *, connection: Any | None = None) -> Iterator[EnqueueTransaction]:
        if connection is None:
            with self._connection() as conn, conn.transaction():
                yield PostgresEnqueueTransaction(conn, self.url)
            return
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(
                f"connection: expected a psycopg.Connection, got {type(connection).__name__}"
            )
        with joined_transaction(connection), caller_schema(connection, self.schema):
            yield PostgresEnqueueTransaction(connection, self.url)

    def insert_requests(self, *, requests: Sequence[NewRequest]) -> list[JobRequest]:
        # Autocommit: an INSERT is its own transaction; COPY and its notify need one.
        with self._connection() as conn:
            if len(requests) < COPY_THRESHOLD:
                return insert_requests(conn, requests)
            with conn.transaction():
                return insert_requests(conn, requests)

    # -- claim, start, complete, release ----------------------------------------------
    def claim(
        self,
        *,
        worker_id: uuid.UUID,
        queues: Sequence[str],
        limit: int,
        room: ClaimRoom | None = None,
    ) -> Claimed:
        if limit <= 0:
            return Claimed()
        room = room or ClaimRoom()
        queue_rooms = {queue: room.rooms.get(queue) for queue in queues}
        params = {
            "worker_id": worker_id,
            "queues": list(queues),
            "rooms": list(queue_rooms.values()),
            "capped": sorted(room.queue_limits),
            "limit": limit,
            **EXPIRY_PARAMS,
        }
        salvaged = poison.salvage_mark()
        with self._worker_connection() as conn:
            claimed = fetch_tuples(conn, "claim", params)
            # Rows without a process uuid are marks (see the query): that limited
            # requests exist (all NULL), or a request that expired (its uuid, queue).
            marks = [row for row in claimed if row[0] is None]
            limited_exist = any(row[1] is None for row in marks)
            if marks:
                claimed = [row for row in claimed if row[0] is not None]
            # RETURNING keeps no order: sort by priority, then due time, then age.
            claimed.sort(key=lambda row: (-row[9], row[18], row[2]))
            # The worker connection's times are in UTC already (configure_worker_connection).
            processes = Claimed(
                build_job_process(
                    *row[:19], (), row[20], tags_of(row[21]), row[22], None, None, None
                )
                for row in claimed
            )
            processes.expired = tuple(row[8] for row in marks if row[1] is not None)
            processes.in_workflows = frozenset(row[0] for row in claimed if row[23])
            if (limited_exist or room.queue_limits) and len(processes) < limit:
                for process in processes:
                    left = queue_rooms.get(process.queue)
                    if left is not None:
                        queue_rooms[process.queue] = left - 1
                limited, admission = claim_limited(
                    conn,
                    worker_id=worker_id,
                    queues=queues,
                    limit=limit - len(processes),
                    room=room,
                    queue_rooms=queue_rooms,
                )
                # Limited jobs first: each holds a slot of its keys until it ends.
                processes[:0] = limited
                if admission is not None:
                    processes.retry_in = admission.retry_in
                    processes.wants_idle = admission.wants_idle
            self._vacuum.after_claim(
                conn, claimed=len(processes), limit=limit, limited=bool(limited_exist)
            )
        if poison.salvage_mark() != salvaged:  # some row could not be loaded
            failed = Claimed(poison.fail_invalid(self, processes))
            failed.retry_in, failed.wants_idle = processes.retry_in, processes.wants_idle
            failed.expired, failed.in_workflows = processes.expired, processes.in_workflows
            return failed
        return processes

    def _statement_ms(self) -> int:
        return int(self.database_timeout * 1000)

    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        if started:
            params = {
                "uuid": uuid_array([u for u, _ in started]),
                "started_at": timestamptz_array([t for _, t in started]),
            }
            with self._worker_connection() as conn:
                execute(conn, "mark_started", params)

    def record_progress(self, *, progress: Sequence[tuple[uuid.UUID, Progress]]) -> None:
        if progress:
            params = {
                "uuid": uuid_array([u for u, _ in progress]),
                "done": [str(p[0]) for _, p in progress],
                "total": [None if p[1] is None else str(p[1]) for _, p in progress],
                "message": [p[2] for _, p in progress],
            }
            with self._worker_connection() as conn:
                execute(conn, "record_progress", params)

    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        if not outcomes:
            return []
        unique = first_per_process(outcomes)
        returned = sorted(s.value for s in ABORTED_STATUSES) if aborted_only else None
        params = {**outcome_columns(unique), "returned_statuses": returned}
        with self._worker_connection() as conn:
            rows = fetch_tuples(conn, "complete_many", params)
        gone = {row[1] for row in rows if row[0] is None}  # their processes were rescued
        if gone:
            self.record_late_outcomes([o for o in unique if o.process_uuid in gone])
        by_process = {row[1]: result_from_tuple(row) for row in rows if row[0] is not None}
        return [by_process[o.process_uuid] for o in unique if o.process_uuid in by_process]

    @contextlib.contextmanager
    def completing(
        self, *, outcome: Outcome
    ) -> Iterator[tuple[JobResult | None, EnqueueTransaction]]:
        params = {
            **outcome_columns([dataclasses.replace(outcome, requeue=None)]),
            "returned_statuses": None,
        }
        with self._worker_connection() as conn, conn.transaction():
            rows = fetch_tuples(conn, "complete_many", params)
            # A gone process comes back as its uuid alone (see complete_many's SQL).
            written = [row for row in rows if row[0] is not None]
            result = result_from_tuple(written[0]) if written else None
            yield result, PostgresEnqueueTransaction(conn, self.url)

    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        if not process_uuids:
            return 0
        rows = self._rows("release", {"process_uuids": list(process_uuids)})
        released: int = rows[0]["released"]
        return released

    def _rescue_stale_worker(self, worker_id: uuid.UUID, timeout_seconds: float) -> list[JobResult]:
        with self._connection() as conn, conn.transaction():
            return rescue.stale_worker(conn, worker_id, timeout_seconds)

    def _rescue_vanished_worker(
        self, worker_id: uuid.UUID, timeout_seconds: float
    ) -> list[JobResult]:
        with self._connection() as conn, conn.transaction():
            return rescue.vanished_worker(conn, worker_id, timeout_seconds)

    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        if not process_uuids:
            return []
        with self._connection() as conn:
            return rescue.lose(conn, worker_id, process_uuids, lifecycle.orphaned(worker_id))

    def listen(self, *, on_wake: Callable[[], None]) -> PostgresListener | NoListener:
        if not self.listen_url:
            return self._no_listener()
        listener = PostgresListener(self.listen_url, on_wake, self.schema)
        self._listeners.append(listener)
        return listener

    def listen_results(
        self, *, on_results: Callable[[frozenset[uuid.UUID] | None], None]
    ) -> PostgresListener | NoListener:
        if not self.listen_url:
            return self._no_listener()
        listener = PostgresResultListener(self.listen_url, on_results, self.schema)
        self._listeners.append(listener)
        # Results written before LISTEN took effect would wake nobody; callers
        # look at the database after this returns, so wait until it listens.
        listener.ready.wait(CONNECTION_WAIT_SECONDS)
        return listener

    def _no_listener(self) -> NoListener:
        said, self._said_polling = self._said_polling, True
        return NoListener(announce=not said)

    # -- cancel (pending requests) ------------------------------------------------------
    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        params = {"uuid": uuid, **ending_params(lifecycle.CANCELLED_PENDING)}
        rows = self._rows("cancel_pending", params)
        return to_result(rows[0]) if rows else None

    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        params = {
            **self.codec.selection(selection),
            "limit": limit,
            **ending_params(lifecycle.CANCELLED_PENDING),
        }
        return [to_result(row) for row in self._rows("cancel_pending_selected", params)]
