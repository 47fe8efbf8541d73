"""Rows of the in-memory backend, made as the SQL backends' statements make them.

Each function builds one row from another, copying the columns the matching SQL
copies (``claim_move_to_process``, ``release_to_requests``, ``insert_result``
...), so that a job looks the same whichever backend it passed through. How an
attempt ends (status, error type, message) always comes from
:mod:`errands.lifecycle` or the worker's :class:`~errands.models.Outcome`.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from errands import lifecycle
from errands.models import JobProcess, JobRequest, JobResult, NewRequest, Outcome

#: The columns a job carries unchanged from request to process to result.
JOB_FIELDS = (
    "job_class",
    "parameters",
    "queue",
    "priority",
    "retries",
    "retry_attempt",
    "concurrency_key",
    "timeout",
    "source",
    "trace_id",
    "span_id",
    "limits",  # flow control (errands.Limit): from enqueue to the result
    "expires_at",  # expiry (errands.expiry): from enqueue to the result
    "tags",  # errands.tagging: from enqueue to the result
    "meta",
)


def utcnow() -> datetime.datetime:
    """The in-memory backend's clock (the database clock of the SQL backends)."""
    return datetime.datetime.now(datetime.UTC)


def claim_order(request: JobRequest) -> tuple[int, datetime.datetime, datetime.datetime]:
    """Sort key of the claim order: priority descending, then due time, then oldest."""
    return (-request.priority, request.start_at, request.created_at)


def job_fields(job: JobRequest | JobProcess) -> dict[str, Any]:
    return {name: getattr(job, name) for name in JOB_FIELDS}


def request_of(new: NewRequest, now: datetime.datetime) -> JobRequest:
    """An inserted request: due at ``start_at``, else ``delay_seconds`` after ``now``."""
    start_at = new.start_at or now + datetime.timedelta(seconds=new.delay_seconds)
    return JobRequest(
        uuid=new.uuid,
        created_at=now,
        start_at=start_at,
        **{name: getattr(new, name) for name in JOB_FIELDS},
    )


def process_of(
    request: JobRequest,
    worker_id: uuid.UUID,
    *,
    now: datetime.datetime,
    started_at: datetime.datetime | None = None,
) -> JobProcess:
    """A claimed request; it keeps its uuid as ``request_uuid`` and its due time."""
    return JobProcess(
        uuid=uuid.uuid4(),
        request_uuid=request.uuid,
        requested_at=request.created_at,
        created_at=now,
        started_at=started_at,
        worker_id=worker_id,
        start_at=request.start_at,
        **job_fields(request),
    )


def released_request(process: JobProcess) -> JobRequest:
    """The request a released process was, unchanged: same uuid, enqueue time and
    due time, so it keeps its place in the claim order."""
    return JobRequest(
        uuid=process.request_uuid,
        created_at=process.requested_at,
        start_at=process.start_at or process.requested_at,
        **job_fields(process),
    )


def requeued_request(
    process: JobProcess,
    *,
    uuid: uuid.UUID,
    attempt: int,
    due: datetime.datetime,
    now: datetime.datetime,
) -> JobRequest:
    """A retry or deferral of ``process``: a new request enqueued ``now``."""
    fields = {**job_fields(process), "retry_attempt": attempt}
    return JobRequest(uuid=uuid, created_at=now, start_at=due, **fields)


def result_of(process: JobProcess, *, now: datetime.datetime, **columns: Any) -> JobResult:
    """The result of ``process``, with ``columns`` (status, ended_at ...) as given."""
    values: dict[str, Any] = {
        "uuid": uuid.uuid4(),
        "process_uuid": process.uuid,
        "request_uuid": process.request_uuid,
        "requested_at": process.requested_at,
        "started_at": process.started_at,
        "created_at": now,
        "worker_id": process.worker_id,
        "start_at": process.start_at,
        # errands.progress: the last the job reported
        "progress_done": process.progress_done,
        "progress_total": process.progress_total,
        "progress_message": process.progress_message,
        **job_fields(process),
        **columns,
    }
    return JobResult(**values)


def completed_result(
    process: JobProcess, outcome: Outcome, *, now: datetime.datetime, retry: uuid.UUID | None
) -> JobResult:
    """The result the worker reported; its start is the outcome's, else the stamp
    ``mark_started`` wrote."""
    return result_of(
        process,
        now=now,
        status=outcome.status,
        started_at=outcome.started_at or process.started_at,
        ended_at=outcome.ended_at,
        error_type=outcome.error_type,
        error=outcome.error,
        traceback=outcome.traceback,
        return_value=outcome.return_value,
        retry_request_uuid=retry,
    )


def ended_result(
    process: JobProcess, ending: lifecycle.Ending, now: datetime.datetime
) -> JobResult:
    """A result the backend itself writes (LOST by a rescue), ending ``now``."""
    return result_of(
        process,
        now=now,
        status=ending.status,
        ended_at=now,
        error_type=ending.error_type,
        error=ending.error,
    )


def cancelled_result(
    request: JobRequest,
    now: datetime.datetime,
    ending: lifecycle.Ending = lifecycle.CANCELLED_PENDING,
) -> JobResult:
    """The CANCELLED result of a pending request (cancelled, or expired): it never had
    a process, so its process uuid is new and no worker or start is recorded."""
    return JobResult(
        uuid=uuid.uuid4(),
        process_uuid=uuid.uuid4(),
        request_uuid=request.uuid,
        requested_at=request.created_at,
        started_at=None,
        ended_at=now,
        created_at=now,
        status=ending.status,
        worker_id=None,
        start_at=request.start_at,
        error_type=ending.error_type,
        error=ending.error,
        **job_fields(request),
    )
