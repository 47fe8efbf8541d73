"""LISTEN/NOTIFY: the threads that wake workers for new jobs and waiters for results."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

import psycopg
import psycopg.errors

from errands.backends.base import Listener
from errands.backends.postgres.connection import (
    LISTEN_MAX_BACKOFF_SECONDS,
    LISTEN_POLL_SECONDS,
    Connection,
    execute,
    set_schema,
)

logger = logging.getLogger("errands")


# -- notifications -------------------------------------------------------------------


class PostgresListener(Listener):
    """A daemon thread relaying ``NOTIFY errands_jobs`` to ``on_wake``
    (``<schema>_jobs`` for a ``schema``: see connection.in_schema).

    It uses its own connection (LISTEN needs a dedicated session, and a pooled
    connection would be handed to others). ``ready`` is set once it listens.
    """

    #: the named statement that subscribes to the channel
    query = "listen"

    def __init__(self, url: str, on_wake: Callable[[], None], schema: str = "") -> None:
        self.url = url
        self.schema = schema
        self.on_wake = on_wake
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errands-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5 * LISTEN_POLL_SECONDS + 1)

    def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        failing = False  # since the last connection: its retries are logged at DEBUG only
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    set_schema(conn, self.schema)  # its channel (no search_path needed)
                    execute(conn, self.query)
                    self.ready.set()
                    if connected_before:
                        self._wake()  # notifications sent while disconnected are lost
                    connected_before = True
                    failing = False
                    backoff = 0.1
                    self._relay(conn)
            except psycopg.Error as exc:
                self.ready.clear()
                # Once per outage, with the reason; each retry (with its traceback) at DEBUG.
                logger.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "notification listener lost its connection; reconnecting: %s",
                    " ".join(str(exc).split()),
                    extra={"retry_in": backoff},
                    exc_info=failing,
                )
                failing = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, LISTEN_MAX_BACKOFF_SECONDS)

    def _relay(self, conn: Connection) -> None:
        while not self._stopping.is_set():
            for notify in conn.notifies(timeout=LISTEN_POLL_SECONDS):
                self._notified(notify.payload)

    def _notified(self, payload: str) -> None:
        self._wake()

    def _wake(self) -> None:
        try:
            self.on_wake()
        except Exception:
            logger.exception("on_wake callback failed")


class NoListener(Listener):
    """No LISTEN at all: behind a transaction pooler without ``listen_database_url``
    (a LISTEN through the pooler would subscribe a server connection that is handed
    to other clients next, and its notifications would be lost or go to them).
    Workers then look for jobs every ``poll_interval``, and waiters for results too."""

    def __init__(self, *, announce: bool) -> None:
        self.ready = threading.Event()
        self.ready.set()  # nothing to wait for: callers look at the database themselves
        if announce:  # once per backend: a worker's log says why new jobs wait longer
            logger.info(
                "no LISTEN/NOTIFY: database_pooler is 'transaction' and listen_database_url "
                "is unset, so new jobs and results are found by polling every "
                "poll_interval; set listen_database_url to a direct connection for "
                "immediate wake-ups"
            )

    def close(self) -> None:
        pass


class PostgresResultListener(PostgresListener):
    """Relays ``NOTIFY errands_results`` (sent by a trigger on ``errands_result``;
    ``<schema>_results`` for a ``schema``) to
    ``on_results`` with the request uuids of the new results; None means "unknown"
    (a batch too large for the payload, or a reconnect that may have missed some)."""

    query = "listen_results"

    def __init__(
        self,
        url: str,
        on_results: Callable[[frozenset[uuid.UUID] | None], None],
        schema: str = "",
    ) -> None:
        self.on_results = on_results
        super().__init__(url, lambda: on_results(None), schema)

    def _notified(self, payload: str) -> None:
        try:
            uuids = frozenset(uuid.UUID(part) for part in payload.split(",")) if payload else None
            self.on_results(uuids)
        except Exception:
            logger.exception("on_results callback failed")
