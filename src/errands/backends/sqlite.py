"""The SQLite backend: errands in one file, for development, tests and small deployments.

All SQL lives in ``sqlite.sql`` (which also explains the locking) and, for the
schema, in ``migrations/sqlite/``. This module manages connections and
transactions and converts rows to ``errands.models``:

* one connection per thread (SQLite connections must not be shared between
  threads), opened lazily, in WAL mode, with a busy timeout;
* ``isolation_level=None``: the sqlite3 module never opens transactions behind
  our back; every write runs in an explicit ``BEGIN IMMEDIATE ... COMMIT``;
* timestamps are stored as REAL unix seconds (UTC) and the database clock is
  the only clock used for due times and heartbeat staleness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import uuid4

from errands import lifecycle, serialization
from errands.backends import rows as poison
from errands.backends.base import (
    Backend,
    ConcurrencySlot,
    EnqueueTransaction,
    Listener,
    kept_results,
)
from errands.backends.sqlfile import load_migrations, load_queries
from errands.errors import BackendError, ConfigurationError, SchemaOutOfDate
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    NewRequest,
    Occurrence,
    Outcome,
    PageSpec,
    QueueStats,
    Requeue,
    Selection,
    Stats,
    Status,
    Throughput,
    WorkerInfo,
)

logger = logging.getLogger("errands")

#: The dashboard's count and delete statements, by table.
COUNT_QUERIES = {
    Kind.REQUEST: "count_requests",
    Kind.PROCESS: "count_processes",
    Kind.RESULT: "count_results",
}
DELETE_QUERIES = {Kind.REQUEST: "delete_requests", Kind.RESULT: "delete_results"}

QUERIES = load_queries("sqlite.sql")
URL_PREFIX = "sqlite:///"
#: Seconds a connection waits for another connection's lock before "database is locked".
BUSY_TIMEOUT = 10.0
#: Seconds between two looks at ``PRAGMA data_version`` by a listener.
LISTEN_INTERVAL = 0.015
#: Seconds a listener waits before reconnecting after a database error.
LISTEN_RETRY_INTERVAL = 1.0

#: The columns a request, its process and its result share, copied along the way.
_JOB_COLUMNS = (
    "job_class",
    "parameters",
    "queue",
    "priority",
    "retries",
    "retry_attempt",
    "concurrency_key",
    "timeout",
    "source",
    "trace_id",
    "span_id",
)
_TIMESTAMP_COLUMNS = frozenset(
    {"created_at", "start_at", "requested_at", "started_at", "ended_at", "last_heartbeat_at"}
)
_UUID_COLUMNS = frozenset(
    {"uuid", "request_uuid", "process_uuid", "worker_id", "retry_request_uuid"}
)
_JSON_COLUMNS = frozenset({"parameters", "return_value", "queues"})
_BOOL_COLUMNS = frozenset({"cancel_requested", "stale"})
_STORED_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("priority", "retries", "retry_attempt", "pid"), (int,)),
    **dict.fromkeys(("job_class", "queue", "concurrency_key", "source"), (str,)),
    **dict.fromkeys(("trace_id", "span_id", "error_type", "error", "traceback"), (str,)),
    "timeout": (float, int),
}


# -- URLs and values ----------------------------------------------------------------


def database_path(url: str) -> Path:
    """The absolute file path named by ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

    Relative paths are resolved now, against the working directory, so that a
    later ``chdir`` does not switch databases.
    """
    if not url.startswith(URL_PREFIX) or url == URL_PREFIX:
        raise ConfigurationError(
            f"database_url: {url!r} does not name an SQLite file; "
            "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    raw = url.removeprefix(URL_PREFIX)
    if raw == ":memory:":
        raise ConfigurationError(
            f"database_url: {url!r}: an in-memory database cannot be shared by workers "
            "and the code that enqueues; name a file instead"
        )
    return Path(os.path.abspath(raw))


def _unix(moment: datetime.datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _moment(unix: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _column_value(name: str, value: Any) -> Any:
    """A stored value as the models hold it."""
    if value is None:
        if name == "uuid":  # a TEXT PRIMARY KEY may hold NULL in SQLite
            raise TypeError("NULL stored as the row's uuid")
        return None
    if name in _TIMESTAMP_COLUMNS:
        return _moment(value)
    if name in _UUID_COLUMNS:
        return uuid.UUID(value)
    if name in _JSON_COLUMNS:
        loaded = poison.loads(value)
        if name == "queues" and type(loaded) is not list:
            raise TypeError(f"a worker's queues are a JSON {serialization.json_kind(loaded)}")
        return loaded
    if name in _BOOL_COLUMNS:
        return bool(value)
    if name == "status":
        return Status(value)
    # SQLite stores any type in any column: one a row got by raw SQL is refused here.
    if type(value) not in _STORED_TYPES.get(name, (type(value),)):
        raise TypeError(f"{type(value).__name__} {value!r:.60} stored in {name}")
    return value


def _model_values(row: sqlite3.Row, model: type[Any]) -> dict[str, Any]:
    """The row's columns that are fields of ``model`` (extra columns are internal);
    a placeholder for each value that cannot be loaded (see rows.py)."""
    names = {field.name for field in dataclasses.fields(model)}
    # (iterating a Row yields its values, so .keys() is needed)
    try:
        return {key: _column_value(key, row[key]) for key in row.keys() if key in names}  # noqa: SIM118
    except Exception:
        items = [(key, row[key]) for key in row.keys() if key in names]  # noqa: SIM118
        return poison.salvage_values(items, _column_value)


def _request(row: sqlite3.Row) -> JobRequest:
    return JobRequest(**_model_values(row, JobRequest))


def _process(row: sqlite3.Row) -> JobProcess:
    return JobProcess(**_model_values(row, JobProcess))


def _result(row: sqlite3.Row) -> JobResult:
    return JobResult(**_model_values(row, JobResult))


def _worker(row: sqlite3.Row) -> WorkerInfo:
    return WorkerInfo(**_model_values(row, WorkerInfo))


def _json_list(values: Sequence[Any]) -> str:
    return json.dumps([str(value) for value in values])


def _request_json(request: NewRequest) -> dict[str, Any]:
    """One request as an element of the ``insert_requests`` JSON array."""
    return {
        "uuid": str(request.uuid),
        "start_at": _unix(request.start_at),
        "delay_seconds": request.delay_seconds,
        "job_class": request.job_class,
        "parameters": json.dumps(request.parameters),
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


# -- transactions --------------------------------------------------------------------


class _Session:
    """One open transaction: its cursor and the database clock read at its start.

    Every query receives ``:now`` from here, so all rows one transaction writes
    carry the same time.
    """

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        cursor.row_factory = sqlite3.Row
        self.cursor = cursor
        self.now: float = cursor.execute(QUERIES["now"]).fetchone()[0]

    def execute(self, query: str, **params: Any) -> sqlite3.Cursor:
        return self.cursor.execute(QUERIES[query], {"now": self.now, **params})

    def rows(self, query: str, **params: Any) -> list[sqlite3.Row]:
        return self.execute(query, **params).fetchall()

    def executemany(self, query: str, params: Sequence[dict[str, Any]]) -> None:
        self.cursor.executemany(QUERIES[query], [{"now": self.now, **p} for p in params])


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection, begin: str) -> Iterator[_Session]:
    """``begin`` ("begin_write" or "begin_read") ... COMMIT, or ROLLBACK on any error."""
    connection.execute(QUERIES[begin])
    try:
        yield _Session(connection.cursor())
        connection.execute(QUERIES["commit"])
    except BaseException:
        if connection.in_transaction:
            connection.execute(QUERIES["rollback"])
        raise


@contextlib.contextmanager
def _savepoint(connection: sqlite3.Connection) -> Iterator[_Session]:
    """A savepoint inside the caller's transaction: undone alone on error, never committed."""
    cursor = connection.cursor()
    cursor.execute(QUERIES["savepoint"])
    try:
        yield _Session(cursor)
    except BaseException:
        cursor.execute(QUERIES["rollback_to_savepoint"])
        cursor.execute(QUERIES["release_savepoint"])
        raise
    cursor.execute(QUERIES["release_savepoint"])


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Put the file in WAL mode, waiting while other connections block the switch."""
    if connection.execute(QUERIES["journal_mode"]).fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            connection.execute(QUERIES["enable_wal"])
            return
        except sqlite3.OperationalError as exc:
            locked = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not locked or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _data_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute(QUERIES["data_version"]).fetchone()[0]
    return version


def _autocommits(connection: sqlite3.Connection) -> bool:
    """True when statements on ``connection`` outside BEGIN commit on their own."""
    return connection.isolation_level is None or getattr(connection, "autocommit", None) is True


def _statements(script: str) -> Iterator[str]:
    """The statements of a script, one at a time.

    (``executescript`` would COMMIT the migration's open transaction first.)
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()  # a last statement without ";" (or a trailing comment)


def _migrations() -> dict[int, str]:
    """The files of migrations/sqlite by version (migrate records each version)."""
    return dict(load_migrations("sqlite"))


# -- writing results -------------------------------------------------------------------


def _insert_result(session: _Session, job: sqlite3.Row, **columns: Any) -> JobResult | None:
    """Write one result carrying ``job``'s fields; None if its process already has one."""
    params: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "started_at": None,
        "error_type": "",
        "error": "",
        "traceback": "",
        "return_value": None,
        "retry_request_uuid": None,
        **{name: job[name] for name in _JOB_COLUMNS},
        "start_at": job["start_at"],  # a process's or a request's due time
        **columns,
    }
    row = session.execute("insert_result", **params).fetchone()
    return None if row is None else _result(row)


def _fail_keyless_requests(session: _Session, claims: dict[Any, str]) -> dict[str, str]:
    """ERRORED results for the requests whose uuid is NULL or a blob; ``claims``
    without them."""
    for request in session.rows("take_keyless_requests"):
        _insert_result(
            session,
            request,
            process_uuid=str(uuid4()),
            request_uuid=str(uuid4()),  # the result's must be text
            requested_at=request["created_at"],
            worker_id=None,
            status=str(Status.ERRORED),
            ended_at=session.now,
            error_type=poison.INVALID_JOB_ROW,
            error=f"the stored job cannot be run: its uuid is {request['uuid']!r:.60}",
        )
    return {key: value for key, value in claims.items() if isinstance(key, str)}


def _process_identity(process: sqlite3.Row) -> dict[str, Any]:
    """Result columns that come from the process it records."""
    return {
        # A NULL key (raw SQL can write one) would fail the insert, and with it the
        # rescue of every other process of the worker.
        "process_uuid": process["uuid"] or str(uuid4()),
        "request_uuid": process["request_uuid"],
        "requested_at": process["requested_at"],
        "worker_id": process["worker_id"],
        "started_at": process["started_at"],
    }


def _requeue(session: _Session, process: sqlite3.Row, requeue: Requeue) -> str:
    """Enqueue the process's job again, due ``delay_seconds`` after now; its new uuid."""
    request_uuid = str(uuid.uuid4())
    job = {name: process[name] for name in _JOB_COLUMNS}
    # A row's count (raw SQL may set it to the largest integer SQLite holds) must
    # not overflow, failing the write of the whole batch.
    job["retry_attempt"] = min(requeue.retry_attempt, poison.LARGEST_INT64)
    session.execute(
        "insert_request",
        uuid=request_uuid,
        start_at=session.now + requeue.delay_seconds,
        **job,
    )
    return request_uuid


def _complete(session: _Session, process: sqlite3.Row, outcome: Outcome) -> JobResult | None:
    retry_uuid = _requeue(session, process, outcome.requeue) if outcome.requeue else None
    columns = _process_identity(process)
    if outcome.started_at is not None:  # else the stamp mark_started wrote, if any
        columns["started_at"] = _unix(outcome.started_at)
    return _insert_result(
        session,
        process,
        **columns,
        status=str(outcome.status),
        ended_at=_unix(outcome.ended_at),
        error_type=outcome.error_type,
        error=outcome.error,
        traceback=outcome.traceback,
        return_value=_json_or_null(outcome.return_value),
        retry_request_uuid=retry_uuid,
    )


def _lose(
    session: _Session, processes: Sequence[sqlite3.Row], ending: lifecycle.Ending
) -> list[JobResult]:
    """LOST results for processes just deleted (no requeue: the caller decides retries)."""
    results = []
    for process in processes:
        result = _insert_result(
            session,
            process,
            **_process_identity(process),
            status=str(ending.status),
            ended_at=session.now,
            error_type=ending.error_type,
            error=ending.error,
        )
        if result is not None:
            results.append(result)
    return results


def _cancelled(session: _Session, request: sqlite3.Row) -> JobResult | None:
    """The CANCELLED result of a request just deleted (it never had a process)."""
    return _insert_result(
        session,
        request,
        process_uuid=str(uuid4()),
        request_uuid=request["uuid"],
        requested_at=request["created_at"],
        worker_id=None,
        status=str(lifecycle.CANCELLED_PENDING.status),
        ended_at=session.now,
        error_type=lifecycle.CANCELLED_PENDING.error_type,
        error=lifecycle.CANCELLED_PENDING.error,
    )


# -- enqueueing ------------------------------------------------------------------------------


class SqliteEnqueueTransaction(EnqueueTransaction):
    """Enqueue queries inside one open write transaction (or savepoint)."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        # Nothing to do: the transaction already holds SQLite's single write lock
        # (BEGIN IMMEDIATE), so every enqueue is serialised with every other one.
        # When joining a caller's transaction that has not written yet, the first
        # insert upgrades it to a writer, and SQLite refuses (SQLITE_BUSY) the
        # upgrade if another writer committed since it read, so no slot is taken twice.
        return None

    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        if not slots:
            return set()
        rows = self._session.rows("slots_in_use", slots=json.dumps([list(s) for s in slots]))
        return {(row["job_class"], row["concurrency_key"]) for row in rows}

    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        rows = self._session.rows("requests_for_slot", job_class=slot[0], concurrency_key=slot[1])
        return [_request(row) for row in rows]

    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        rows = self._session.rows("processes_for_slot", job_class=slot[0], concurrency_key=slot[1])
        return [_process(row) for row in rows]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        # One statement for the whole batch: the rows travel as one JSON parameter,
        # so the bound-variable limit never applies and no chunking is needed.
        if not requests:
            return []
        payload = json.dumps([_request_json(request) for request in requests])
        inserted = {
            row["uuid"]: row for row in self._session.rows("insert_requests", requests=payload)
        }
        # RETURNING gives rows in no guaranteed order: put them back in input order.
        return [_request(inserted[str(request.uuid)]) for request in requests]

    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> None:
        self._session.execute(
            "link_retry", result_uuid=str(result_uuid), request_uuid=str(request_uuid)
        )

    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        if not occurrences:
            return set()
        wanted = {(key, _unix(run_at)): (key, run_at) for key, run_at in occurrences}
        payload = json.dumps([list(pair) for pair in wanted])
        rows = self._session.rows("reserve_occurrences", occurrences=payload)
        return {wanted[(row["entry_key"], row["run_at"])] for row in rows}

    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        self._session.execute(
            "link_occurrence",
            entry_key=key,
            run_at=_unix(run_at),
            request_uuid=str(request_uuid),
        )


# -- listening ---------------------------------------------------------------------------------


class DataVersionListener(Listener):
    """Wakes a worker when another connection commits, by polling ``PRAGMA data_version``.

    SQLite has no notifications. ``data_version`` changes whenever another
    connection (in any process) commits to the file, and reading it touches no
    table, so polling it every few milliseconds finds new jobs fast while an idle
    queue costs next to nothing. Not every commit means new due work, and delayed
    jobs fall due without any commit: the worker also polls the queue every
    ``poll_interval``, which covers both.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], sqlite3.Connection],
        on_wake: Callable[[], None],
        interval: float = LISTEN_INTERVAL,
    ) -> None:
        self._connect = connect
        self._on_wake = on_wake
        self._interval = interval
        self._stopped = threading.Event()
        # Opened and read here: a bad database fails listen() itself, and a commit
        # made just after listen() returns is measured against this baseline.
        connection = connect()
        baseline = _data_version(connection)
        self._thread = threading.Thread(
            target=self._run,
            args=(connection, baseline),
            name="errands-sqlite-listener",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self, connection: sqlite3.Connection | None, last_version: int | None) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if connection is None:
                    connection = self._connect()
                version = _data_version(connection)
            except Exception:
                logger.exception("sqlite listener cannot read the database; retrying")
                if connection is not None:
                    connection.close()
                connection, last_version = None, None
                self._stopped.wait(LISTEN_RETRY_INTERVAL)
                continue
            # Versions of different connections are not comparable: after a
            # reconnect (last_version None) wake once for what may have been missed.
            if version != last_version:
                self._wake()
            last_version = version
        if connection is not None:
            connection.close()

    def _wake(self) -> None:
        try:
            self._on_wake()
        except Exception:
            logger.exception("sqlite listener: on_wake failed")


# -- the backend --------------------------------------------------------------------------------


class SqliteBackend(Backend):
    """errands' tables in one SQLite file, shared by every thread and process using it."""

    name = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = database_path(url)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._listeners: list[Listener] = []
        self._pid = os.getpid()
        self._schema_checked = False

    # -- connections --------------------------------------------------------------
    def _open(self, *, create: bool = False) -> sqlite3.Connection:
        """A new connection, in WAL mode; ``create`` makes the file if it is missing."""
        self._check_directory()
        if not create and not self.path.exists():
            raise SchemaOutOfDate(
                f"SQLite database {self.path} does not exist; run `errands migrate` to create it"
            )
        mode = "rwc" if create else "rw"
        try:
            connection = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode={mode}",
                uri=True,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                # Each connection is used only by the thread that opened it
                # (threading.local); the check is off so close() may close them all.
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            connection.row_factory = sqlite3.Row
            _enable_wal(connection)
            connection.execute(QUERIES["set_synchronous"])
        except sqlite3.Error as exc:
            connection.close()
            raise self._open_error(exc) from exc
        return connection

    def _check_directory(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise BackendError(
                f"cannot open SQLite database {self.path}: directory {directory} does not exist"
            )
        # SQLite creates the -wal and -shm files beside the database.
        if not os.access(directory, os.W_OK | os.X_OK):
            raise BackendError(
                f"cannot open SQLite database {self.path}: directory {directory} is not "
                "writable (SQLite creates its -wal and -shm files there)"
            )

    def _open_error(self, exc: sqlite3.Error) -> BackendError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            return BackendError(f"{self.path} is not an SQLite database ({exc})")
        return BackendError(f"cannot use SQLite database {self.path}: {exc}")

    def _connection(self, *, create: bool = False) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        self._forget_connections_after_fork()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._open(create=create)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _forget_connections_after_fork(self) -> None:
        # A connection must not be used (nor closed) in a forked child: the parent
        # still owns its locks. The child opens its own.
        if os.getpid() != self._pid:
            with self._lock:
                self._pid = os.getpid()
                self._local = threading.local()
                self._opened = []
                self._listeners = []

    def _ready(self) -> sqlite3.Connection:
        """This thread's connection to a database whose schema is up to date."""
        connection = self._connection()
        if not self._schema_checked:
            self._check_schema(connection)
            self._schema_checked = True
        return connection

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        version = self._read_schema_version(connection)
        latest = self.latest_schema_version()
        if version is None:
            raise SchemaOutOfDate(
                f"{self.path} is not an errands database (its errands tables are missing); "
                "run `errands migrate`"
            )
        if version < latest:
            raise SchemaOutOfDate(
                f"{self.path} has errands schema version {version}, this errands needs "
                f"{latest}; run `errands migrate`"
            )
        if version > latest:
            raise BackendError(
                f"{self.path} has errands schema version {version}, newer than this "
                f"errands knows ({latest}); upgrade errands"
            )

    def _read_schema_version(self, connection: sqlite3.Connection) -> int | None:
        try:
            with _transaction(connection, "begin_read") as session:
                if not session.execute("schema_table_exists").fetchone()["found"]:
                    return None
                row = session.execute("recorded_schema_version").fetchone()
                version: int | None = row["version"]
                return version
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

    def _write(self) -> contextlib.AbstractContextManager[_Session]:
        return _transaction(self._ready(), "begin_write")

    def _read(self) -> contextlib.AbstractContextManager[_Session]:
        return _transaction(self._ready(), "begin_read")

    # -- schema -------------------------------------------------------------------
    def migrate(self) -> list[int]:
        connection = self._connection(create=True)
        applied = []
        # Two processes migrating at once queue on the write lock; the second
        # then finds the version the first recorded and applies nothing.
        with _transaction(connection, "begin_write") as session:
            session.execute("create_schema_table")
            current = session.execute("recorded_schema_version").fetchone()["version"] or 0
            for version, script in _migrations().items():
                if version > current:
                    for statement in _statements(script):
                        session.cursor.execute(statement)
                    session.execute("record_schema_version", version=version)
                    applied.append(version)
        self._schema_checked = True
        return applied

    def migration_sql(self) -> str:
        parts = [QUERIES["create_schema_table"]]
        for version, script in _migrations().items():
            parts.append(script)
            # The version is our own constant, never input.
            parts.append(QUERIES["record_schema_version"].replace(":version", str(version)) + ";")
        return "\n\n".join(parts) + "\n"

    def schema_version(self) -> int | None:
        if not self.path.exists():
            return None  # and do not create it: only migrate creates the file
        return self._read_schema_version(self._connection())

    def latest_schema_version(self) -> int:
        return max(_migrations())

    # -- enqueue --------------------------------------------------------------------
    @contextlib.contextmanager
    def enqueue_transaction(self, *, connection: Any | None = None) -> Iterator[EnqueueTransaction]:
        """Without ``connection``: a transaction of errands' own, committed on exit.

        With a caller's ``sqlite3.Connection`` to the same file, errands' inserts
        behave as the caller's own INSERT statements would on that connection:
        inside the caller's open transaction they join it (as a savepoint, never
        committed here); on a connection in autocommit mode (``isolation_level=None``)
        they commit at once; otherwise (the sqlite3 module's default) a transaction
        is begun and left open, exactly like the module's implicit BEGIN, for the
        caller to commit or roll back.
        """
        if connection is None:
            with self._write() as session:
                yield SqliteEnqueueTransaction(session)
            return
        caller = self._callers_connection(connection)
        if caller.in_transaction:
            with _savepoint(caller) as session:
                yield SqliteEnqueueTransaction(session)
        elif _autocommits(caller):
            with _transaction(caller, "begin_write") as session:
                yield SqliteEnqueueTransaction(session)
        else:
            caller.execute(QUERIES["begin_write"])
            with _savepoint(caller) as session:
                yield SqliteEnqueueTransaction(session)

    def _callers_connection(self, connection: Any) -> sqlite3.Connection:
        if not isinstance(connection, sqlite3.Connection):
            raise ConfigurationError(
                f"connection: expected an sqlite3.Connection to {self.path}, "
                f"got {type(connection).__name__}"
            )
        self._ready()
        cursor = connection.execute(QUERIES["database_file"])
        row = cursor.fetchone()
        cursor.close()
        if not row or os.path.realpath(row[0]) != os.path.realpath(self.path):
            raise ConfigurationError(
                f"connection: it is connected to {row[0] if row else 'nothing'!r}, "
                f"not to errands' database {self.path}"
            )
        return connection

    # -- worker lifecycle -------------------------------------------------------------
    def register_worker(self, *, worker: WorkerInfo) -> None:
        with self._write() as session:
            session.execute(
                "register_worker",
                worker_id=str(worker.worker_id),
                hostname=worker.hostname,
                pid=worker.pid,
                queues=json.dumps(list(worker.queues)),
            )

    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        with self._write() as session:
            return session.execute("heartbeat", worker_id=str(worker_id)).rowcount == 1

    def deregister_worker(self, *, worker_id: uuid.UUID) -> None:
        with self._write() as session:
            session.execute("deregister_worker", worker_id=str(worker_id))

    def claim(self, *, worker_id: uuid.UUID, queues: Sequence[str], limit: int) -> list[JobProcess]:
        if limit <= 0:
            return []
        # An idle worker claims every poll_interval: look without the write lock
        # first, so idle workers never queue behind (or delay) real writers.
        with self._read() as session:
            if not self._due_requests(session, queues, 1):
                return []
        with self._write() as session:
            due = self._due_requests(session, queues, limit)
            if not due:
                return []
            claim_map = {request_uuid: str(uuid.uuid4()) for request_uuid in due}
            try:
                claims = json.dumps(claim_map) if None not in claim_map else ""
            except TypeError:  # a blob key
                claims = ""
            if not claims:  # a uuid that is NULL or a blob: see take_keyless_requests
                claims = json.dumps(_fail_keyless_requests(session, claim_map))
            moved = session.rows("claim_move_to_process", claims=claims, worker_id=str(worker_id))
            session.execute("claim_delete_requests", claims=claims)
        claim_order = {request_uuid: position for position, request_uuid in enumerate(due)}
        moved.sort(key=lambda row: claim_order[row["request_uuid"]])
        salvaged = poison.salvage_mark()
        processes = [_process(row) for row in moved]
        if poison.salvage_mark() != salvaged:  # some row could not be loaded
            return poison.fail_invalid(self, processes)
        return processes

    @staticmethod
    def _due_requests(session: _Session, queues: Sequence[str], limit: int) -> list[str]:
        """Uuids of due requests in claim order."""
        if queues:
            rows = session.rows(
                "due_requests_of_queues", queues=json.dumps(list(queues)), limit=limit
            )
        else:
            rows = session.rows("due_requests_any_queue", limit=limit)
        return [row["uuid"] for row in rows]

    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        if not started:
            return
        with self._write() as session:
            session.executemany(
                "mark_started",
                [
                    {"uuid": str(process_uuid), "started_at": _unix(at)}
                    for process_uuid, at in started
                ],
            )

    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        if not outcomes:
            return []
        with self._write() as session:
            deleted = session.rows(
                "delete_processes", uuids=_json_list([o.process_uuid for o in outcomes])
            )
            processes = {row["uuid"]: row for row in deleted}
            results = []
            for outcome in outcomes:
                process = processes.pop(str(outcome.process_uuid), None)
                if process is None:
                    continue  # rescued or cancelled meanwhile: it already has its result
                result = _complete(session, process, outcome)
                if result is not None:
                    results.append(result)
        return kept_results(results, aborted_only=aborted_only)

    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        if not process_uuids:
            return 0
        uuids = _json_list(process_uuids)
        with self._write() as session:
            session.execute("release_to_requests", uuids=uuids)
            released: int = session.execute("release_delete_processes", uuids=uuids).rowcount
        return released

    def rescue_stale_workers(self, *, timeout_seconds: float) -> list[JobResult]:
        with self._read() as session:
            stale = [
                row["worker_id"] for row in session.rows("stale_workers", timeout=timeout_seconds)
            ]
            vanished = [
                row["worker_id"]
                for row in session.rows("orphaned_workers", timeout=timeout_seconds)
            ]
        lost: list[JobResult] = []
        for worker_id in stale:
            lost += self._rescue_stale_worker(worker_id, timeout_seconds)
        for worker_id in vanished:
            lost += self._rescue_vanished_worker(worker_id, timeout_seconds)
        return lost

    def _rescue_stale_worker(self, worker_id: str, timeout_seconds: float) -> list[JobResult]:
        """One transaction: take the worker's row, then turn its processes into LOST results."""
        with self._write() as session:
            taken = session.execute(
                "delete_stale_worker", worker_id=worker_id, timeout=timeout_seconds
            )
            if taken.rowcount == 0:
                return []  # another rescuer took it, or the worker beat meanwhile
            processes = session.rows("delete_processes_of_worker", worker_id=worker_id)
            return _lose(session, processes, lifecycle.lost_with_worker(worker_id, timeout_seconds))

    def _rescue_vanished_worker(self, worker_id: str, timeout_seconds: float) -> list[JobResult]:
        """Processes, claimed over ``timeout_seconds`` ago, of a worker with no heartbeat row."""
        with self._write() as session:
            processes = session.rows(
                "delete_orphaned_processes_of_worker", worker_id=worker_id, timeout=timeout_seconds
            )
            return _lose(session, processes, lifecycle.lost_without_heartbeat_row(worker_id))

    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        if not process_uuids:
            return []
        with self._write() as session:
            processes = session.rows(
                "delete_listed_processes_of_worker",
                worker_id=str(worker_id),
                uuids=_json_list(process_uuids),
            )
            return _lose(session, processes, lifecycle.orphaned(worker_id))

    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]:
        with self._read() as session:
            rows = session.rows("processes_of_worker", worker_id=str(worker_id))
        return [_process(row) for row in rows]

    def prune_results(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        with self._write() as session:
            cursor = session.execute(
                "prune_results", older_than=older_than_seconds, batch_size=batch_size
            )
            pruned: int = cursor.rowcount
        return pruned

    # -- schedules and queues ------------------------------------------------------------
    def last_occurrences(self) -> dict[str, Occurrence]:
        with self._read() as session:
            rows = session.rows("last_occurrences")
        return {
            row["entry_key"]: Occurrence(
                entry_key=row["entry_key"],
                run_at=_moment(row["run_at"]),
                request_uuid=uuid.UUID(row["request_uuid"]) if row["request_uuid"] else None,
            )
            for row in rows
        }

    def withdraw_occurrences(self, *, keep: Sequence[str], trim_before: datetime.datetime) -> int:
        keep_json = json.dumps(list(keep))
        with self._write() as session:
            withdrawn: int = session.execute(
                "withdraw_requests_of_forgotten_entries", keep=keep_json
            ).rowcount
            session.execute("forget_entries", keep=keep_json)
            session.execute("trim_occurrences", trim_before=_unix(trim_before))
        return withdrawn

    def pause_queue(self, *, queue: str) -> bool:
        with self._write() as session:
            return session.execute("pause_queue", queue=queue).rowcount == 1

    def resume_queue(self, *, queue: str) -> bool:
        with self._write() as session:
            return session.execute("resume_queue", queue=queue).rowcount == 1

    def paused_queues(self) -> list[str]:
        with self._read() as session:
            return [row["queue"] for row in session.rows("paused_queues")]

    def listen(self, *, on_wake: Callable[[], None]) -> Listener:
        self._ready()
        listener = DataVersionListener(connect=self._open, on_wake=on_wake)
        with self._lock:
            self._listeners.append(listener)
        return listener

    # -- inspecting and operating ----------------------------------------------------------
    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        with self._read() as session:
            rows = session.rows("next_requests", **_selection_params(selection), limit=limit)
        return [_request(row) for row in rows]

    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        # One read transaction: a job moving on meanwhile is still found once.
        key = str(uuid)
        with self._read() as session:
            row = session.execute("get_request", uuid=key).fetchone()
            if row is not None:
                return _request(row)
            row = session.execute("get_process", uuid=key).fetchone()
            if row is not None:
                return _process(row)
            row = session.execute("get_result", uuid=key).fetchone()
            return None if row is None else _result(row)

    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        with self._write() as session:
            request = session.execute("delete_request", uuid=str(uuid)).fetchone()
            if request is None:
                return None
            return _cancelled(session, request)

    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        with self._write() as session:
            flagged: int = session.execute("flag_to_stop", uuid=str(uuid)).rowcount
        return flagged > 0

    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        with self._read() as session:
            rows = session.rows("flagged_to_stop", worker_id=str(worker_id))
        return [uuid.UUID(row["uuid"]) for row in rows]

    def purge(self, *, older_than_seconds: float | None = None) -> int:
        with self._write() as session:
            if older_than_seconds is None:
                cursor = session.execute("purge_all_results")
            else:
                cursor = session.execute("purge_results_before", older_than=older_than_seconds)
            purged: int = cursor.rowcount
        return purged

    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        with self._read() as session:
            rows = session.rows("list_workers", timeout=timeout_seconds)
        return [_worker(row) for row in rows]

    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats:
        with self._read() as session:
            queues = [QueueStats(**dict(row)) for row in session.rows("queue_stats")]
            by_status = {row["status"]: row["count"] for row in session.rows("results_by_status")}
            counts = session.execute("worker_counts", timeout=heartbeat_timeout_seconds).fetchone()
        return Stats(
            queues=queues,
            results_by_status=by_status,
            workers_active=counts["active"],
            workers_stale=counts["stale"],
        )

    # -- pages, counts and bulk operations ----------------------------------------------
    def queue_stats(self) -> list[QueueStats]:
        with self._read() as session:
            return [QueueStats(**dict(row)) for row in session.rows("queue_stats")]

    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        return [_request(row) for row in self._page("requests", selection, page)]

    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        return [_process(row) for row in self._page("processes", selection, page)]

    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        return [_result(row) for row in self._page("results", selection, page)]

    def _page(self, name: str, selection: Selection, page: PageSpec) -> list[sqlite3.Row]:
        query = f"page_{name}_reversed" if page.reverse else f"page_{name}"
        with self._read() as session:
            return session.rows(query, **_page_params(selection, page))

    def count(self, *, kind: Kind, selection: Selection) -> int:
        with self._read() as session:
            row = session.execute(COUNT_QUERIES[kind], **_selection_params(selection)).fetchone()
        counted: int = row["count"]
        return counted

    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        with self._read() as session:
            rows = session.rows(
                "throughput", since=_unix(since), bucket_seconds=int(bucket_seconds)
            )
        return [
            Throughput(
                bucket_start=_moment(row["bucket_start"]),
                status=Status(row["status"]),
                count=row["count"],
                retried=row["retried"],
            )
            for row in rows
        ]

    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        with self._read() as session:
            row = session.execute("retried_by", request_uuid=str(request_uuid)).fetchone()
        return None if row is None else _result(row)

    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        with self._write() as session:
            requests = session.rows(
                "delete_selected_requests_returning", **_selection_params(selection), limit=limit
            )
            results = [_cancelled(session, request) for request in requests]
        return [result for result in results if result is not None]

    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        with self._write() as session:
            params = _selection_params(selection)
            flagged: int = session.execute("flag_to_stop_selected", **params).rowcount
        return flagged

    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        if kind is Kind.PROCESS:
            raise ValueError("processes cannot be deleted: cancel them instead")
        with self._write() as session:
            params = _selection_params(selection)
            deleted: int = session.execute(DELETE_QUERIES[kind], **params, limit=limit).rowcount
        return deleted

    # -- the dashboard's secret and sessions ---------------------------------------------
    def shared_secret(self, *, name: str, candidate: str) -> str:
        # One write transaction: a second process waits for the first to commit.
        with self._write() as session:
            session.execute("insert_secret", name=name, value=candidate)
            value: str = session.execute("secret", name=name).fetchone()["value"]
            return value

    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        with self._write() as session:
            session.execute("prune_dashboard_sessions")
            session.execute("start_dashboard_session", id=session_id, lifetime=lifetime_seconds)

    def dashboard_session_active(self, *, session_id: str) -> bool:
        with self._read() as session:
            return bool(session.execute("dashboard_session_active", id=session_id).fetchone()[0])

    def end_dashboard_session(self, *, session_id: str) -> None:
        with self._write() as session:
            session.execute("end_dashboard_session", id=session_id)

    def now(self) -> datetime.datetime:
        unix: float = self._connection().execute(QUERIES["now"]).fetchone()[0]
        return _moment(unix)

    def close(self) -> None:
        with self._lock:
            connections, self._opened = self._opened, []
            listeners, self._listeners = self._listeners, []
            self._local = threading.local()
        for listener in listeners:
            listener.close()
        for connection in connections:
            connection.close()


def _selection_params(selection: Selection) -> dict[str, Any]:
    """A Selection as query parameters; None (or empty) means "any"."""
    return {
        "queue": selection.queue or None,
        "job_class": selection.job_class or None,
        "concurrency_key": selection.concurrency_key or None,
        "uuid": None if selection.uuid is None else str(selection.uuid),
        "since": _unix(selection.since),
        "until": _unix(selection.until),
        "due": selection.due,
        "status": None if selection.status is None else str(selection.status),
        "retried": selection.retried,
    }


def _page_params(selection: Selection, page: PageSpec) -> dict[str, Any]:
    after = page.after
    return {
        **_selection_params(selection),
        "after_at": _unix(after.at) if after else None,
        "after_uuid": str(after.uuid) if after else None,
        "limit": page.limit,
    }
