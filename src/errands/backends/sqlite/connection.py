"""Connections to an SQLite file: its path, WAL mode, explicit transactions and
savepoints, and the session that runs named statements with the transaction's clock."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from errands.backends.sql.files import load_migrations, load_queries
from errands.errors import ConfigurationError

logger = logging.getLogger("errands")


QUERIES = load_queries("sqlite")
URL_PREFIX = "sqlite:///"
#: Seconds a connection waits for another connection's lock before "database is locked".
BUSY_TIMEOUT = 10.0

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


# -- transactions --------------------------------------------------------------------


class SqliteSession:
    """One open transaction: its cursor and the database clock read at its start.

    Every query receives ``:now`` from here, so all rows one transaction writes
    carry the same time.
    """

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        cursor.row_factory = sqlite3.Row
        self.cursor = cursor
        self.now: float = cursor.execute(QUERIES["now"]).fetchone()[0]

    def execute(
        self, query: str, params: Mapping[str, Any] | None = None, /, **more: Any
    ) -> sqlite3.Cursor:
        return self.cursor.execute(QUERIES[query], {"now": self.now, **(params or {}), **more})

    def rows(
        self, query: str, params: Mapping[str, Any] | None = None, /, **more: Any
    ) -> list[sqlite3.Row]:
        return self.execute(query, params, **more).fetchall()

    def run(self, query: str, params: Mapping[str, Any] | None = None, /, **more: Any) -> int:
        """Run the named statement; how many rows it touched."""
        rowcount: int = self.execute(query, params, **more).rowcount
        return rowcount

    def executemany(self, query: str, params: Sequence[dict[str, Any]]) -> None:
        self.cursor.executemany(QUERIES[query], [{"now": self.now, **p} for p in params])


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection, begin: str) -> Iterator[SqliteSession]:
    """``begin`` ("begin_write" or "begin_read") ... COMMIT, or ROLLBACK on any error."""
    connection.execute(QUERIES[begin])
    try:
        yield SqliteSession(connection.cursor())
        connection.execute(QUERIES["commit"])
    except BaseException:
        if connection.in_transaction:
            connection.execute(QUERIES["rollback"])
        raise


@contextlib.contextmanager
def savepoint(connection: sqlite3.Connection) -> Iterator[SqliteSession]:
    """A savepoint inside the caller's transaction: undone alone on error, never committed."""
    cursor = connection.cursor()
    cursor.execute(QUERIES["savepoint"])
    try:
        yield SqliteSession(cursor)
    except BaseException:
        cursor.execute(QUERIES["rollback_to_savepoint"])
        cursor.execute(QUERIES["release_savepoint"])
        raise
    cursor.execute(QUERIES["release_savepoint"])


def enable_wal(connection: sqlite3.Connection) -> None:
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


def data_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute(QUERIES["data_version"]).fetchone()[0]
    return version


def autocommits(connection: sqlite3.Connection) -> bool:
    """True when statements on ``connection`` outside BEGIN commit on their own."""
    return connection.isolation_level is None or getattr(connection, "autocommit", None) is True


def statements(script: str) -> Iterator[str]:
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


def migration_scripts() -> dict[int, str]:
    """The files of migrations/sqlite by version (migrate records each version)."""
    return dict(load_migrations("sqlite"))
