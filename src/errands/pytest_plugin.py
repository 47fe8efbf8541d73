"""pytest fixtures for applications that use errands (installed with errands, as
the pytest plugin ``errands``; nothing here runs unless a test asks for a fixture).

* ``errands_capture``: enqueued jobs are recorded, not run (:func:`errands.testing.capture`).
* ``errands_immediate``: jobs run in-process when enqueued (:func:`errands.testing.immediate`).
* ``errands_database``: the URL of a fresh, migrated errands database that errands
  uses for the test: an SQLite file, or a new PostgreSQL database when a server is
  given with ``--errands-database-url``, the ini option ``errands_database_url`` or
  the environment variable ``ERRANDS_TEST_DATABASE_URL``.
* ``errands_backend``: the backend of that database.
* ``errands_worker``: a real worker (spawned child processes and all) serving that
  database from a background thread; ``errands_worker.wait_for(request)`` returns
  a job's final result.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported in the fixtures: loading the plugin must stay cheap and safe
    from errands.backends import Backend
    from errands.testing import Recorder
    from errands.testing.databases import BackgroundWorker, TestDatabases

ENV_SERVER_URL = "ERRANDS_TEST_DATABASE_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    help_text = (
        "PostgreSQL server on which errands_database creates a throwaway database per "
        f"test, e.g. postgresql://postgres@localhost/postgres (default: ${ENV_SERVER_URL}, "
        "else an SQLite file per test)"
    )
    parser.getgroup("errands").addoption(
        "--errands-database-url", dest="errands_database_url", default=None, help=help_text
    )
    parser.addini("errands_database_url", help_text, default="")


@pytest.fixture
def errands_capture() -> Iterator[Recorder]:
    """Enqueued jobs are recorded, not run; ``drain()`` runs them."""
    from errands import testing

    with testing.capture() as recorder:
        yield recorder


@pytest.fixture
def errands_immediate() -> Iterator[Recorder]:
    """Jobs run in-process as soon as they are enqueued; results are recorded."""
    from errands import testing

    with testing.immediate() as recorder:
        yield recorder


@pytest.fixture(scope="session")
def errands_test_databases(pytestconfig: pytest.Config) -> Iterator[TestDatabases]:
    """The source of ``errands_database`` (one PostgreSQL template per session)."""
    from errands.testing.databases import TestDatabases

    server = (
        pytestconfig.getoption("errands_database_url")
        or pytestconfig.getini("errands_database_url")
        or os.environ.get(ENV_SERVER_URL)
        or None
    )
    databases = TestDatabases(server)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def errands_backend(errands_test_databases: TestDatabases, tmp_path: Path) -> Iterator[Backend]:
    """The backend of a fresh errands database, used by errands for this test."""
    from errands import api
    from errands.backends import open_backend

    with errands_test_databases.database(tmp_path) as url:
        backend = open_backend(url)
        try:
            with api.use_backend(backend):
                yield backend
        finally:
            backend.close()


@pytest.fixture
def errands_database(errands_backend: Backend) -> str:
    """The URL of a fresh, migrated errands database, used by errands for this test."""
    return errands_backend.url


@pytest.fixture
def errands_worker(errands_backend: Backend) -> Iterator[BackgroundWorker]:
    """A real worker on the test's errands database, stopped (gracefully) after the test."""
    from errands.testing.databases import BackgroundWorker, worker_settings

    worker = BackgroundWorker(errands_backend, worker_settings(errands_backend.url), queues=[])
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
