"""Job middleware for Django projects (added first to the ``middleware`` setting)."""

from __future__ import annotations

from typing import Any

from django.db import connections

from errands.jobs import Job
from errands.worker.execution import Handler


class CloseOldConnections:
    """Drop unusable or expired Django database connections around each job.

    Django does this around each web request (``CONN_MAX_AGE``); a worker child
    runs many jobs in one long-lived process, so it is done around each job.
    """

    def __init__(self, next_handler: Handler) -> None:
        self.next_handler = next_handler

    def __call__(self, job: Job) -> Any:
        close_old_connections()
        try:
            return self.next_handler(job)
        finally:
            close_old_connections()


def close_old_connections() -> None:
    """Django's ``close_old_connections``, sparing connections inside an atomic block
    (jobs run in-process by ``errands.testing`` within a TestCase's transaction)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
