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
import time

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
    ``failures`` calls in a row, and left alone until ``retry_at``."""

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0  # monotonic

    def waiting(self, now: float) -> bool:
        """Whether the database is being left alone at ``now``."""
        return now < self.retry_at

    def failed(self, operation: str, exc: BaseException) -> None:
        """Log the failure and leave the database alone for a while."""
        self.failures += 1
        delay = min(0.1 * 2**self.failures, MAX_BACKOFF)
        self.retry_at = time.monotonic() + delay
        logger.error(
            "database operation failed; retrying",
            extra={"operation": operation, "retry_in": round(delay, 2)},
            exc_info=exc,
        )

    def answered(self, operation: str) -> None:
        """The database answered: the next failure starts from the shortest delay."""
        if self.failures:
            logger.warning("database reachable again", extra={"operation": operation})
        self.failures = 0
