"""Job middleware for Django projects (added first to the ``middleware`` setting)."""

from __future__ import annotations

from typing import Any

from django.db import close_old_connections

from errands.execution import Handler
from errands.jobs import Job


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
