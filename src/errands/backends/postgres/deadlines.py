"""A deadline on calls to the database, kept by the client (``PostgresBackend.bound_calls``):
a call not answered in time has its connection's socket shut down under it."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import psycopg

from errands.backends.postgres.connection import Connection
from errands.errors import BackendError

WATCH_SECONDS = 0.25  # how often the deadline watchdog looks at the calls in flight


class CallTimeout(BackendError):
    """A call got no answer within its deadline (its connection was closed)."""


class Deadlines:
    """A deadline on calls to the database, kept by the client: a call not answered
    within its time has its connection shut down, so that it fails instead of hanging.

    TCP cannot tell a server that does not answer from one that is slow when something
    on the way still acknowledges the packets (a proxy, a load balancer, a half-dead
    peer); only a deadline of the client's own ends such a call. One daemon thread
    watches every armed call (arming is a dictionary entry: no thread per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, Connection]] = {}
        self._cut: set[int] = set()
        self._next = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def bound(self, conn: Connection, seconds: float) -> Iterator[None]:
        with self._lock:
            self._next += 1
            key = self._next
            self._armed[key] = (time.monotonic() + seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="errands-deadlines", daemon=True
                )
                self._thread.start()
        try:
            yield
        except psycopg.Error as exc:
            if key in self._cut:
                raise CallTimeout(
                    f"no answer from the database within {seconds:g} s (database_timeout); "
                    "its connection was closed"
                ) from exc
            raise
        finally:
            with self._lock:
                self._armed.pop(key, None)
                if key in self._cut:
                    # Cut as the call ended: never hand the connection to another caller.
                    self._cut.discard(key)
                    conn.close()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            now = time.monotonic()
            # Under the lock: a call that ends meanwhile closes its connection only
            # after its socket was shut down, never while (its descriptor not reused).
            with self._lock:
                due = [(key, conn) for key, (at, conn) in self._armed.items() if at <= now]
                for key, conn in due:
                    del self._armed[key]
                    self._cut.add(key)
                    shut_down(conn)


def shut_down(conn: Connection) -> None:
    """Shut the connection's socket down under the thread waiting on it (it then fails
    at once, as if the server had closed it)."""
    with contextlib.suppress(Exception):
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
        with duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
