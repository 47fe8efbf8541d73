"""The PRODUCER span of an enqueue, and the sends it makes, counted once committed.

One enqueue call (``run_in_worker``, ``enqueue_many``, a schedule, a retry) is one
span ``send {queue}``: a batch is one send, and every request it inserts stores
the span's trace and span ids, so each job's process span links back to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from errands.models import JobRequest, NewRequest
from errands.telemetry import conventions
from errands.telemetry.conventions import (
    BATCH_COUNT,
    CODE_FILE,
    CODE_LINE,
    ENABLED,
    ERROR_TYPE,
    JOB_CLASS,
    MESSAGE_ID,
    SKIPPED,
    SKIPPED_COUNT,
)

if ENABLED:
    from opentelemetry import trace


@dataclasses.dataclass(frozen=True)
class Sent:
    """Messages one enqueue call inserted, to count once they are committed."""

    counts: dict[str, int]  # queue -> messages
    queue: str | None  # the destination, when the call had one queue
    started: float  # monotonic, the enqueue call's start
    ended: float  # monotonic, the enqueue call's end (before any commit)
    probe: uuid.UUID  # one inserted request: present in the database iff committed


# The sends made inside ``counting_sends`` (None outside: counted at once).
collector: contextvars.ContextVar[list[Sent] | None] = contextvars.ContextVar(
    "errands_sends", default=None
)


@dataclasses.dataclass
class Sending:
    """One traced enqueue call; ``requests`` carry the send span's trace context."""

    requests: list[NewRequest]
    span: Any = None
    queue: str | None = None
    started: float = 0.0

    def sent(self, results: Sequence[JobRequest | None]) -> None:
        """Describe on the span what was enqueued and skipped; count the enqueued."""
        if self.span is None:
            return
        enqueued = [r for r in results if r is not None]
        _describe_sent(self.span, len(self.requests), enqueued)
        if not enqueued:
            return  # skipped enqueues are visible in spans only: nothing was sent
        counts: dict[str, int] = {}
        for request in enqueued:
            counts[request.queue] = counts.get(request.queue, 0) + 1
        sent = Sent(counts, self.queue, self.started, time.monotonic(), enqueued[0].uuid)
        pending = collector.get()
        if pending is None:
            record_sent(sent, sent.ended)
        else:
            pending.append(sent)


@contextlib.contextmanager
def sending(requests: list[NewRequest]) -> Iterator[Sending]:
    """Trace one enqueue call as a PRODUCER span ``send {queue}`` (``send`` for a batch
    spanning several queues). An exception marks the span failed and is counted at
    once with ``error.type``, then propagates."""
    if not ENABLED or not requests:
        yield Sending(requests)
        return
    queues = {r.queue for r in requests}
    queue = next(iter(queues)) if len(queues) == 1 else None
    name = f"send {queue}" if queue is not None else "send"
    started = time.monotonic()
    with conventions.tracer().start_as_current_span(
        name,
        kind=trace.SpanKind.PRODUCER,
        attributes=_send_attributes(requests, queue),
        record_exception=True,
        set_status_on_exception=False,
    ) as span:
        try:
            yield Sending(_with_trace_context(requests, span), span, queue, started)
        except Exception as exc:
            conventions.mark_failed(span, conventions.type_name(exc), str(exc))
            _record_failed_send(requests, queue, started, conventions.type_name(exc))
            raise


def _send_attributes(requests: Sequence[NewRequest], queue: str | None) -> dict[str, Any]:
    attributes = conventions.attributes("send", queue)
    classes = {r.job_class for r in requests}
    if len(classes) == 1:
        attributes[JOB_CLASS] = requests[0].job_class
    path, _, line = requests[0].source.rpartition(":")
    if path and line.isdigit() and all(r.source == requests[0].source for r in requests):
        attributes[CODE_FILE] = path
        attributes[CODE_LINE] = int(line)
    return attributes


def _with_trace_context(requests: list[NewRequest], span: trace.Span) -> list[NewRequest]:
    context = span.get_span_context()
    if not context.is_valid:
        return requests
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    return [dataclasses.replace(r, trace_id=trace_id, span_id=span_id) for r in requests]


def _describe_sent(span: trace.Span, attempted: int, enqueued: list[JobRequest]) -> None:
    if attempted == 1 and enqueued:
        span.set_attribute(MESSAGE_ID, str(enqueued[0].uuid))
    elif attempted > 1:
        span.set_attribute(BATCH_COUNT, len(enqueued))
        if 0 < len(enqueued) < attempted:
            span.set_attribute(SKIPPED_COUNT, attempted - len(enqueued))
    if not enqueued:
        span.set_attribute(SKIPPED, True)


def record_sent(sent: Sent, ended: float) -> None:
    """Count a committed send; its duration runs from the call's start to ``ended``."""
    instruments = conventions.instruments()
    for queue, count in sent.counts.items():
        instruments.sent.add(count, conventions.attributes("send", queue))
    instruments.duration.record(ended - sent.started, conventions.attributes("send", sent.queue))


def _record_failed_send(
    requests: Sequence[NewRequest], queue: str | None, started: float, error_type: str
) -> None:
    # Failures are counted at once (nothing will commit) so errors stay visible.
    instruments = conventions.instruments()
    for request in requests:
        failed = {**conventions.attributes("send", request.queue), ERROR_TYPE: error_type}
        instruments.sent.add(1, failed)
    attributes = {**conventions.attributes("send", queue), ERROR_TYPE: error_type}
    instruments.duration.record(time.monotonic() - started, attributes)
