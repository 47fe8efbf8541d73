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
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from errands import lifecycle
from errands.backends.base import (
    EnqueueTransaction,
    Listener,
    kept_results,
)
from errands.backends.sql import rows as poison
from errands.backends.sql.backend import SqlBackend
from errands.backends.sqlite import limited
from errands.backends.sqlite.codec import SqliteCodec, json_list, to_process, to_unix
from errands.backends.sqlite.connection import (
    BUSY_TIMEOUT,
    QUERIES,
    SqliteSession,
    autocommits,
    database_path,
    enable_wal,
    migration_scripts,
    savepoint,
    statements,
    transaction,
)
from errands.backends.sqlite.enqueue import SqliteEnqueueTransaction
from errands.backends.sqlite.limited import ClaimPlan
from errands.backends.sqlite.listener import DataVersionListener
from errands.backends.sqlite.rules import (
    cancel,
    complete,
    expire,
    fail_keyless_requests,
    lose,
    workflow_jobs,
)
from errands.backends.store import Claimed, ClaimRoom
from errands.errors import BackendError, ConfigurationError, SchemaOutOfDate
from errands.models import (
    JobResult,
    Outcome,
    Progress,
    Selection,
)

logger = logging.getLogger("errands")


# -- the backend --------------------------------------------------------------------------------


class SqliteBackend(SqlBackend):
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
        self.codec = SqliteCodec()

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
            enable_wal(connection)
            connection.execute(QUERIES["set_synchronous"])
            connection.execute(QUERIES["set_recursive_triggers"])
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
            with transaction(connection, "begin_read") as session:
                if not session.execute("schema_table_exists").fetchone()["found"]:
                    return None
                row = session.execute("recorded_schema_version").fetchone()
                version: int | None = row["version"]
                return version
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

    def _write(self) -> contextlib.AbstractContextManager[SqliteSession]:
        return transaction(self._ready(), "begin_write")

    def _read(self) -> contextlib.AbstractContextManager[SqliteSession]:
        return transaction(self._ready(), "begin_read")

    # The shared operations' sessions: one write lock covers one statement or several.
    _reading = _read
    _writing = _write
    _transaction = _write

    # -- schema -------------------------------------------------------------------
    def migrate(self) -> list[int]:
        connection = self._connection(create=True)
        applied = []
        # Two processes migrating at once queue on the write lock; the second
        # then finds the version the first recorded and applies nothing.
        with transaction(connection, "begin_write") as session:
            session.execute("create_schema_table")
            current = session.execute("recorded_schema_version").fetchone()["version"] or 0
            for version, script in migration_scripts().items():
                if version > current:
                    for statement in statements(script):
                        session.cursor.execute(statement)
                    session.execute("record_schema_version", version=version)
                    applied.append(version)
        self._schema_checked = True
        return applied

    def migration_sql(self) -> str:
        parts = [QUERIES["create_schema_table"]]
        for version, script in migration_scripts().items():
            parts.append(script)
            # The version is our own constant, never input.
            parts.append(QUERIES["record_schema_version"].replace(":version", str(version)) + ";")
        return "\n\n".join(parts) + "\n"

    def schema_version(self) -> int | None:
        if not self.path.exists():
            return None  # and do not create it: only migrate creates the file
        return self._read_schema_version(self._connection())

    def latest_schema_version(self) -> int:
        return max(migration_scripts())

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
            with savepoint(caller) as session:
                yield SqliteEnqueueTransaction(session)
        elif autocommits(caller):
            with transaction(caller, "begin_write") as session:
                yield SqliteEnqueueTransaction(session)
        else:
            caller.execute(QUERIES["begin_write"])
            with savepoint(caller) as session:
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
        plan = ClaimPlan.of(queues, room)
        # An idle worker claims every poll_interval: look without the write lock
        # first, so idle workers never queue behind (or delay) real writers, nor
        # do workers whose due jobs all wait on their limits.
        with self._read() as session:
            if not limited.due_requests(session, plan, 1) and not session.rows("expired_exist"):
                held, _ = limited.admission(session, plan, limit, writing=False)
                if not held.taken:
                    return limited.claimed([], held)
        with self._write() as session:
            # First: the due requests read next are then none expired.
            expired = tuple(result.queue for result in expire(session))
            moved = self._move(session, limited.due_requests(session, plan, limit), worker_id)
            chosen = None
            if len(moved) < limit:
                plan.took([row["queue"] for row in moved])
                chosen, keys = limited.admission(session, plan, limit - len(moved))
                taken = self._move(session, [str(ref) for ref in chosen.taken], worker_id)
                limited.record_starts(session, chosen, keys)
                # Limited jobs first: each holds a slot of its keys until it ends.
                moved[:0] = taken
            in_workflows = workflow_jobs(session, moved)
        salvaged = poison.salvage_mark()
        processes = [to_process(row) for row in moved]
        if poison.salvage_mark() != salvaged:  # some row could not be loaded
            processes = poison.fail_invalid(self, processes)
        claimed = limited.claimed(processes, chosen, expired)
        claimed.in_workflows = in_workflows
        return claimed

    @staticmethod
    def _move(session: SqliteSession, due: list[str], worker_id: uuid.UUID) -> list[sqlite3.Row]:
        """Move the ``due`` requests to processes of the worker; their rows in that order."""
        if not due:
            return []
        claim_map: dict[Any, str] = limited.process_uuids(due)
        try:
            claims = json.dumps(claim_map) if None not in claim_map else ""
        except TypeError:  # a blob key
            claims = ""
        if not claims:  # a uuid that is NULL or a blob: see take_keyless_requests
            claims = json.dumps(fail_keyless_requests(session, claim_map))
        moved = session.rows("claim_move_to_process", claims=claims, worker_id=str(worker_id))
        session.execute("claim_delete_requests", claims=claims)
        claim_order = {request_uuid: position for position, request_uuid in enumerate(due)}
        moved.sort(key=lambda row: claim_order[row["request_uuid"]])
        return moved

    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        if not started:
            return
        with self._write() as session:
            session.executemany(
                "mark_started",
                [
                    {"uuid": str(process_uuid), "started_at": to_unix(at)}
                    for process_uuid, at in started
                ],
            )

    def record_progress(self, *, progress: Sequence[tuple[uuid.UUID, Progress]]) -> None:
        if progress:
            rows = [
                {"uuid": str(key), "done": done, "total": total, "message": message}
                for key, (done, total, message) in progress
            ]
            with self._write() as session:
                session.executemany("record_progress", rows)

    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        if not outcomes:
            return []
        with self._write() as session:
            deleted = session.rows(
                "delete_processes", uuids=json_list([o.process_uuid for o in outcomes])
            )
            processes = {row["uuid"]: row for row in deleted}
            results = []
            gone = []
            for outcome in outcomes:
                process = processes.pop(str(outcome.process_uuid), None)
                if process is None:
                    gone.append(outcome)  # rescued or cancelled meanwhile: it has its result
                    continue
                result = complete(session, process, outcome)
                if result is not None:
                    results.append(result)
        if gone:  # kept on their LOST results (see SqlBackend.record_late_outcomes)
            self.record_late_outcomes(gone)
        return kept_results(results, aborted_only=aborted_only)

    @contextlib.contextmanager
    def completing(
        self, *, outcome: Outcome
    ) -> Iterator[tuple[JobResult | None, EnqueueTransaction]]:
        with self._write() as session:
            deleted = session.rows("delete_processes", uuids=json_list([outcome.process_uuid]))
            written = dataclasses.replace(outcome, requeue=None)
            result = complete(session, deleted[0], written) if deleted else None
            yield result, SqliteEnqueueTransaction(session)

    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        if not process_uuids:
            return 0
        uuids = json_list(process_uuids)
        with self._write() as session:
            session.execute("release_to_requests", uuids=uuids)
            released: int = session.execute("release_delete_processes", uuids=uuids).rowcount
        return released

    def _rescue_stale_worker(self, worker_id: str, timeout_seconds: float) -> list[JobResult]:
        """One transaction: take the worker's row, then turn its processes into LOST results."""
        with self._write() as session:
            taken = session.run(
                "delete_stale_worker", worker_id=worker_id, timeout_seconds=timeout_seconds
            )
            if taken == 0:
                return []  # another rescuer took it, or the worker beat meanwhile
            processes = session.rows("delete_processes_of_worker", worker_id=worker_id)
            return lose(session, processes, lifecycle.lost_with_worker(worker_id, timeout_seconds))

    def _rescue_vanished_worker(self, worker_id: str, timeout_seconds: float) -> list[JobResult]:
        """Processes, claimed over ``timeout_seconds`` ago, of a worker with no heartbeat row."""
        with self._write() as session:
            processes = session.rows(
                "delete_orphaned_processes_of_worker",
                worker_id=worker_id,
                timeout_seconds=timeout_seconds,
            )
            return lose(session, processes, lifecycle.lost_without_heartbeat_row(worker_id))

    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        if not process_uuids:
            return []
        with self._write() as session:
            processes = session.rows(
                "delete_listed_processes_of_worker",
                worker_id=str(worker_id),
                uuids=json_list(process_uuids),
            )
            return lose(session, processes, lifecycle.orphaned(worker_id))

    # -- wake-ups -----------------------------------------------------------------------
    def listen(self, *, on_wake: Callable[[], None]) -> Listener:
        self._ready()
        listener = DataVersionListener(connect=self._open, on_wake=on_wake)
        with self._lock:
            self._listeners.append(listener)
        return listener

    # -- cancel (pending requests) ------------------------------------------------------
    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        with self._write() as session:
            request = session.execute("delete_request", uuid=str(uuid)).fetchone()
            if request is None:
                return None
            return cancel(session, request)

    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        with self._write() as session:
            requests = session.rows(
                "delete_selected_requests_returning", self.codec.selection(selection), limit=limit
            )
            results = [cancel(session, request) for request in requests]
        return [result for result in results if result is not None]

    def now(self) -> datetime.datetime:
        # Outside a transaction, and before the schema is checked: the clock needs no tables.
        unix: float = self._connection().execute(QUERIES["now"]).fetchone()[0]
        return self.codec.moment(unix)

    def close(self) -> None:
        with self._lock:
            connections, self._opened = self._opened, []
            listeners, self._listeners = self._listeners, []
            self._local = threading.local()
        for listener in listeners:
            listener.close()
        for connection in connections:
            connection.close()
