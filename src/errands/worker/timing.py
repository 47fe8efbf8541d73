"""When the worker's loop does its periodic work, and when it tries the database again.

``Every`` paces a service on the loop's tick (heartbeat, maintenance, stats);
``Backoff`` keeps a failing database from being hammered: after a failure the
loop leaves the database alone for a delay that doubles with each failure in a
row, up to ``MAX_BACKOFF``, and keeps everything it has meanwhile (buffered
outcomes, claimed jobs) to write once the database answers again.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time

from errands.errors import BackendError

logger = logging.getLogger("errands")

MAX_BACKOFF = 5.0  # seconds between attempts while the database is unreachable


class Every:
    """Due once every ``interval`` seconds (monotonic), each interval scaled by a random
    factor in ``jitter`` (which spreads the same work of many workers)."""

    def __init__(self, interval: float, *, jitter: tuple[float, float] = (1.0, 1.0)) -> None:
        self.interval = interval
        self.jitter = jitter
        self.next_at = 0.0  # due at once until ``restart``

    def due(self, now: float) -> bool:
        """Whether the work is due at ``now``; if so, the next time is set from ``now``."""
        if now < self.next_at:
            return False
        self.restart(now)
        return True

    def restart(self, now: float) -> None:
        """Next due one interval after ``now``."""
        low, high = self.jitter
        factor = low if low == high else random.uniform(low, high)
        self.next_at = now + self.interval * factor


class Backoff:
    """The database's state as the loop sees it: answering, or failing since
    ``failures`` calls in a row, and left alone until ``retry_at``.

    The log says each change of state once, with the reason: "database unavailable:
    <reason>" at the first failure (ERROR), "database available again after N s"
    at the first answer after (WARNING). The failures in between, with their
    tracebacks, are logged at DEBUG only: an outage is not a page of tracebacks."""

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0  # monotonic
        self.failing_since: float | None = None  # monotonic, while failing

    def waiting(self, now: float) -> bool:
        """Whether the database is being left alone at ``now``."""
        return now < self.retry_at

    def failed(self, operation: str, exc: BaseException) -> None:
        """Log the failure and leave the database alone for a while."""
        self.failures += 1
        delay = min(0.1 * 2**self.failures, MAX_BACKOFF)
        now = time.monotonic()
        self.retry_at = now + delay
        fields = {"operation": operation, "retry_in": round(delay, 2)}
        if not is_database_error(exc):
            # A bug, or user code a service runs: not an outage, so say what it was.
            logger.error(f"{operation} failed", extra=fields, exc_info=exc)
            return
        if self.failing_since is None:
            self.failing_since = now
            logger.error(f"database unavailable: {reason(exc)}", extra=fields)
        logger.debug("database operation failed; retrying", extra=fields, exc_info=exc)

    def answered(self, operation: str) -> None:
        """The database answered: the next failure starts from the shortest delay."""
        if self.failing_since is not None:
            down = time.monotonic() - self.failing_since
            logger.warning(
                f"database available again after {down:.1f} s",
                extra={"operation": operation, "down_seconds": round(down, 1)},
            )
        self.failures = 0
        self.failing_since = None


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database or the way to it (errands' own
    BackendError, or a driver's error), rather than from code."""
    if isinstance(exc, BackendError | sqlite3.Error | OSError):
        return True
    return type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool")


def reason(exc: BaseException) -> str:
    """An error's message on one line (errands' database errors carry the server's reason)."""
    return " ".join(str(exc).split()) or type(exc).__name__
