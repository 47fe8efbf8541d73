"""Shared fixtures: real databases, isolated per test.

PostgreSQL: one database is created for the session on the server named by
``ERRANDS_TEST_DATABASE_URL`` (default: the local server), migrated once, emptied
after every test and dropped at the end. SQLite: a fresh file per test. Both come
from :class:`errands.testing.databases.TestDatabases`, and the in-process worker
of ``run_worker`` is its ``BackgroundWorker`` with ``worker_settings``: the suite
runs on the helpers errands ships for applications' tests.

The ``backend`` fixture is parametrised over both, so every behavioural test
runs on each; mark a test ``postgres_only`` where a capability is PostgreSQL's alone,
``sqlite_only`` where a case can only arise on SQLite, and ``sql_only`` where a module
that adds the in-memory backend ("memory") to ``db_url`` has a test it cannot run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import errands
from errands import api, settings
from errands.backends import Backend, open_backend
from errands.backends.base import TABLES
from errands.testing.databases import (
    BackgroundWorker,
    TestDatabases,
    with_database,
    worker_settings,
)
from errands.worker import Worker

SERVER_URL = os.environ.get(
    "ERRANDS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


#: ``server_url`` pointing at database ``dbname`` instead.
database_url = with_database


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    databases = TestDatabases(SERVER_URL)
    try:
        with databases.database(tmp_path_factory.getbasetemp()) as url:
            yield url
    finally:
        databases.close()


def empty_postgres(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind; errands is configured to use it."""
    if request.param == "sqlite":
        with TestDatabases(None).database(tmp_path) as url:
            yield from _configured(url)
    else:
        url = request.getfixturevalue("pg_url")
        try:
            yield from _configured(url)
        finally:
            empty_postgres(url)


def _configured(url: str) -> Iterator[str]:
    errands.configure(database_url=url)
    try:
        yield url
    finally:
        errands.configure(database_url=None)


@pytest.fixture
def backend(db_url: str) -> Iterator[Backend]:
    b = open_backend(db_url)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def pg_backend(pg_url: str) -> Iterator[Backend]:
    """PostgreSQL only, for tests of PostgreSQL-specific behaviour."""
    errands.configure(database_url=pg_url)
    b = open_backend(pg_url)
    try:
        yield b
    finally:
        b.close()
        errands.configure(database_url=None)
        empty_postgres(pg_url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of one database only are not generated for the other at all (rather than
    skipped): a green run has no skips to hide."""
    keep = []
    for item in items:
        database = getattr(getattr(item, "callspec", None), "params", {}).get("db_url")
        excluded = ONLY_MARKERS_EXCLUDING.get(database, ())
        if any(item.get_closest_marker(only) for only in excluded):
            config.hook.pytest_deselected(items=[item])
        else:
            keep.append(item)
    items[:] = keep


#: Per ``db_url`` parameter, the markers whose tests it does not run. "memory" is
#: the in-memory backend, which modules may add to their own ``db_url`` parameters.
ONLY_MARKERS_EXCLUDING = {
    "sqlite": ("postgres_only",),
    "postgresql": ("sqlite_only",),
    "memory": ("postgres_only", "sqlite_only", "sql_only"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-minutes",
        type=float,
        default=2.0,
        help="minutes of random faults in tests/test_soak.py (default 2, as in CI)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres_only: the capability exists only on PostgreSQL")
    config.addinivalue_line("markers", "sqlite_only: the case can only arise on SQLite")
    config.addinivalue_line(
        "markers",
        "sql_only: needs a real database (SQL access, LISTEN, a second connection or"
        " process, migrations); not generated for the in-memory backend",
    )
    config.addinivalue_line(
        "markers",
        "slow: runs real workers or waits for real time (0.3 s or more on a 2-core machine);"
        " scripts/test --fast leaves it out",
    )


# -- running a worker in-process ---------------------------------------------------

SUPPORT_DIR = Path(__file__).parent / "support"
if str(SUPPORT_DIR) not in sys.path:
    sys.path.insert(0, str(SUPPORT_DIR))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(SUPPORT_DIR), os.environ.get("PYTHONPATH", "")) if p
)

from worker_process import WorkerProcess  # noqa: E402  (in SUPPORT_DIR)


def worker_config(url: str, **overrides: Any) -> settings.Settings:
    """Settings for a test worker: 2 children, fast polling, the sample jobs imported
    (whatever the environment or a test's ``errands.configure`` says of these)."""
    values: dict[str, Any] = {
        "import_modules": ("sample_jobs",),
        "worker_max_processes": 2,
        "poll_interval": 0.05,
        "heartbeat_interval": 1,
        "heartbeat_timeout": 5,
        **overrides,
    }
    return worker_settings(url, base=settings.load(environ={}), **values)


class WorkerRunner:
    """Runs a real Worker (with real child processes) until a condition holds, then
    stops it gracefully (``errands.testing``'s ``BackgroundWorker``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(
        self,
        until: Callable[[], bool],
        *,
        queues: Sequence[str] = (),
        timeout: float = 30,
        **overrides: Any,
    ) -> Worker:
        config = worker_config(self.url, **overrides)
        running = BackgroundWorker(api.backend(), config, queues=list(queues)).start()
        try:
            # A crash of the worker's loop ends the wait; stop() raises it.
            wait_for(lambda: running.error is not None or until(), timeout=timeout)
        finally:
            running.stop(timeout=120)
        return running.worker


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 30, step: Callable[[], None] | None = None
) -> None:
    """Run ``step`` (or sleep briefly) until ``condition()`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        if step is not None:
            step()
        else:
            time.sleep(0.01)


@pytest.fixture
def run_worker(db_url: str) -> WorkerRunner:
    return WorkerRunner(db_url)


# -- running a worker in a subprocess ---------------------------------------------------

SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def spawn_worker(db_url: str, tmp_path: Path) -> Iterator[SpawnWorker]:
    """Starts ``worker_main.py`` workers on the test's database (``WorkerProcess.main``:
    ``spawn_worker(queues=..., env=..., **settings)``), each logging to
    ``tmp_path/worker<n>.log``; whatever is left of them is killed after the test."""
    started: list[WorkerProcess] = []

    def spawn(**options: Any) -> WorkerProcess:
        log = tmp_path / f"worker{len(started)}.log"
        worker = WorkerProcess.main(db_url, log, **options)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.close()


@pytest.fixture
def cli_state_restored() -> Iterator[None]:
    """The CLI sets process-wide settings and logging; undo both after the test."""
    logger = logging.getLogger("errands")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        settings.reset()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database without errands' tables, dropped afterwards."""
    name = f"errands_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(SERVER_URL, name)
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))
