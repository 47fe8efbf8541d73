"""The heartbeat service: keep this worker's row fresh, so that peers know it is alive.

A worker silent for ``heartbeat_timeout`` is declared dead by the first peer
whose rescue notices it (see ``rescue``): its jobs turn LOST and its row goes.
If that happens to a worker that is in fact alive (a long pause), its next beat
finds no row and it registers again; the jobs the peer turned LOST stay LOST:
their late outcomes find no process row and are dropped by ``complete_many``,
so one process still has one result.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence

from errands.backends import Backend
from errands.models import WorkerInfo

logger = logging.getLogger("errands")


class Heartbeat:
    """The row of worker ``worker_id`` (serving ``queues``) in the workers table."""

    def __init__(self, backend: Backend, worker_id: uuid.UUID, queues: Sequence[str]) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self.queues = list(queues)

    def register(self) -> None:
        """Insert this worker's row (host, pid, queues), beating now."""
        self.backend.register_worker(
            worker=WorkerInfo(
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
            )
        )

    def run_once(self) -> bool:
        """One beat; False if a peer had declared this worker dead (it registered again)."""
        if self.backend.heartbeat(worker_id=self.worker_id):
            return True
        logger.warning("this worker was declared dead by a peer; registering again")
        self.register()
        return False

    def deregister(self) -> None:
        """Remove the row, as the worker's last act."""
        self.backend.deregister_worker(worker_id=self.worker_id)
