"""Running one job and describing how it ended, as a plain ``Outcome``.

This runs inside a worker's child process (and in-process for ``errands run``).
It never touches the database for bookkeeping: the worker parent writes outcomes.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import inspect
import logging
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from errands import context, lifecycle, serialization, telemetry
from errands.backends import current
from errands.containment import is_own_interrupt
from errands.context import JobContext
from errands.errors import DeferJob
from errands.jobs import Job
from errands.lifecycle import qualified_name as qualified_name  # errands.worker's export
from errands.limiting import Limit
from errands.models import (
    JobProcess,
    Outcome,
    Requeue,
    Status,
    build_outcome,
    positional_builder,
    uuid_from_bytes,
)
from errands.registry import build_job
from errands.validation import delay_problem
from errands.workflow_models import DependencyResult

logger = logging.getLogger("errands")

Handler = Callable[[Job], Any]


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a child needs to run one claimed process (small and picklable)."""

    process_uuid: uuid.UUID
    job_class: str
    parameters: dict[str, Any]
    retries: int
    retry_attempt: int
    # For the CONSUMER span: its name, message id and link to the enqueuing span.
    queue: str = "default"
    request_uuid: uuid.UUID | None = None
    trace_id: str | None = None
    span_id: str | None = None
    # For the job's context (errands.context): the rest of what the process row says.
    # Times and the worker id may be as the wire carries them (POSIX timestamps, the
    # uuid's bytes): converted only when the job reads its context (2 µs a job).
    priority: int = 0
    requested_at: datetime.datetime | float | None = None
    start_at: datetime.datetime | float | None = None
    timeout: float | None = None
    worker_id: uuid.UUID | bytes | None = None
    limits: tuple[Limit, ...] = ()

    @classmethod
    def of(cls, job: JobProcess) -> Assignment:
        return cls(
            process_uuid=job.uuid,
            job_class=job.job_class,
            parameters=job.parameters,
            retries=job.retries,
            retry_attempt=job.retry_attempt,
            queue=job.queue,
            request_uuid=job.request_uuid,
            trace_id=job.trace_id,
            span_id=job.span_id,
            priority=job.priority,
            requested_at=job.requested_at,
            start_at=job.start_at,
            timeout=job.timeout,
            worker_id=job.worker_id,
            limits=job.limits,
        )

    def context(self, started_at: datetime.datetime) -> JobContext:
        """The context of this run of the job, which began at ``started_at``."""
        return JobContext(
            process_uuid=self.process_uuid,
            request_uuid=self.request_uuid,
            job_class=self.job_class,
            attempt=self.retry_attempt + 1,  # as formatting.attempt_number counts
            retries=self.retries,
            queue=self.queue,
            priority=self.priority,
            requested_at=_aware(self.requested_at),
            start_at=_aware(self.start_at),
            started_at=started_at,
            timeout=self.timeout,
            worker_id=uuid_from_bytes(self.worker_id)
            if isinstance(self.worker_id, bytes)
            else self.worker_id,
            limits=self.limits,
            load_dependencies=None
            if self.request_uuid is None
            else functools.partial(_dependency_results, self.request_uuid),
        )


def _dependency_results(request_uuid: uuid.UUID) -> list[DependencyResult]:
    """What a workflow job's ``context.dependencies`` reads (see errands.workflows)."""
    return current.backend().dependency_results(request_uuid=request_uuid)


def _aware(value: datetime.datetime | float | None) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromtimestamp(value, datetime.UTC)


build_assignment = positional_builder(Assignment)  # per job in a child (see models)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def import_string(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_handler(middleware: Sequence[str]) -> Handler:
    """``job.run`` wrapped by each middleware, the first listed outermost.

    A middleware is a class built with the next handler and called with the job:
    ``Middleware(next_handler)(job)`` must call ``next_handler(job)`` and return its value.
    """
    handler: Handler = _run_job
    for path in reversed(middleware):
        handler = import_string(path)(handler)
    return handler


def _run_job(job: Job) -> Any:
    value = job.run()
    if inspect.isawaitable(value):
        import asyncio  # only for async jobs: it weighs on every child that imports this

        value = asyncio.run(_await(value))
    return value


async def _await(value: Any) -> Any:
    return await value


def execute(assignment: Assignment, handler: Handler) -> Outcome:
    """Build the job and run it through ``handler``; never raises, whatever the job
    raises (``SystemExit`` included), but the process's own Ctrl-C (``containment``).

    The run is traced as a CONSUMER span ``process {queue}`` linked to the span
    that enqueued the job; a failure sets the span's error status.
    """
    if not telemetry.tracing_wanted():
        # Without a tracer provider the span would go nowhere: skipping its context
        # manager saves about a fifth of what a trivial job costs in a child.
        return _execute(assignment, handler)
    with telemetry.processing(assignment) as record_outcome:
        outcome = _execute(assignment, handler)
        record_outcome(outcome)
    return outcome


def _execute(assignment: Assignment, handler: Handler) -> Outcome:
    started_at = utcnow()
    # BaseException: a job's SystemExit or KeyboardInterrupt is its failure, not the
    # child's (see containment).
    try:
        job = build_job(assignment.job_class, assignment.parameters)
    except BaseException as exc:
        if is_own_interrupt(exc):
            raise
        return failure(assignment, exc, started_at=started_at, job=None)
    context.attach(job, functools.partial(assignment.context, started_at))
    try:
        value = handler(job)
        stored = serialization.encode(
            value, job_class=assignment.job_class, parameter="return value"
        )
    except DeferJob as deferral:
        return _deferred(assignment, deferral, started_at, job)
    except BaseException as exc:
        if is_own_interrupt(exc):
            raise
        return failure(assignment, exc, started_at=started_at, job=job)
    return build_outcome(
        process_uuid=assignment.process_uuid,
        status=Status.SUCCESSFUL,
        started_at=started_at,
        ended_at=utcnow(),
        error_type="",
        error="",
        traceback="",
        return_value=stored,
        requeue=None,
    )


def _deferred(
    assignment: Assignment, deferral: DeferJob, started_at: datetime.datetime, job: Job
) -> Outcome:
    """DEFERRED until the job's delay passed (the parent enqueues it again, through its
    ``should_enqueue``: ``worker.deferrals``); ERRORED if no database can store the delay
    (stored as given, it would fail the whole batch's write), or if the deferral counts
    as an attempt and this was the last one (``lifecycle.deferred_after_last_attempt``)."""
    problem = delay_problem(deferral.delay)
    if problem is not None:
        bad = ValueError(
            f"{assignment.job_class}: DeferJob delay {problem}, got {deferral.delay!r}"
        )
        bad.__cause__ = deferral
        return failure(assignment, bad, started_at=started_at, job=job)
    attempt = assignment.retry_attempt
    if deferral.increment_retries:
        if not lifecycle.attempts_left(retries=assignment.retries, retry_attempt=attempt):
            ending = lifecycle.deferred_after_last_attempt(
                retries=assignment.retries, retry_attempt=attempt
            )
            return Outcome(
                process_uuid=assignment.process_uuid,
                status=ending.status,
                started_at=started_at,
                ended_at=utcnow(),
                error_type=ending.error_type,
                error=ending.error,
                traceback="".join(traceback.format_exception(deferral)),
                requeue=None,
            )
        attempt = lifecycle.next_attempt(attempt)
    return Outcome(
        process_uuid=assignment.process_uuid,
        status=Status.DEFERRED,
        started_at=started_at,
        ended_at=utcnow(),
        error=lifecycle.deferred(deferral.delay),
        requeue=Requeue(delay_seconds=float(deferral.delay), retry_attempt=attempt),
    )


def failure(
    assignment: Assignment,
    exc: BaseException,
    *,
    started_at: datetime.datetime | None,
    job: Job | None,
) -> Outcome:
    """An ERRORED outcome for what the job (or loading it) raised, with a retry when
    attempts remain and the job loads."""
    requeue, not_retried = retry_for(assignment, job, raised=type(exc))
    return Outcome(
        process_uuid=assignment.process_uuid,
        status=Status.ERRORED,
        started_at=started_at,
        ended_at=utcnow(),
        error_type=lifecycle.error_type_of(exc),
        error=str(exc),
        traceback=("".join(traceback.format_exception(exc)) if exc.__traceback__ else "")
        + not_retried,
        requeue=requeue,
    )


def ended(
    assignment: Assignment, ending: lifecycle.Ending, *, started_at: datetime.datetime | None
) -> Outcome:
    """The outcome of an attempt the worker's parent ended (a timeout, a dead child, an
    interruption, a cancel: see ``lifecycle``), retried as ``ending.retry`` says."""
    # The retry delay is asked for every ending, as it always was: a job whose
    # calculate_retry_delay raises gets its "Not retried" note whatever ended it.
    raised = lifecycle.counted_as_raised(ending)
    requeue, not_retried = retry_for(assignment, None, raised=raised)
    if ending.retry is lifecycle.Retry.SAME_ATTEMPT:
        requeue = Requeue(delay_seconds=0.0, retry_attempt=assignment.retry_attempt)
    elif ending.retry is lifecycle.Retry.NEVER:
        requeue = None
    return Outcome(
        process_uuid=assignment.process_uuid,
        status=ending.status,
        started_at=started_at,
        ended_at=utcnow(),
        error_type=ending.error_type,
        error=ending.error,
        traceback=not_retried,
        requeue=requeue,
    )


def retry_for(
    assignment: Assignment, job: Job | None, *, raised: type[BaseException] | None
) -> tuple[Requeue | None, str]:
    """The next attempt of a failed job (None when retries are used up, or the job's
    policies refuse a failure of class ``raised``), and why a job with retries left is
    not retried ("" when it is)."""
    if not lifecycle.attempts_left(
        retries=assignment.retries, retry_attempt=assignment.retry_attempt
    ):
        return None, ""
    attempt = lifecycle.next_attempt(assignment.retry_attempt)
    try:
        if job is None:
            job = build_job(assignment.job_class, assignment.parameters)
        if raised is not None:
            retry, why = lifecycle.retry_of_failure(
                raised, retry_on=job.retry_on, fail_on=job.fail_on
            )
            if retry is lifecycle.Retry.NEVER:
                return None, f"\nNot retried: {why}\n"
        delay = job.calculate_retry_delay(attempt)
        problem = delay_problem(delay)
        if problem is not None:
            raise ValueError(f"calculate_retry_delay({attempt}) {problem}, got {delay!r}")
    except BaseException as exc:  # a SystemExit there must not end the worker either
        if is_own_interrupt(exc):
            raise
        # A job that cannot be rebuilt will fail the same way again: do not retry it.
        logger.exception("cannot compute retry delay", extra={"job_class": assignment.job_class})
        why = f"{lifecycle.error_type_of(exc)}: {exc}"
        return None, f"\nNot retried: computing the retry delay raised {why}\n"
    return Requeue(delay_seconds=max(float(delay), 0.0), retry_attempt=attempt), ""
