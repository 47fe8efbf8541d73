"""Wake-ups on SQLite: a thread polling ``PRAGMA data_version`` for other connections' commits."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from errands.backends.base import (
    Listener,
)
from errands.backends.sqlite.connection import data_version

logger = logging.getLogger("errands")


#: Seconds between two looks at ``PRAGMA data_version`` by a listener.
LISTEN_INTERVAL = 0.015
#: Seconds a listener waits before reconnecting after a database error.
LISTEN_RETRY_INTERVAL = 1.0


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
        baseline = data_version(connection)
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
                version = data_version(connection)
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
