"""Rows for the dashboard's tests: requests, running processes and finished results,
written through the real backend (no worker needed)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import sample_jobs  # noqa: F401  (registers the jobs these rows name: a retry loads them)

from errands.backends import Backend
from errands.models import JobProcess, JobRequest, JobResult, NewRequest, Outcome, Requeue, Status


def enqueue(
    backend: Backend,
    count: int = 1,
    *,
    job_class: str = "sample_jobs.Echo",
    queue: str = "default",
    delay: float = 0.0,
    parameters: dict[str, Any] | None = None,
    **fields: Any,
) -> list[JobRequest]:
    requests = [
        NewRequest(
            job_class=job_class,
            parameters=parameters if parameters is not None else {"args": [n], "kwargs": {}},
            queue=queue,
            delay_seconds=delay,
            **fields,
        )
        for n in range(count)
    ]
    with backend.enqueue_transaction() as tx:
        return tx.insert_requests(requests)


def claim(backend: Backend, queue: str, limit: int = 1000) -> list[JobProcess]:
    return backend.claim(worker_id=uuid.uuid4(), queues=[queue], limit=limit)


def finish(
    backend: Backend,
    processes: Sequence[JobProcess],
    status: Status = Status.SUCCESSFUL,
    *,
    requeue: Requeue | None = None,
    ended_at: datetime.datetime | None = None,
    **fields: Any,
) -> list[JobResult]:
    now = ended_at or backend.now()
    started = now - datetime.timedelta(seconds=2)
    outcomes = [
        Outcome(
            process_uuid=p.uuid,
            status=status,
            started_at=started,
            ended_at=now,
            requeue=requeue,
            **fields,
        )
        for p in processes
    ]
    return backend.complete_many(outcomes=outcomes)


def results(
    backend: Backend,
    count: int = 1,
    status: Status = Status.SUCCESSFUL,
    *,
    queue: str = "default",
    job_class: str = "sample_jobs.Echo",
    parameters: dict[str, Any] | None = None,
    **fields: Any,
) -> list[JobResult]:
    """``count`` finished jobs of ``queue`` (which must hold no other due request)."""
    enqueue(backend, count, job_class=job_class, queue=queue, parameters=parameters)
    return finish(backend, claim(backend, queue), status, **fields)


def failed(backend: Backend, message: str = "boom", **fields: Any) -> JobResult:
    traceback = (
        f'Traceback (most recent call last):\n  File "jobs.py", line 3\nValueError: {message}'
    )
    (result,) = results(
        backend,
        1,
        Status.ERRORED,
        job_class="sample_jobs.Fail",
        parameters={"args": [message], "kwargs": {}},
        error_type="ValueError",
        error=message,
        traceback=traceback,
        **fields,
    )
    return result
