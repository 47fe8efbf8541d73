"""A real PgBouncer in transaction pooling mode in front of a test database, for
tests/test_pgbouncer.py: the ``pgbouncer`` binary (Debian package ``pgbouncer``,
brought by ``scripts/install-test-deps``), a configuration in a temporary directory,
a free port on 127.0.0.1, and few server connections so that session state one
client leaves behind would reach the next.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict

#: Where Debian installs it (not on a normal user's PATH: /usr/sbin).
DEBIAN_BINARY = "/usr/sbin/pgbouncer"
#: Server connections per database: two, so that clients take turns on the same ones.
POOL_SIZE = 2
#: The database name clients use (PgBouncer maps it to the real one).
ALIAS = "errands_bounced"


def binary() -> str | None:
    """The pgbouncer executable, or None."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PgBouncer:
    """PgBouncer in front of the database of ``server_url``; ``url`` is the pooled URL."""

    def __init__(self, executable: str, server_url: str, directory: Path) -> None:
        server = conninfo_to_dict(server_url)
        self.port = free_port()
        self.log_path = directory / "pgbouncer.log"
        target = " ".join(
            f"{key}={value}"
            for key, value in (
                ("host", server.get("host", "127.0.0.1")),
                ("port", server.get("port", 5432)),
                ("dbname", server["dbname"]),
                ("user", server.get("user", "postgres")),
                ("password", server.get("password")),
            )
            if value
        )
        config = directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{ALIAS} = {target}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            # Any client name and no password: the [databases] entry names the server's
            # user (these tests are about pooling, not authentication).
            "auth_type = any\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 200\n"
            # Transaction mode never resets a server connection between clients: what
            # a client leaves on one stays (the tests check that errands leaves nothing).
            "server_reset_query =\n"
        )
        # PgBouncer refuses to run as root: as root, it takes the postgres user's identity.
        user = ["-u", "postgres"] if os.geteuid() == 0 else []
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [executable, *user, str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"postgresql://errands_client@127.0.0.1:{self.port}/{ALIAS}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"pgbouncer exited at start: {self.log()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"pgbouncer did not accept connections within {timeout} s: {self.log()}"
                    ) from None
                time.sleep(0.05)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def server_sessions(url: str) -> list[dict[str, object]]:
    """The session state of every server connection behind the pooler at ``url``: as
    many clients as it has server connections each hold a transaction open (so each
    sits on a different one) and read their session's settings, prepared statements
    and LISTEN channels."""
    clients = [psycopg.connect(url, prepare_threshold=None) for _ in range(POOL_SIZE)]
    try:
        states = []
        for conn in clients:  # not autocommit: each keeps its server connection
            row = conn.execute(
                "SELECT pg_backend_pid(),"
                " current_setting('statement_timeout'),"
                " current_setting('jit'),"
                " current_setting('plan_cache_mode'),"
                " (SELECT count(*) FROM pg_prepared_statements),"
                " (SELECT count(*) FROM pg_listening_channels())"
            ).fetchone()
            assert row is not None
            keys = ("pid", "statement_timeout", "jit", "plan_cache_mode", "prepared", "listening")
            states.append(dict(zip(keys, row, strict=True)))
        return states
    finally:
        for conn in clients:
            conn.rollback()
            conn.close()
