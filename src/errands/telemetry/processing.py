"""The CONSUMER span of one job's run, in the process that runs it."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from errands.models import FAILED_STATUSES, Outcome
from errands.telemetry import conventions
from errands.telemetry.conventions import (
    CODE_FUNCTION,
    ENABLED,
    JOB_ATTEMPT,
    JOB_CLASS,
    JOB_UUID,
    MESSAGE_ID,
    OUTCOME,
)

if ENABLED:
    from opentelemetry import trace

if TYPE_CHECKING:
    from errands.worker.execution import Assignment


def tracing_wanted() -> bool:
    """Whether a job's run is traced at all (checked per job: a provider may be set
    at any time)."""
    return ENABLED and conventions.tracing_configured()


@contextlib.contextmanager
def processing(assignment: Assignment) -> Iterator[Callable[[Outcome], None]]:
    """Trace one job's run as a CONSUMER span ``process {queue}``, current while it
    runs (the job's own spans are its children) and linked to the send span.
    Call the yielded function with the outcome to record it on the span. Only for
    when :func:`tracing_wanted`: the caller checks first, so that an untraced job
    does not pay for this context manager."""
    with conventions.tracer().start_as_current_span(
        f"process {assignment.queue}",
        kind=trace.SpanKind.CONSUMER,
        attributes=_process_attributes(assignment),
        links=_links(assignment),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield functools.partial(_describe_outcome, span)


def _process_attributes(assignment: Assignment) -> dict[str, Any]:
    attributes = conventions.attributes("process", assignment.queue)
    attributes[JOB_CLASS] = assignment.job_class
    attributes[JOB_UUID] = str(assignment.process_uuid)
    # errands.job.attempt keeps its documented meaning (docs/opentelemetry.md): the
    # stored retry_attempt, 0 for the first run, 1 for the first retry. Logs, the CLI
    # and the dashboard count attempts from 1 (formatting.attempt_number) instead.
    attributes[JOB_ATTEMPT] = assignment.retry_attempt
    attributes[CODE_FUNCTION] = f"{assignment.job_class}.run"
    if assignment.request_uuid is not None:
        attributes[MESSAGE_ID] = str(assignment.request_uuid)
    return attributes


def _links(assignment: Assignment) -> list[trace.Link]:
    if not assignment.trace_id or not assignment.span_id:
        return []
    try:
        context = trace.SpanContext(
            trace_id=int(assignment.trace_id, 16),
            span_id=int(assignment.span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    except ValueError:
        return []  # not ids errands wrote: no link rather than a failed job
    return [trace.Link(context)] if context.is_valid else []


def _describe_outcome(span: trace.Span, outcome: Outcome) -> None:
    span.set_attribute(OUTCOME, outcome.status.value.lower())
    if outcome.status not in FAILED_STATUSES:
        return
    conventions.mark_failed(span, outcome.error_type, outcome.error)
    span.add_event(
        "exception",
        {
            "exception.type": outcome.error_type,
            "exception.message": outcome.error,
            "exception.stacktrace": outcome.traceback,
        },
    )
