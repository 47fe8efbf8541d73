"""A throwaway PostgreSQL cluster for fault tests: stopped, started and restarted at will.

The fault tests stop and restart PostgreSQL under running workers; the shared
server (``ERRANDS_TEST_DATABASE_URL``) must never be, so each test module starts its
own cluster: ``initdb`` into a fresh directory under ``/tmp`` (owned by the
``postgres`` OS user, as the server refuses to run as root), ``pg_ctl`` on a free
port of 127.0.0.1, trust authentication, ``fsync=off`` (nothing here must survive
a crash of the machine), fast shutdown. :func:`throwaway_cluster` is the context
manager, and the ``pg_cluster`` fixture (module-scoped: a restart leaks no state
into the next module) yields a :class:`Cluster`; the directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from errands.testing.databases import with_database

BIN = Path(os.environ.get("ERRANDS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = list(argv)
    if os.geteuid() == 0:
        command = ["runuser", "-u", OS_USER, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


class Cluster:
    """One PostgreSQL cluster in ``directory`` on 127.0.0.1:``port``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "server.log"
        self.port = port

    def url(self, dbname: str = "postgres", *, port: int | None = None) -> str:
        """The URL of ``dbname`` on this cluster (or through a proxy on ``port``)."""
        return with_database(f"postgresql://postgres@127.0.0.1:{port or self.port}/", dbname)

    # -- lifecycle -------------------------------------------------------------------
    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, OS_USER, OS_USER)
        _as_postgres(
            str(BIN / "initdb"),
            *("-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
            *("--no-sync", "--no-instructions"),
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# errands fault tests\n"
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "fsync = off\n"
                "full_page_writes = off\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "log_min_messages = warning\n"
            )

    def start(self) -> None:
        _as_postgres(
            str(BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"),
            "start",
        )

    def stop(self) -> None:
        """Fast shutdown: every session is ended, the server exits (and refuses)."""
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        _as_postgres(
            str(BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60"),
            "restart",
        )

    def running(self) -> bool:
        command = [str(BIN / "pg_ctl"), "-D", str(self.data), "status"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- sessions --------------------------------------------------------------------
    def terminate_backends(
        self, *, dbname: str | None = None, where: str = "", params: tuple[object, ...] = ()
    ) -> int:
        """``pg_terminate_backend`` every client session (of ``dbname`` if given, and
        matching the SQL condition ``where`` on ``pg_stat_activity``) but this one's;
        how many were terminated."""
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        args: list[object] = []
        if dbname is not None:
            query += " AND datname = %s"
            args.append(dbname)
        if where:
            query += f" AND ({where})"
            args.extend(params)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute(query, args).fetchone()
        return int(row[0]) if row else 0

    def wait_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started cluster on a free port, in a new directory; destroyed afterwards."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="errands-pg-")), free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Cluster]:
    """This module's own PostgreSQL cluster (see the module docstring)."""
    with throwaway_cluster() as cluster:
        yield cluster
