"""The heartbeat service: keep this worker's row fresh, so that peers know it is alive.

A worker silent for ``heartbeat_timeout`` is declared dead by the first peer
whose rescue notices it (see ``rescue``): its jobs turn LOST and its row goes.
If that happens to a worker that is in fact alive (a long pause, a partition),
its next beat finds no row and it registers again; the jobs the peer turned LOST
stay LOST (one process, one result): the worker drops those it had not started
(``Worker.beat``), and the late outcomes of those it ran are kept on their LOST
results (``complete_many``).

``beat_at`` is when the last beat that was written began: a worker that could not
beat for nearly ``heartbeat_timeout`` may have been declared dead already, and
starts nothing it holds until a beat tells it (``Worker._cut_off``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence

from errands.backends import Backend
from errands.models import JobProcess, WorkerInfo

logger = logging.getLogger("errands")


class Heartbeat:
    """The row of worker ``worker_id`` (serving ``queues``) in the workers table."""

    def __init__(self, backend: Backend, worker_id: uuid.UUID, queues: Sequence[str]) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self.queues = list(queues)
        self.beat_at = time.monotonic()  # when the last beat written began

    def register(self) -> None:
        """Insert this worker's row (host, pid, queues), beating now."""
        began = time.monotonic()
        self.backend.register_worker(
            worker=WorkerInfo(
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
            )
        )
        self.beat_at = began

    def run_once(self) -> bool:
        """One beat; False if a peer had declared this worker dead (it registered again)."""
        began = time.monotonic()
        if self.backend.heartbeat(worker_id=self.worker_id):
            self.beat_at = began
            return True
        logger.warning("this worker was declared dead by a peer; registering again")
        self.register()
        return False

    def drop_rescued(self, waiting: deque[JobProcess]) -> None:
        """After this worker was declared dead: forget the ``waiting`` jobs whose process
        is gone. A peer recorded them LOST (and may have retried them, or they ran
        elsewhere); starting them would run them again. Jobs claimed since keep their
        process and stay."""
        if not waiting:
            return
        held = {p.uuid for p in self.backend.processes_of_worker(worker_id=self.worker_id)}
        kept = [job for job in waiting if job.uuid in held]
        dropped = [job for job in waiting if job.uuid not in held]
        waiting.clear()
        waiting.extend(kept)
        if dropped:
            logger.warning(
                f"dropped {len(dropped)} jobs this worker held and had not started: a peer "
                "recorded them LOST while this worker was cut off",
                extra={"dropped": len(dropped), "jobs": ",".join(str(j.uuid) for j in dropped)},
            )

    def deregister(self) -> None:
        """Remove the row, as the worker's last act."""
        self.backend.deregister_worker(worker_id=self.worker_id)
