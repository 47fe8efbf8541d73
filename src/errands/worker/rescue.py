"""The rescue service: jobs whose process was lost end LOST, and are retried.

Two kinds of lost jobs:

* those of dead workers (no heartbeat for ``heartbeat_timeout``): any live
  worker may rescue them, and exactly one does (``rescue_stale_workers`` is
  atomic per dead worker);
* this worker's own orphans: processes the database says it holds but it does
  not track. One that never started (a claim whose answer was lost with the
  connection) goes back to the queue instead: it was never this worker's to lose.

The rescue records, with each LOST result, what the job is still owed: its
``on_aborted`` hooks and, when its retries allow, a retry. The follow-up service
(``followups.py``) settles that right after, here if this worker can load the
job's class, else on a worker that can.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from errands import telemetry
from errands.backends import Backend
from errands.models import JobResult
from errands.worker.followups import FollowUps

logger = logging.getLogger("errands")


class Rescue:
    """Rescues dead workers' jobs and the orphans of worker ``worker_id``.

    ``tracked`` names every job this worker holds (waiting, in a child, or with an
    unwritten outcome); it is called with no claim or write in flight, so that a
    job on its way is not taken for an orphan. ``on_aborted`` runs the hooks of
    the lost jobs' results.
    """

    def __init__(
        self,
        backend: Backend,
        worker_id: uuid.UUID,
        *,
        heartbeat_timeout: float,
        tracked: Callable[[], set[uuid.UUID]],
        on_aborted: Callable[[list[JobResult]], None],
    ) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self.heartbeat_timeout = heartbeat_timeout
        self.tracked = tracked
        self.followups = FollowUps(backend, on_aborted=on_aborted)

    def run_once(self) -> list[JobResult]:
        """Turn lost jobs into LOST results, then settle what lost jobs are owed (this
        tick's and any a worker before could not); returns this tick's LOST results."""
        lost = self.backend.rescue_stale_workers(
            timeout_seconds=self.heartbeat_timeout, rescuer=self.worker_id
        )
        lost += self._lose_orphans()
        telemetry.record_results(lost)
        if lost:
            logger.warning("rescued lost jobs", extra={"count": len(lost)})
        self.followups.run_once()
        return lost

    def _lose_orphans(self) -> list[JobResult]:
        """This worker's processes it does not track: those never started go back to
        the queue (a claim whose answer was lost with the connection: the worker never
        had them), those that started end LOST (their run was lost with its child)."""
        tracked = self.tracked()
        mine = self.backend.processes_of_worker(worker_id=self.worker_id)
        orphans = [p for p in mine if p.uuid not in tracked]
        unstarted = [p.uuid for p in orphans if p.started_at is None]
        if unstarted:
            returned = self.backend.release(process_uuids=unstarted)
            logger.warning("returned jobs this worker never received", extra={"count": returned})
        started = [p.uuid for p in orphans if p.started_at is not None]
        if not started:
            return []
        return self.backend.lose_processes(worker_id=self.worker_id, process_uuids=started)
