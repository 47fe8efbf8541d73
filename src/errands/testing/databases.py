"""Throwaway errands databases and in-thread workers for tests of applications.

``TestDatabases`` hands out fresh, migrated databases: an SQLite file in a given
directory, or (when given a PostgreSQL server URL) a new database cloned from a
template that is migrated once. ``BackgroundWorker`` runs a real
:class:`~errands.worker.Worker` (with its spawned child processes) on a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.machinery
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit

from errands import api, registry, settings
from errands.backends import Backend, open_backend
from errands.models import JobRequest, JobResult

#: Worker settings that make a test worker react fast; used unless the app set them.
TEST_WORKER_DEFAULTS: dict[str, Any] = {
    "worker_max_processes": 2,
    "poll_interval": 0.05,
    "heartbeat_interval": 1.0,
}


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def with_database(server_url: str, dbname: str) -> str:
    """``server_url`` pointing at database ``dbname`` instead."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{dbname}"))


class TestDatabases:
    """Fresh errands databases: SQLite files, or PostgreSQL databases on ``server_url``.

    ``server_url`` names any database the user may connect to and run CREATE
    DATABASE from (``postgresql://postgres@localhost/postgres``, say); None means
    SQLite. Call :meth:`close` to drop the PostgreSQL template.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, server_url: str | None) -> None:
        self.server_url = server_url
        self._template: str | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def database(self, directory: Path) -> Iterator[str]:
        """The URL of a new migrated database, dropped (PostgreSQL) when the block ends."""
        if self.server_url is None:
            url = f"sqlite:///{directory / f'errands-{uuid.uuid4().hex[:8]}.db'}"
            _migrate(url)
            yield url
            return
        name = f"errands_test_{uuid.uuid4().hex[:12]}"
        self._run("CREATE DATABASE {} TEMPLATE {}", name, self._template_name())
        try:
            yield with_database(self.server_url, name)
        finally:
            self._drop(name)

    def _template_name(self) -> str:
        with self._lock:
            if self._template is None:
                name = f"errands_template_{uuid.uuid4().hex[:12]}"
                self._run("CREATE DATABASE {}", name)
                _migrate(with_database(self._server(), name))
                self._template = name
            return self._template

    def close(self) -> None:
        if self._template is not None:
            self._drop(self._template)
            self._template = None

    def _server(self) -> str:
        assert self.server_url is not None
        return self.server_url

    def _run(self, statement: LiteralString, *names: str) -> None:
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(*map(sql.Identifier, names))
        with psycopg.connect(self._server(), autocommit=True) as conn:
            conn.execute(query)

    def _drop(self, name: str) -> None:
        # FORCE: a test may leave a connection open (an app's own pool, say).
        self._run("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def _migrate(url: str) -> None:
    backend = open_backend(url)
    try:
        backend.migrate()
    finally:
        backend.close()


def worker_settings(
    url: str, *, base: settings.Settings | None = None, **overrides: Any
) -> settings.Settings:
    """The application's settings (or ``base``) with ``url`` and fast test defaults it
    did not set.

    Its ``import`` setting also names the modules of the jobs this test process
    registered (the jobs its tests enqueue): a worker loads no job class from a
    module outside that setting.
    """
    current = settings.current() if base is None else base
    values = {k: v for k, v in TEST_WORKER_DEFAULTS.items() if k not in current.sources}
    values["import_modules"] = _with_registered_modules(current.import_modules)
    values.update(overrides, database_url=url)
    return dataclasses.replace(current, **values)


def _with_registered_modules(modules: tuple[str, ...]) -> tuple[str, ...]:
    registered = {cls.__module__ for cls in registry.registered_jobs().values()}
    # errands' own job modules come with the worker or its integration; __main__ is
    # not a module a child process can import.
    extra = sorted(
        name
        for name in registered - set(modules)
        if name != "__main__" and not name.startswith("errands.") and _findable(name)
    )
    return (*modules, *extra)


def _findable(module: str) -> bool:
    """Whether a worker's child process could import ``module`` from ``sys.path``
    (a test may have registered jobs from a directory it no longer has on the path)."""
    top = module.partition(".")[0]
    return importlib.machinery.PathFinder.find_spec(top) is not None


class BackgroundWorker:
    """A real worker, turned by a daemon thread until :meth:`stop`."""

    def __init__(self, backend: Backend, config: settings.Settings, queues: list[str]) -> None:
        from errands.worker import Worker  # the worker's modules load only when one is used

        self.backend = backend
        self.worker = Worker(queues=queues, config=config, backend=backend)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errands-test-worker", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> BackgroundWorker:
        self.worker.start()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.worker.turn()
            self.worker.stop()
            while not self.worker.finished():
                self.worker.turn()
        except BaseException as exc:  # surfaced by stop(), in the test's thread
            self.error = exc
        finally:
            self.worker.shut_down()

    def wait_for(self, job: JobRequest | uuid.UUID | str, *, timeout: float = 30) -> JobResult:
        """The final result of ``job`` (a request or its uuid), following retries."""
        key = job.uuid if isinstance(job, JobRequest) else job
        with api.use_backend(self.backend):
            return api.wait_for_result(key, timeout=timeout)

    def stop(self, *, timeout: float = 30) -> None:
        """Finish running jobs, write their results and stop; re-raise a crash of the loop."""
        self._stopping.set()
        self.worker.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the test worker did not stop within {timeout} seconds")
        if self.error is not None:
            raise self.error
