"""The benchmark's own databases: created fresh for a run, emptied between
measurements, filled with history on demand, and dropped at the end.

PostgreSQL: a new database on the given server. SQLite: a new file in the
directory of the given one. Both also measure the baseline: what one client
committing single-row transactions achieves on this machine.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from errands.backends import open_backend
from errands.backends.base import TABLES
from errands.backends.sqlite import database_path


@dataclass(frozen=True)
class DrainWindow:
    """When the results of a drain were written: count, first and last write (unix s)."""

    count: int
    first_count: int  # results written in the very first batch (no duration to divide)
    first: float
    last: float

    @property
    def rate(self) -> float:
        elapsed = self.last - self.first
        return (self.count - self.first_count) / elapsed if elapsed > 0 else float("nan")


class BenchDatabase(abc.ABC):
    """A database the benchmark owns for the length of the run."""

    kind: str
    url: str

    @abc.abstractmethod
    def create(self) -> None: ...

    @abc.abstractmethod
    def drop(self) -> None: ...

    @abc.abstractmethod
    def empty(self) -> None:
        """Delete every errands row (between measurements)."""

    @abc.abstractmethod
    def remaining(self) -> int:
        """Due requests plus processes: jobs a worker still has to finish."""

    @abc.abstractmethod
    def started_at(self, request_uuid: uuid.UUID) -> float | None:
        """When the job of this request started (unix s), once its result exists."""

    @abc.abstractmethod
    def forget_recent_results(self) -> None:
        """Delete the results of the last hour (a drain's), keeping the older history."""

    @abc.abstractmethod
    def result_count(self) -> int: ...

    @abc.abstractmethod
    def drain_window(self) -> DrainWindow: ...

    @abc.abstractmethod
    def fill_history(self, *, results: int, delayed: int, job_class: str) -> None:
        """Add old results and far-future requests, as a long-running installation has."""

    @abc.abstractmethod
    def settle(self) -> None:
        """Vacuum and analyse, so that every measurement starts from the same state."""

    @abc.abstractmethod
    def baseline_tps(self, seconds: float) -> float:
        """Single-client transactions per second, each inserting and deleting one row."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def migrate(self) -> None:
        backend = open_backend(self.url)
        try:
            backend.migrate()
        finally:
            backend.close()


# -- PostgreSQL ----------------------------------------------------------------------


class PostgresBenchDatabase(BenchDatabase):
    kind = "postgresql"

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"errands_bench_{uuid.uuid4().hex[:10]}"
        parts = urlsplit(server_url)
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))

    def _admin(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(statement)

    def create(self) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.migrate()

    def drop(self) -> None:
        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
        )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            yield conn

    def _value(self, query: str) -> Any:
        with self._connect() as conn:
            row = conn.execute(query).fetchone()
            assert row is not None
            return row[0]

    def empty(self) -> None:
        tables = sql.SQL(", ").join(map(sql.Identifier, TABLES))
        with self._connect() as conn:
            conn.execute(sql.SQL("TRUNCATE {}").format(tables))

    def remaining(self) -> int:
        return int(
            self._value(
                "SELECT (SELECT count(*) FROM errands_request WHERE start_at <= now())"
                " + (SELECT count(*) FROM errands_process)"
            )
        )

    def started_at(self, request_uuid: uuid.UUID) -> float | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM started_at)::float8 FROM errands_result"
                " WHERE request_uuid = %s",
                (request_uuid,),
            ).fetchone()
        return None if row is None else float(row[0])

    def forget_recent_results(self) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM errands_result WHERE created_at > now() - interval '1 hour'")

    def result_count(self) -> int:
        return int(self._value("SELECT count(*) FROM errands_result"))

    def drain_window(self) -> DrainWindow:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM min(created_at))::float8,"
                " extract(epoch FROM max(created_at))::float8 FROM errands_result"
                " WHERE status = 'SUCCESSFUL' AND created_at > now() - interval '1 hour'"
            ).fetchone()
            assert row is not None
            first = conn.execute(
                "SELECT count(*) FROM errands_result WHERE created_at = to_timestamp(%s)",
                (row[1],),
            ).fetchone()
        assert first is not None
        return DrainWindow(count=row[0], first_count=first[0], first=row[1], last=row[2])

    def fill_history(self, *, results: int, delayed: int, job_class: str) -> None:
        # Results ended within the last six days stay inside the default retention
        # (seven days), so the worker's pruning does not delete them mid-measurement.
        with self._connect() as conn:
            conn.execute(
                """
                INSERT INTO errands_result (
                    uuid, process_uuid, request_uuid, requested_at, started_at, ended_at,
                    created_at, status, worker_id, job_class, parameters, queue, priority,
                    retries, retry_attempt
                )
                SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), t, t, t, t,
                    (ARRAY['SUCCESSFUL', 'SUCCESSFUL', 'SUCCESSFUL', 'ERRORED'])[1 + i %% 4],
                    gen_random_uuid(), %(job_class)s, '{}', 'default', 0, 0, 0
                FROM generate_series(1, %(results)s) AS i,
                    LATERAL (
                        SELECT now() - interval '1 hour' - (i %% 518400) * interval '1 second' AS t
                    ) AS ts
                """,
                {"results": results, "job_class": job_class},
            )
            conn.execute(
                """
                INSERT INTO errands_request (uuid, start_at, job_class, parameters, queue)
                SELECT gen_random_uuid(), now() + interval '1 day' + i * interval '1 second',
                    %(job_class)s, '{}', 'default'
                FROM generate_series(1, %(delayed)s) AS i
                """,
                {"delayed": delayed, "job_class": job_class},
            )

    def settle(self) -> None:
        with self._connect() as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")

    def baseline_tps(self, seconds: float) -> float:
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_baseline"
                " (id bigserial PRIMARY KEY, payload text NOT NULL)"
            )
            conn.autocommit = False
            done = 0
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            while time.perf_counter() < deadline:
                row = conn.execute(
                    "INSERT INTO bench_baseline (payload) VALUES ('x') RETURNING id"
                ).fetchone()
                assert row is not None
                conn.execute("DELETE FROM bench_baseline WHERE id = %s", (row[0],))
                conn.commit()
                done += 1
            elapsed = time.perf_counter() - start
            conn.autocommit = True
            conn.execute("DROP TABLE bench_baseline")
        return done / elapsed

    def describe(self) -> dict[str, Any]:
        settings = (
            "server_version",
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "wal_level",
            "max_wal_size",
        )
        with self._connect() as conn:
            return {
                name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
                for name in settings
            }


# -- SQLite ------------------------------------------------------------------------------


class SqliteBenchDatabase(BenchDatabase):
    kind = "sqlite"

    def __init__(self, url: str) -> None:
        given = database_path(url)
        directory = given if given.is_dir() else given.parent
        self.path = directory / f"errands_bench_{uuid.uuid4().hex[:10]}.db"
        self.url = f"sqlite:///{self.path}"  # an absolute path: sqlite:////dir/name.db

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            yield conn
        finally:
            conn.close()

    def _value(self, query: str) -> Any:
        with self._connect() as conn:
            return conn.execute(query).fetchone()[0]

    def create(self) -> None:
        self.migrate()

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def empty(self) -> None:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            for table in TABLES:
                conn.execute(f"DELETE FROM {table}")  # names are constants above
            conn.execute("COMMIT")

    def remaining(self) -> int:
        return int(
            self._value(
                "SELECT (SELECT count(*) FROM errands_request"
                "  WHERE start_at <= (julianday('now') - 2440587.5) * 86400.0)"
                " + (SELECT count(*) FROM errands_process)"
            )
        )

    def started_at(self, request_uuid: uuid.UUID) -> float | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT started_at FROM errands_result WHERE request_uuid = ?",
                (str(request_uuid),),
            ).fetchone()
        return None if row is None else float(row[0])

    def forget_recent_results(self) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM errands_result WHERE created_at > ?", (time.time() - 3600,))

    def result_count(self) -> int:
        return int(self._value("SELECT count(*) FROM errands_result"))

    def drain_window(self) -> DrainWindow:
        with self._connect() as conn:
            count, first, last = conn.execute(
                "SELECT count(*), min(created_at), max(created_at) FROM errands_result"
                " WHERE status = 'SUCCESSFUL' AND created_at > ?",
                (time.time() - 3600,),
            ).fetchone()
            (first_count,) = conn.execute(
                "SELECT count(*) FROM errands_result WHERE created_at = ?", (first,)
            ).fetchone()
        return DrainWindow(count=count, first_count=first_count, first=first, last=last)

    def fill_history(self, *, results: int, delayed: int, job_class: str) -> None:
        now = time.time()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO errands_result (uuid, process_uuid, request_uuid, requested_at,"
                " started_at, ended_at, created_at, status, worker_id, job_class, parameters,"
                " queue) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}', 'default')",
                (
                    (
                        str(uuid.uuid4()),
                        str(uuid.uuid4()),
                        str(uuid.uuid4()),
                        *(now - 3600 - i % 518400,) * 4,
                        "ERRORED" if i % 4 == 0 else "SUCCESSFUL",
                        str(uuid.uuid4()),
                        job_class,
                    )
                    for i in range(results)
                ),
            )
            conn.executemany(
                "INSERT INTO errands_request (uuid, created_at, start_at, job_class,"
                " parameters, queue) VALUES (?, ?, ?, ?, '{}', 'default')",
                ((str(uuid.uuid4()), now, now + 86400 + i, job_class) for i in range(delayed)),
            )
            conn.execute("COMMIT")

    def settle(self) -> None:
        with self._connect() as conn:
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def baseline_tps(self, seconds: float) -> float:
        path = self.path.with_name(self.path.stem + "_baseline.db")
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # as the errands backend sets it
            conn.execute("CREATE TABLE baseline (id INTEGER PRIMARY KEY, payload TEXT)")
            done = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                conn.execute("BEGIN IMMEDIATE")
                row_id = conn.execute("INSERT INTO baseline (payload) VALUES ('x')").lastrowid
                conn.execute("DELETE FROM baseline WHERE id = ?", (row_id,))
                conn.execute("COMMIT")
                done += 1
            return done / (time.perf_counter() - start)
        finally:
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        return {"sqlite_version": sqlite3.sqlite_version, "journal_mode": "wal"}


def bench_database(url: str) -> BenchDatabase:
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBenchDatabase(url)
    if url.startswith("sqlite:"):
        return SqliteBenchDatabase(url)
    raise SystemExit(f"--database-url: expected postgresql://... or sqlite:///..., got {url!r}")
