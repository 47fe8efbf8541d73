"""The stats service: a periodic "worker stats" log line.

Every ``worker_stats_every`` seconds the worker logs its own state (processes,
jobs running and waiting, jobs completed and the rate since the last line) and
the depth of the queues it serves. The line is for people reading logs; a
failing stats query leaves the queues out rather than failing the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from errands.backends import Backend

logger = logging.getLogger("errands")


class StatsLine:
    """Logs ``state()`` (a dict of counts, ``completed`` among them) with queue depths."""

    def __init__(
        self,
        backend: Backend,
        queues: Sequence[str],
        *,
        heartbeat_timeout: float,
        state: Callable[[], dict[str, int]],
    ) -> None:
        self.backend = backend
        self.queues = list(queues)
        self.heartbeat_timeout = heartbeat_timeout
        self.state = state
        self._last = (time.monotonic(), 0)  # (when, completed) at the last line

    def run_once(self) -> dict[str, Any]:
        """Log one line; returns its fields."""
        now = time.monotonic()
        state = self.state()
        since, completed_then = self._last
        self._last = (now, state["completed"])
        elapsed = max(now - since, 1e-9)
        fields = {
            **state,
            "jobs_per_second": round((state["completed"] - completed_then) / elapsed, 1),
            "queues": self._queue_depths(),
        }
        logger.info("worker stats", extra=fields)
        return fields

    def _queue_depths(self) -> dict[str, dict[str, int]]:
        """Pending (due) and running jobs per served queue; empty if the database fails."""
        try:
            stats = self.backend.stats(heartbeat_timeout_seconds=self.heartbeat_timeout)
        except Exception:
            logger.debug("stats query failed", exc_info=True)
            return {}
        return {
            q.queue: {"pending": q.pending, "running": q.running}
            for q in stats.queues
            if not self.queues or q.queue in self.queues
        }
