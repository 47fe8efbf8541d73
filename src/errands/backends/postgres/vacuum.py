"""The worker's own vacuum of the requests table (and, after limited claims, of the
processes table): when a claim should run one, and running it."""

from __future__ import annotations

import logging
import math
import threading

import psycopg

from errands.backends.postgres.connection import (
    VACUUM_AFTER_CLAIMS,
    Connection,
    execute,
    fetch,
)

logger = logging.getLogger("errands")


class QueueVacuum:
    """Vacuums the requests table once this process claimed enough of it.

    A claim walks the claim index from its start, where the requests claimed
    since the last vacuum still have (dead) entries: without a vacuum, every
    claim of a long drain reads more of them, and small claims read them most
    often. Autovacuum looks at a table at most once a minute, far too late at
    thousands of jobs a second, so the worker vacuums it itself.

    When: a vacuum reads the table's indexes whole (cost ~ table size S), and
    between two vacuums the claims of size c read on average half of the V
    requests claimed since the last (V/c claims): the cost per job,
    V/2c + S/V, is least for V = sqrt(2cS), with at least ``VACUUM_AFTER_CLAIMS``.

    When limited jobs were claimed since, errands_process is vacuumed as well: their
    claims count a key's running jobs through its GIN index, which keeps the entries
    of ended jobs until a vacuum. A plain drain does without (autovacuum keeps the
    table in check).
    """

    def __init__(self, statement_ms: int | None) -> None:
        # The worker's statement_timeout, lifted for the vacuum and restored after;
        # None: the connections have none of their own (behind a transaction pooler,
        # where a SET would stay on a server connection that others use next).
        self.statement_ms = statement_ms
        self._lock = threading.Lock()
        self._claimed = 0
        self._limited = False

    def after_claim(self, conn: Connection, *, claimed: int, limit: int, limited: bool) -> None:
        """Count a claim's jobs, and vacuum on ``conn`` if that is due now."""
        with self._lock:
            self._limited |= limited
            self._claimed += claimed
            if self._claimed < VACUUM_AFTER_CLAIMS:
                return
            size = fetch(conn, "queue_size_estimate")[0]["size"]
            if self._claimed < math.sqrt(2 * limit * size):
                return
            self._claimed = 0
            processes_too, self._limited = self._limited, False
        try:
            if self.statement_ms is None:
                self._vacuum(conn, processes_too)
                return
            # VACUUM reads the whole table: longer than a statement of the worker's may run.
            execute(conn, "no_statement_timeout")
            try:
                self._vacuum(conn, processes_too)
            finally:
                execute(conn, "worker_statement_timeout", {"ms": self.statement_ms})
        except psycopg.Error:
            logger.warning("could not vacuum errands_request", exc_info=True)

    @staticmethod
    def _vacuum(conn: Connection, processes_too: bool) -> None:
        execute(conn, "vacuum_queue")
        if processes_too:
            execute(conn, "vacuum_processes")
