"""The schedules service: enqueue the ``schedule`` setting's occurrences ahead of time.

Every worker runs it, at start and on its maintenance tick; ``errands.scheduler``
makes each occurrence enqueued exactly once however many workers sync at once.
Occurrences are enqueued two maintenance ticks ahead, so each one is a delayed
request well before it is due and starts on time; the worker also wakes when one
falls due (``wakeups``), rather than at its next poll.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence

from errands import scheduler
from errands.backends import Backend

logger = logging.getLogger("errands")


class Schedules:
    """Syncs ``entries`` with the database, ``horizon_seconds`` ahead."""

    def __init__(
        self,
        backend: Backend,
        entries: Sequence[scheduler.Entry],
        *,
        horizon_seconds: float,
        history_seconds: float,
    ) -> None:
        self.backend = backend
        self.entries = list(entries)
        self.horizon = datetime.timedelta(seconds=horizon_seconds)
        self.history_seconds = history_seconds
        self.wakeups: list[float] = []  # monotonic times occurrences fall due, soonest first

    def run_once(self, *, starting: bool = False) -> int:
        """Enqueue the occurrences due within the horizon; returns how many were new.

        ``starting``: the worker's first sync, which runs even without entries (it
        settles the state left by entries since removed, see ``scheduler.sync``).
        """
        if not self.entries and not starting:
            return 0
        database_now = self.backend.now()
        created = scheduler.sync(
            self.backend,
            self.entries,
            horizon=self.horizon,
            starting=starting,
            now=database_now,
            history_seconds=self.history_seconds,
        )
        if created:
            logger.debug("scheduled occurrences enqueued", extra={"count": created})
        self._plan_wakeups(database_now)
        return created

    def due(self, now: float) -> bool:
        """Whether an occurrence fell due since the last call (monotonic ``now``)."""
        if not self.wakeups or now < self.wakeups[0]:
            return False
        self.wakeups = [t for t in self.wakeups if t > now]
        return True

    def _plan_wakeups(self, database_now: datetime.datetime) -> None:
        """The coming occurrences, from the database clock to this process's monotonic one."""
        monotonic_now = time.monotonic()
        upcoming = scheduler.upcoming_times(self.entries, now=database_now, horizon=self.horizon)
        self.wakeups = [
            monotonic_now + (moment - database_now).total_seconds() for moment in upcoming
        ]
