"""The rescue service: jobs whose process was lost end LOST, and are retried.

Two kinds of lost jobs:

* those of dead workers (no heartbeat for ``heartbeat_timeout``): any live
  worker may rescue them, and exactly one does (``rescue_stale_workers`` is
  atomic per dead worker);
* this worker's own orphans: processes the database says it holds but it does
  not track (a claim whose answer was lost with the connection).

Each lost job is retried when its retries allow (``api.retry_lost``) and its
``on_aborted`` hooks run; a failure of one job's retry or hook is logged and
leaves the others' alone (``containment.each_result``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from errands import api, containment, telemetry
from errands.backends import Backend
from errands.models import JobResult

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
        self.on_aborted = on_aborted

    def run_once(self) -> list[JobResult]:
        """Turn lost jobs into LOST results, retry them and run their hooks; returns them."""
        lost = self.backend.rescue_stale_workers(timeout_seconds=self.heartbeat_timeout)
        lost += self._lose_orphans()
        telemetry.record_results(lost)
        if lost:
            logger.warning("rescued lost jobs", extra={"count": len(lost)})
            containment.each_result("retrying a lost job", api.retry_lost, lost)
            self.on_aborted(lost)
        return lost

    def _lose_orphans(self) -> list[JobResult]:
        tracked = self.tracked()
        mine = self.backend.processes_of_worker(worker_id=self.worker_id)
        orphans = [p.uuid for p in mine if p.uuid not in tracked]
        if not orphans:
            return []
        return self.backend.lose_processes(worker_id=self.worker_id, process_uuids=orphans)
