"""The PostgreSQL backend: every query lives in ``postgres.sql`` beside this file, the
schema changes in ``migrations/postgres/``.

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
import functools
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from errands import lifecycle
from errands.backends import postgres_arrays
from errands.backends import rows as poison
from errands.backends.base import Backend, ConcurrencySlot, EnqueueTransaction, Listener
from errands.backends.postgres_arrays import (
    EncodedArray,
    json_array,
    text_array,
    timestamptz_array,
    uuid_array,
)
from errands.backends.postgres_copy import RequestRows
from errands.backends.sqlfile import load_migrations, load_queries
from errands.errors import BackendError, SchemaOutOfDate
from errands.models import (
    ABORTED_STATUSES,
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    NewRequest,
    Occurrence,
    Outcome,
    PageSpec,
    QueueStats,
    Selection,
    Stats,
    Status,
    Throughput,
    WorkerInfo,
    build_job_process,
    build_job_request,
    build_job_result,
)
from errands.redaction import redact_text, redact_url

logger = logging.getLogger("errands")

#: The dashboard's count and delete statements, by table.
COUNT_QUERIES = {
    Kind.REQUEST: "count_requests",
    Kind.PROCESS: "count_processes",
    Kind.RESULT: "count_results",
}
DELETE_QUERIES = {Kind.REQUEST: "delete_requests", Kind.RESULT: "delete_results"}

Row = dict[str, Any]
Connection = psycopg.Connection[Any]

MAX_CONNECTIONS = 4
WORKER_CONNECTIONS = 2  # a worker claims on one thread and writes outcomes from another
VACUUM_AFTER_CLAIMS = 1_000  # at least; see PostgresBackend._vacuum_queue_if_due
CONNECTION_WAIT_SECONDS = 10.0  # how long an operation waits for a pooled connection
LISTEN_POLL_SECONDS = 0.25  # how often the listener thread checks whether to stop
LISTEN_MAX_BACKOFF_SECONDS = 5.0
# Enqueue batches of at least this many jobs go through COPY (see copy_requests):
# below it, one INSERT statement is fewer round trips.
COPY_THRESHOLD = 100


def queries() -> dict[str, str]:
    return load_queries("postgres.sql")


# -- running statements ------------------------------------------------------------


def fetch(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
    """Rows of the named query (none for a statement that returns no rows)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(queries()[name], params)
        if not cursor.description:
            return []
        try:
            return cursor.fetchall()
        except Exception:  # a poison row (see rows.py): its statement has run
            return poison.salvage_dicts(cursor)


def _configure_worker_connection(conn: Connection) -> None:
    """Plan the worker's claims and writes once per connection, not at every execution.

    PostgreSQL plans a prepared statement again for its parameters until a generic
    plan looks as cheap; for the claim and the completion it never does (their
    parameters size the batch), so each execution paid 0.3 to 0.5 ms of planning,
    more than the work itself for a small batch. Their generic plans read the same
    indexes. Only the worker's connections do this: listings with optional filters
    need their custom plans.

    No JIT: a generic plan is costed for a tenth of the table (it cannot see the
    LIMIT), which on a long queue crosses ``jit_above_cost``, and compiling then
    takes hundreds of milliseconds for a statement that runs in one.

    Times in UTC: psycopg then returns them in ``datetime.UTC`` already, and the
    rows become models without a conversion per field.

    The batches' columns go as arrays framed by errands (``postgres_arrays``).
    """
    postgres_arrays.register(conn)
    poison.bound_json(conn)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("SET jit = off")
    conn.execute("SET TimeZone = 'UTC'")


def fetch_tuples(conn: Connection, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of the named query as tuples, in binary: for the worker's hot queries,
    whose rows become models by position (a third of the cost of ``fetch``)."""
    with conn.cursor(binary=True) as cursor:
        cursor.execute(queries()[name], params)
        try:
            return cursor.fetchall()
        except Exception:  # a poison row (see rows.py): its statement has run
            return poison.salvage_tuples(cursor)


def execute(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> int:
    """Run the named statement; return how many rows it touched."""
    with conn.cursor() as cursor:
        cursor.execute(queries()[name], params)
        return cursor.rowcount


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn psycopg's errors about a missing schema or server into errands' own."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise SchemaOutOfDate(
            f"the errands tables are missing or outdated in {redact_url(url)}: "
            f"run `errands migrate` ({exc.diag.message_primary})"
        ) from exc
    except PoolTimeout as exc:
        raise BackendError(
            f"cannot connect to the database {redact_url(url)} "
            f"(the connection pool's log warnings give the reason): {redact_text(str(exc), url)}"
        ) from exc
    except psycopg.OperationalError as exc:
        raise BackendError(
            f"cannot use the database {redact_url(url)}: {redact_text(str(exc), url)}"
        ) from exc


# -- rows to models ------------------------------------------------------------------


def _utc(value: Any) -> Any:
    """Datetimes in UTC whatever the session's TimeZone (a caller's connection may differ)."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not datetime.UTC:
        return value.astimezone(datetime.UTC)
    return value


@functools.cache
def _field_names(model: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(model))


def _fields_of(model: Any, row: Row) -> dict[str, Any]:
    # Hot: the worker turns every claimed and finished job's row into a model.
    return {name: _utc(row[name]) for name in _field_names(model) if name in row}


def to_request(row: Row) -> JobRequest:
    return JobRequest(**_fields_of(JobRequest, row))


def to_process(row: Row) -> JobProcess:
    return JobProcess(**_fields_of(JobProcess, row))


def to_result(row: Row) -> JobResult:
    values = _fields_of(JobResult, row)
    values["status"] = Status(values["status"])
    return JobResult(**values)


def _result_from_tuple(row: tuple[Any, ...]) -> JobResult:
    """A row with the fields of JobResult in their order (see complete_many's SQL),
    read on a worker connection (its times are in UTC already)."""
    values = list(row)
    values[7] = Status(values[7])
    return build_job_result(*values)


def to_worker(row: Row) -> WorkerInfo:
    return WorkerInfo(**_fields_of(WorkerInfo, row))


# -- query parameters ----------------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def slot_columns(slots: Sequence[ConcurrencySlot]) -> dict[str, list[str]]:
    return {
        "job_class": [job_class for job_class, _ in slots],
        "concurrency_key": [key for _, key in slots],
    }


def request_values(request: NewRequest) -> dict[str, Any]:
    """One request's values, for ``insert_request``."""
    return {
        "uuid": request.uuid,
        "start_at": request.start_at,
        "delay_seconds": float(request.delay_seconds),
        "job_class": request.job_class,
        "parameters": _json(request.parameters),
        "queue": request.queue,
        "priority": request.priority,
        "retries": request.retries,
        "retry_attempt": request.retry_attempt,
        "concurrency_key": request.concurrency_key,
        "timeout": request.timeout,
        "source": request.source,
        "trace_id": request.trace_id,
        "span_id": request.span_id,
    }


def request_columns(requests: Sequence[NewRequest]) -> dict[str, list[Any]]:
    """The batch as one array per column, for ``unnest`` in ``insert_requests``."""
    rows = [request_values(request) for request in requests]
    return {column: [row[column] for row in rows] for column in rows[0]}


def insert_requests(conn: Connection, requests: Sequence[NewRequest]) -> list[JobRequest]:
    """Insert a batch on ``conn``: COPY for a large one, else one INSERT statement.

    On a connection in autocommit mode the INSERT is its own transaction: a job
    enqueued alone costs one round trip, with no BEGIN and COMMIT.
    """
    if not requests:
        return []
    if len(requests) >= COPY_THRESHOLD:
        return copy_requests(conn, requests)
    # Scalar parameters for one job: psycopg adapts them far faster than arrays.
    name, params = (
        ("insert_request", request_values(requests[0]))
        if len(requests) == 1
        else ("insert_requests", request_columns(requests))
    )
    # Text results: a caller's connection may use client-side cursors.
    with conn.cursor(row_factory=tuple_row) as cursor:
        rows = cursor.execute(queries()[name], params).fetchall()
    # The database computed only the two times; the rest is what was sent.
    times = {key: (_utc(created_at), _utc(start_at)) for key, created_at, start_at in rows}
    return [_as_request(request, *times[request.uuid]) for request in requests]


def copy_requests(conn: Connection, requests: Sequence[NewRequest]) -> list[JobRequest]:
    """Insert a large batch with COPY, the fastest way into a table.

    COPY cannot compute values nor return rows, so the due times are computed
    here from the transaction's ``now()`` (the very value ``insert_requests``
    would use), the returned requests are built from what was sent, and the
    due queues are notified by a statement of their own. Needs a transaction
    (the time read and the COPY must share it).
    """
    now = _utc(fetch(conn, "transaction_now")[0]["now"])
    due_times = [_due_time(request, now) for request in requests]
    with conn.cursor() as cursor, cursor.copy(queries()["copy_requests"]) as copy:
        for chunk in RequestRows(conn).stream(requests, now, due_times):
            copy.write(chunk)
    inserted = [_as_request(r, now, at) for r, at in zip(requests, due_times, strict=True)]
    due = sorted({request.queue for request in inserted if request.start_at <= now})
    if due:
        fetch(conn, "notify_queues", {"queues": due})
    return inserted


def _due_time(request: NewRequest, now: datetime.datetime) -> datetime.datetime:
    if request.start_at is not None:
        start_at: datetime.datetime = _utc(request.start_at)  # a caller's, in any zone
        return start_at
    if not request.delay_seconds:
        return now
    return now + datetime.timedelta(seconds=request.delay_seconds)


def _as_request(
    request: NewRequest, created_at: datetime.datetime, start_at: datetime.datetime
) -> JobRequest:
    return build_job_request(
        request.uuid,
        created_at,
        start_at,
        request.job_class,
        request.parameters,
        request.queue,
        request.priority,
        request.retries,
        request.retry_attempt,
        request.concurrency_key,
        request.timeout,
        request.source,
        request.trace_id,
        request.span_id,
    )


def ending_params(ending: lifecycle.Ending) -> dict[str, str]:
    """The status, error type and message of a result the SQL writes (lose_processes,
    cancel_pending, cancel_pending_selected): the rule's text lives in ``lifecycle`` only."""
    return {"status": str(ending.status), "error_type": ending.error_type, "error": ending.error}


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: one in an error message must not fail the batch."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def outcome_columns(outcomes: Sequence[Outcome]) -> dict[str, EncodedArray]:
    """The batch as one binary array per column, for ``unnest`` in ``complete_many``
    (sent by a worker connection: see ``postgres_arrays``).

    Most outcomes are a success without a return value: those need no details.
    A requeued outcome gets its new request's uuid here, so the result can point
    at the request written in the same statement.
    """
    return {
        "process_uuid": uuid_array([o.process_uuid for o in outcomes]),
        "status": text_array([o.status.value for o in outcomes]),
        "started_at": timestamptz_array([o.started_at for o in outcomes]),
        "ended_at": timestamptz_array([o.ended_at for o in outcomes]),
        "details": json_array([_details(o) for o in outcomes]),
    }


def _details(outcome: Outcome) -> str | None:
    """An outcome's fields beyond status and times, as a JSON object (None: it has none)."""
    requeue = outcome.requeue
    if not (
        outcome.error_type
        or outcome.error
        or outcome.traceback
        or outcome.return_value is not None
        or requeue
    ):
        return None
    return json.dumps(
        {
            "error_type": _text(outcome.error_type),
            "error": _text(outcome.error),
            "traceback": _text(outcome.traceback),
            "return_value": outcome.return_value,
            "retry_request_uuid": str(uuid.uuid4()) if requeue else None,
            "requeue_delay_seconds": requeue.delay_seconds if requeue else None,
            # A row's count (raw SQL may set it to the column's largest value) must
            # not overflow the column, failing the write of the whole batch.
            "requeue_attempt": min(requeue.retry_attempt, poison.LARGEST_INT4) if requeue else None,
        }
    )


def selection_params(selection: Selection) -> dict[str, Any]:
    """A Selection as query parameters; None (or empty) means "any"."""
    return {
        "queue": selection.queue or None,
        "job_class": selection.job_class or None,
        "concurrency_key": selection.concurrency_key or None,
        "uuid": selection.uuid,
        "since": selection.since,
        "until": selection.until,
        "due": selection.due,
        "status": str(selection.status) if selection.status else None,
        "retried": selection.retried,
    }


def page_params(selection: Selection, page: PageSpec) -> dict[str, Any]:
    after = page.after
    return {
        **selection_params(selection),
        "after_at": after.at if after else None,
        "after_uuid": after.uuid if after else None,
        "limit": page.limit,
    }


def page_query(name: str, page: PageSpec) -> str:
    return f"page_{name}_reversed" if page.reverse else f"page_{name}"


def _first_per_process(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """One outcome per process: a duplicate in a batch could not produce a second result anyway."""
    seen: dict[uuid.UUID, Outcome] = {}
    for outcome in outcomes:
        seen.setdefault(outcome.process_uuid, outcome)
    return list(seen.values())


# -- enqueueing ----------------------------------------------------------------------


class PostgresEnqueueTransaction(EnqueueTransaction):
    """Enqueue statements on one connection, inside a transaction someone else ends."""

    def __init__(self, conn: Connection, url: str) -> None:
        self._conn = conn
        self._url = url

    def _fetch(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        with database_errors(self._url):
            return fetch(self._conn, name, params)

    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        if slots:
            self._fetch("lock_slots", slot_columns(slots))

    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        if not slots:
            return set()
        rows = self._fetch("slots_in_use", slot_columns(slots))
        return {(row["job_class"], row["concurrency_key"]) for row in rows}

    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        params = {"job_class": slot[0], "concurrency_key": slot[1]}
        return [to_request(row) for row in self._fetch("requests_for_slot", params)]

    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        params = {"job_class": slot[0], "concurrency_key": slot[1]}
        return [to_process(row) for row in self._fetch("processes_for_slot", params)]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        with database_errors(self._url):
            return insert_requests(self._conn, requests)

    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> None:
        self._fetch("link_retry", {"result_uuid": result_uuid, "request_uuid": request_uuid})

    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        if not occurrences:
            return set()
        params = {"entry_key": [k for k, _ in occurrences], "run_at": [t for _, t in occurrences]}
        rows = self._fetch("reserve_occurrences", params)
        return {(row["entry_key"], row["run_at"]) for row in rows}

    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        params = {"entry_key": key, "run_at": run_at, "request_uuid": request_uuid}
        self._fetch("link_occurrence", params)


@contextlib.contextmanager
def joined_transaction(conn: Connection) -> Iterator[None]:
    """Run inside the caller's transaction without ever committing it."""
    if conn.autocommit or conn.info.transaction_status == TransactionStatus.INTRANS:
        # In a transaction this is a savepoint: a failed enqueue undoes only itself.
        # In autocommit there is no caller's transaction to join: the enqueue is
        # its own transaction, as each of the caller's statements would be.
        with conn.transaction():
            yield
    else:
        # Idle and not autocommit: the first statement opens the caller's implicit
        # transaction, which the caller commits or rolls back.
        yield


# -- notifications -------------------------------------------------------------------


class PostgresListener(Listener):
    """A daemon thread relaying ``NOTIFY errands_jobs`` to ``on_wake``.

    It uses its own connection (LISTEN needs a dedicated session, and a pooled
    connection would be handed to others). ``ready`` is set once it listens.
    """

    #: the named statement that subscribes to the channel
    query = "listen"

    def __init__(self, url: str, on_wake: Callable[[], None]) -> None:
        self.url = url
        self.on_wake = on_wake
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errands-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5 * LISTEN_POLL_SECONDS + 1)

    def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    execute(conn, self.query)
                    self.ready.set()
                    if connected_before:
                        self._wake()  # notifications sent while disconnected are lost
                    connected_before = True
                    backoff = 0.1
                    self._relay(conn)
            except psycopg.Error:
                self.ready.clear()
                logger.warning(
                    "notification listener lost its connection; reconnecting",
                    extra={"retry_in": backoff},
                    exc_info=True,
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, LISTEN_MAX_BACKOFF_SECONDS)

    def _relay(self, conn: Connection) -> None:
        while not self._stopping.is_set():
            for notify in conn.notifies(timeout=LISTEN_POLL_SECONDS):
                self._notified(notify.payload)

    def _notified(self, payload: str) -> None:
        self._wake()

    def _wake(self) -> None:
        try:
            self.on_wake()
        except Exception:
            logger.exception("on_wake callback failed")


class PostgresResultListener(PostgresListener):
    """Relays ``NOTIFY errands_results`` (sent by a trigger on ``errands_result``) to
    ``on_results`` with the request uuids of the new results; None means "unknown"
    (a batch too large for the payload, or a reconnect that may have missed some)."""

    query = "listen_results"

    def __init__(self, url: str, on_results: Callable[[frozenset[uuid.UUID] | None], None]) -> None:
        self.on_results = on_results
        super().__init__(url, lambda: on_results(None))

    def _notified(self, payload: str) -> None:
        try:
            uuids = frozenset(uuid.UUID(part) for part in payload.split(",")) if payload else None
            self.on_results(uuids)
        except Exception:
            logger.exception("on_results callback failed")


# -- the backend -----------------------------------------------------------------------


class PostgresBackend(Backend):
    """errands' tables in a PostgreSQL database (``postgresql://`` or ``postgres://`` URL)."""

    name = "postgresql"

    def __init__(self, url: str, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.url = url
        self.max_connections = max_connections
        self._pool: ConnectionPool[Connection] | None = None
        self._pool_lock = threading.Lock()
        self._worker_pool: ConnectionPool[Connection] | None = None
        self._vacuum_lock = threading.Lock()
        self._claimed_since_vacuum = 0
        self._listeners: list[PostgresListener] = []

    # -- connections ------------------------------------------------------------------
    def _open_pool(self) -> ConnectionPool[Connection]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = self._new_pool(
                    "errands", self.max_connections, configure=poison.bound_json
                )
            return self._pool

    def _open_worker_pool(self) -> ConnectionPool[Connection]:
        with self._pool_lock:
            if self._worker_pool is None:
                self._worker_pool = self._new_pool(
                    "errands-worker", WORKER_CONNECTIONS, configure=_configure_worker_connection
                )
            return self._worker_pool

    def _new_pool(
        self,
        name: str,
        size: int,
        configure: Callable[[Connection], None] | None = None,
    ) -> ConnectionPool[Connection]:
        # Autocommit: most operations are one statement, which is then its own
        # transaction without a BEGIN/COMMIT round trip. Operations of several
        # statements open a transaction explicitly.
        pool: ConnectionPool[Connection] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True},
            configure=configure,
            timeout=CONNECTION_WAIT_SECONDS,
            name=name,
            open=False,
        )
        pool.open(wait=False)
        return pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        with database_errors(self.url), self._open_pool().connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _worker_connection(self) -> Iterator[Connection]:
        """A connection for the worker's claims and writes (see _configure_worker_connection)."""
        with database_errors(self.url), self._open_worker_pool().connection() as conn:
            yield conn

    def _fetch(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        with self._connection() as conn:
            return fetch(conn, name, params)

    def _execute(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        with self._connection() as conn:
            return execute(conn, name, params)

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
        """The files of migrations/postgres by version; each records its own version."""
        return load_migrations("postgres")

    def migrate(self) -> list[int]:
        applied = []
        with self._connection() as conn, conn.transaction():
            execute(conn, "lock_migrations")
            execute(conn, "create_schema_table")
            current = fetch(conn, "recorded_schema_version")[0]["version"] or 0
            for version, sql in self._migrations():
                if version > current:
                    conn.execute(sql)  # each migration records its own version
                    applied.append(version)
        return applied

    def migration_sql(self) -> str:
        blocks = [queries()["create_schema_table"]] + [sql for _, sql in self._migrations()]
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
        with joined_transaction(connection):
            yield PostgresEnqueueTransaction(connection, self.url)

    def insert_requests(self, *, requests: Sequence[NewRequest]) -> list[JobRequest]:
        # Autocommit: an INSERT is its own transaction; COPY and its notify need one.
        with self._connection() as conn:
            if len(requests) < COPY_THRESHOLD:
                return insert_requests(conn, requests)
            with conn.transaction():
                return insert_requests(conn, requests)

    # -- worker lifecycle -------------------------------------------------------------
    def register_worker(self, *, worker: WorkerInfo) -> None:
        self._execute(
            "register_worker",
            {
                "worker_id": worker.worker_id,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "queues": list(worker.queues),
            },
        )

    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        return self._execute("heartbeat", {"worker_id": worker_id}) > 0

    def deregister_worker(self, *, worker_id: uuid.UUID) -> None:
        self._execute("deregister_worker", {"worker_id": worker_id})

    def claim(self, *, worker_id: uuid.UUID, queues: Sequence[str], limit: int) -> list[JobProcess]:
        if limit <= 0:
            return []
        params = {"worker_id": worker_id, "queues": list(queues), "limit": limit}
        salvaged = poison.salvage_mark()
        with self._worker_connection() as conn:
            claimed = fetch_tuples(conn, "claim", params)
            self._vacuum_queue_if_due(conn, claimed=len(claimed), limit=limit)
        # RETURNING keeps no order: sort by priority, then due time, then age.
        claimed.sort(key=lambda row: (-row[9], row[18], row[2]))
        # The worker connection's times are in UTC already (_configure_worker_connection).
        processes = [build_job_process(*row) for row in claimed]
        if poison.salvage_mark() != salvaged:  # some row could not be loaded
            return poison.fail_invalid(self, processes)
        return processes

    def _vacuum_queue_if_due(self, conn: Connection, *, claimed: int, limit: int) -> None:
        """Vacuum the requests table once this process claimed enough of it.

        A claim walks the claim index from its start, where the requests claimed
        since the last vacuum still have (dead) entries: without a vacuum, every
        claim of a long drain reads more of them, and small claims read them most
        often. Autovacuum looks at a table at most once a minute, far too late at
        thousands of jobs a second, so the worker vacuums it itself.

        When: a vacuum reads the table's indexes whole (cost ~ table size S), and
        between two vacuums the claims of size c read on average half of the V
        requests claimed since the last (V/c claims): the cost per job,
        V/2c + S/V, is least for V = sqrt(2cS), with at least ``VACUUM_AFTER_CLAIMS``.
        """
        with self._vacuum_lock:
            self._claimed_since_vacuum += claimed
            if self._claimed_since_vacuum < VACUUM_AFTER_CLAIMS:
                return
            size = fetch(conn, "queue_size_estimate")[0]["size"]
            if self._claimed_since_vacuum < math.sqrt(2 * limit * size):
                return
            self._claimed_since_vacuum = 0
        try:
            execute(conn, "vacuum_queue")
        except psycopg.Error:
            logger.warning("could not vacuum errands_request", exc_info=True)

    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        if started:
            params = {
                "uuid": uuid_array([u for u, _ in started]),
                "started_at": timestamptz_array([t for _, t in started]),
            }
            with self._worker_connection() as conn:
                execute(conn, "mark_started", params)

    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        if not outcomes:
            return []
        unique = _first_per_process(outcomes)
        returned = sorted(s.value for s in ABORTED_STATUSES) if aborted_only else None
        params = {**outcome_columns(unique), "returned_statuses": returned}
        with self._worker_connection() as conn:
            rows = fetch_tuples(conn, "complete_many", params)
        by_process = {row[1]: _result_from_tuple(row) for row in rows}
        return [by_process[o.process_uuid] for o in unique if o.process_uuid in by_process]

    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        if not process_uuids:
            return 0
        rows = self._fetch("release", {"process_uuids": list(process_uuids)})
        released: int = rows[0]["released"]
        return released

    def rescue_stale_workers(self, *, timeout_seconds: float) -> list[JobResult]:
        timeout = {"timeout_seconds": float(timeout_seconds)}
        lost: list[JobResult] = []
        for row in self._fetch("stale_workers", timeout):
            lost += self._rescue_worker(row["worker_id"], timeout_seconds)
        for row in self._fetch("orphaned_workers", timeout):
            lost += self._rescue_orphans(row["worker_id"], timeout_seconds)
        return lost

    def _rescue_worker(self, worker_id: uuid.UUID, timeout_seconds: float) -> list[JobResult]:
        """Convert a silent worker's processes, if this rescuer wins its heartbeat row."""
        params = {"worker_id": worker_id, "timeout_seconds": float(timeout_seconds)}
        with self._connection() as conn, conn.transaction():
            if not fetch(conn, "delete_stale_worker", params):
                return []  # a peer rescued it, or it beat again
            ending = lifecycle.lost_with_worker(worker_id, timeout_seconds)
            return self._lose(conn, worker_id, None, ending)

    def _rescue_orphans(self, worker_id: uuid.UUID, timeout_seconds: float) -> list[JobResult]:
        """Convert processes whose worker has no heartbeat row at all."""
        params = {"worker_id": worker_id, "timeout_seconds": float(timeout_seconds)}
        with self._connection() as conn, conn.transaction():
            uuids = [row["uuid"] for row in fetch(conn, "lock_orphaned_processes", params)]
            if not uuids:
                return []
            ending = lifecycle.lost_without_heartbeat_row(worker_id)
            return self._lose(conn, worker_id, uuids, ending)

    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        if not process_uuids:
            return []
        ending = lifecycle.orphaned(worker_id)
        with self._connection() as conn:
            return self._lose(conn, worker_id, process_uuids, ending)

    @staticmethod
    def _lose(
        conn: Connection,
        worker_id: uuid.UUID,
        process_uuids: Sequence[uuid.UUID] | None,
        ending: lifecycle.Ending,
    ) -> list[JobResult]:
        params = {
            "worker_id": worker_id,
            "process_uuids": None if process_uuids is None else list(process_uuids),
            **ending_params(ending),
        }
        return [to_result(row) for row in fetch(conn, "lose_processes", params)]

    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]:
        return [to_process(r) for r in self._fetch("processes_of_worker", {"worker_id": worker_id})]

    def prune_results(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        params = {"older_than_seconds": float(older_than_seconds), "batch_size": batch_size}
        return self._execute("prune_results", params)

    def listen(self, *, on_wake: Callable[[], None]) -> PostgresListener:
        listener = PostgresListener(self.url, on_wake)
        self._listeners.append(listener)
        return listener

    def listen_results(
        self, *, on_results: Callable[[frozenset[uuid.UUID] | None], None]
    ) -> PostgresListener:
        listener = PostgresResultListener(self.url, on_results)
        self._listeners.append(listener)
        # Results written before LISTEN took effect would wake nobody; callers
        # look at the database after this returns, so wait until it listens.
        listener.ready.wait(CONNECTION_WAIT_SECONDS)
        return listener

    # -- schedules and queues ------------------------------------------------------------
    def last_occurrences(self) -> dict[str, Occurrence]:
        rows = self._fetch("last_occurrences")
        return {
            row["entry_key"]: Occurrence(
                entry_key=row["entry_key"],
                run_at=row["run_at"].astimezone(datetime.UTC),
                request_uuid=row["request_uuid"],
            )
            for row in rows
        }

    def withdraw_occurrences(self, *, keep: Sequence[str], trim_before: datetime.datetime) -> int:
        with self._connection() as conn, conn.transaction():
            withdrawn = len(fetch(conn, "withdraw_occurrences", {"keep": list(keep)}))
            execute(conn, "trim_occurrences", {"trim_before": trim_before})
        return withdrawn

    def pause_queue(self, *, queue: str) -> bool:
        return self._execute("pause_queue", {"queue": queue}) > 0

    def resume_queue(self, *, queue: str) -> bool:
        return self._execute("resume_queue", {"queue": queue}) > 0

    def paused_queues(self) -> list[str]:
        return [row["queue"] for row in self._fetch("paused_queues")]

    # -- inspecting and operating -------------------------------------------------------
    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        params = {**selection_params(selection), "limit": limit}
        return [to_request(row) for row in self._fetch("next_requests", params)]

    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        params = {"uuid": uuid}
        with self._connection() as conn:
            if rows := fetch(conn, "get_request", params):
                return to_request(rows[0])
            if rows := fetch(conn, "get_process", params):
                return to_process(rows[0])
            if rows := fetch(conn, "get_result", params):
                return to_result(rows[0])
        return None

    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        params = {"uuid": uuid, **ending_params(lifecycle.CANCELLED_PENDING)}
        rows = self._fetch("cancel_pending", params)
        return to_result(rows[0]) if rows else None

    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        return self._execute("flag_to_stop", {"uuid": uuid}) > 0

    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        return [row["uuid"] for row in self._fetch("flagged_to_stop", {"worker_id": worker_id})]

    def purge(self, *, older_than_seconds: float | None = None) -> int:
        if older_than_seconds is None:
            return self._execute("purge_all_results")
        age = {"older_than_seconds": float(older_than_seconds)}
        return self._execute("purge_results_before", age)

    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        rows = self._fetch("list_workers", {"timeout_seconds": float(timeout_seconds)})
        return [to_worker(row) for row in rows]

    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats:
        timeout = {"timeout_seconds": float(heartbeat_timeout_seconds)}
        with self._connection() as conn:
            queue_rows = fetch(conn, "queue_stats")
            status_rows = fetch(conn, "results_by_status")
            (workers,) = fetch(conn, "worker_counts", timeout)
        return Stats(
            queues=[QueueStats(**row) for row in queue_rows],
            results_by_status={row["status"]: row["count"] for row in status_rows},
            workers_active=workers["active"],
            workers_stale=workers["stale"],
        )

    # -- pages, counts and bulk operations ----------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        return [QueueStats(**row) for row in self._fetch("queue_stats")]

    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        rows = self._fetch(page_query("requests", page), page_params(selection, page))
        return [to_request(row) for row in rows]

    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        rows = self._fetch(page_query("processes", page), page_params(selection, page))
        return [to_process(row) for row in rows]

    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        rows = self._fetch(page_query("results", page), page_params(selection, page))
        return [to_result(row) for row in rows]

    def count(self, *, kind: Kind, selection: Selection) -> int:
        rows = self._fetch(COUNT_QUERIES[kind], selection_params(selection))
        counted: int = rows[0]["count"]
        return counted

    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        params = {"since": since, "bucket_seconds": int(bucket_seconds)}
        return [
            Throughput(
                bucket_start=row["bucket_start"].astimezone(datetime.UTC),
                status=Status(row["status"]),
                count=row["count"],
                retried=row["retried"],
            )
            for row in self._fetch("throughput", params)
        ]

    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        rows = self._fetch("retried_by", {"request_uuid": request_uuid})
        return to_result(rows[0]) if rows else None

    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        params = {
            **selection_params(selection),
            "limit": limit,
            **ending_params(lifecycle.CANCELLED_PENDING),
        }
        return [to_result(row) for row in self._fetch("cancel_pending_selected", params)]

    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        return self._execute("flag_to_stop_selected", selection_params(selection))

    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        if kind is Kind.PROCESS:
            raise ValueError("processes cannot be deleted: cancel them instead")
        params = {**selection_params(selection), "limit": limit}
        return self._execute(DELETE_QUERIES[kind], params)

    # -- the dashboard's secret and sessions ---------------------------------------------
    def shared_secret(self, *, name: str, candidate: str) -> str:
        with self._connection() as conn:
            execute(conn, "insert_secret", {"name": name, "value": candidate})
            value: str = fetch(conn, "secret", {"name": name})[0]["value"]
            return value

    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        self._execute("start_dashboard_session", {"id": session_id, "lifetime": lifetime_seconds})

    def dashboard_session_active(self, *, session_id: str) -> bool:
        return bool(self._fetch("dashboard_session_active", {"id": session_id})[0]["active"])

    def end_dashboard_session(self, *, session_id: str) -> None:
        self._execute("end_dashboard_session", {"id": session_id})

    def now(self) -> datetime.datetime:
        now: datetime.datetime = self._fetch("now")[0]["now"]
        return now.astimezone(datetime.UTC)
