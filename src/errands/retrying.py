"""The retry of one result: its next attempt enqueued and linked, in a caller's transaction.

Used by ``errands.retry`` (the CLI, the API, the dashboard) and by the worker's
follow-up service, which retries LOST jobs whoever rescued them. A result gets
one next attempt, however many times it is retried.
"""

from __future__ import annotations

from errands import lifecycle
from errands.backends.base import EnqueueTransaction
from errands.errors import AlreadyRetried
from errands.jobs import EnqueueOptions, Job, enqueue_in
from errands.models import JobRequest, JobResult
from errands.validation import delay_problem


def retry_delay(job: Job, attempt: int) -> float:
    """The job's own delay before ``attempt``, checked as an enqueue's delay would be."""
    delay = job.calculate_retry_delay(attempt)
    problem = delay_problem(delay)
    if problem is not None:
        raise ValueError(f"calculate_retry_delay({attempt}) {problem}, got {delay!r}")
    return max(float(delay), 0.0)


def enqueue_retry(
    tx: EnqueueTransaction,
    result: JobResult,
    job: Job,
    *,
    delay: float | None = None,
    source: str | None = None,
) -> JobRequest | None:
    """Enqueue the next attempt of ``result`` (``delay`` defaults to the job's own;
    ``source`` as in ``EnqueueOptions``) and record on the result which request
    retries it; None when ``should_enqueue`` declined.

    Raises AlreadyRetried when the result has its next attempt already, or another
    transaction gave it one meanwhile (then this one must roll back: leaving the
    block with the exception does).
    """
    if result.retry_request_uuid is not None:
        raise AlreadyRetried(result.uuid, result.retry_request_uuid)
    attempt = lifecycle.next_attempt(result.retry_attempt)
    options = EnqueueOptions(
        queue=result.queue,
        delay=retry_delay(job, attempt) if delay is None else delay,
        priority=result.priority,
        retries=result.retries,
        retry_attempt=attempt,
        concurrency_key=result.concurrency_key,
        timeout=result.timeout,
        limits=result.limits,
        source=source,
        tags=list(result.tags),  # errands.tagging: the attempt keeps the stored ones
        meta=result.meta or {},
    )
    request = enqueue_in(tx, [job], options=options)[0]
    if request is not None and not tx.link_retry(
        result_uuid=result.uuid, request_uuid=request.uuid
    ):
        raise AlreadyRetried(result.uuid, None)
    return request
