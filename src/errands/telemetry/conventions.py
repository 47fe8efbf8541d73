"""Names, attributes and instruments shared by errands' spans and metrics.

Attribute names follow the OpenTelemetry messaging semantic conventions; errands'
own are prefixed ``errands.``. Tracer and meter come from the global providers
at first use (proxies until the application sets providers, which they follow).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

try:
    from opentelemetry import metrics, trace
except ImportError:  # the ``telemetry`` extra is not installed: no telemetry at all
    ENABLED = False
else:
    ENABLED = True

SYSTEM = "errands"
# Messaging semantic-convention attributes.
MESSAGING_SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
MESSAGE_ID = "messaging.message.id"
BATCH_COUNT = "messaging.batch.message_count"
ERROR_TYPE = "error.type"
CODE_FILE = "code.file.path"
CODE_LINE = "code.line.number"
CODE_FUNCTION = "code.function.name"
# errands' own attributes.
JOB_CLASS = "errands.job.class"
JOB_UUID = "errands.job.uuid"
JOB_ATTEMPT = "errands.job.attempt"
OUTCOME = "errands.outcome"
SKIPPED = "errands.enqueue.skipped"
SKIPPED_COUNT = "errands.enqueue.skipped_count"
WORKER_STATE = "errands.worker.state"


@functools.cache
def tracer() -> trace.Tracer:
    return trace.get_tracer("errands")


@functools.cache
def meter() -> metrics.Meter:
    return metrics.get_meter("errands")


@dataclasses.dataclass(frozen=True)
class Instruments:
    sent: metrics.Counter
    consumed: metrics.Counter
    duration: metrics.Histogram
    queue_wait: metrics.Histogram


@functools.cache
def instruments() -> Instruments:
    return Instruments(
        sent=meter().create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Jobs enqueued (counted when their transaction commits).",
        ),
        consumed=meter().create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Jobs that reached a result, by errands.outcome.",
        ),
        duration=meter().create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of enqueues (send) and of job runs (process).",
        ),
        queue_wait=meter().create_histogram(
            "errands.queue.wait.duration",
            unit="s",
            description="Time from a job's request to the start of its run.",
        ),
    )


def tracing_configured() -> bool:
    """Whether the application installed a tracer provider (else spans go nowhere).

    Checked for each job (a provider may be set at any time), at the cost of a
    global lookup: a no-op span costs more than running a trivial job.
    """
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def metrics_configured() -> bool:
    """Whether the application installed a meter provider (else records go nowhere)."""
    provider = metrics.get_meter_provider()
    return not isinstance(provider, metrics.NoOpMeterProvider) and (
        type(provider).__name__ != "_ProxyMeterProvider"
    )


def attributes(operation: str, queue: str | None) -> dict[str, Any]:
    """The messaging attributes every span and metric of ``operation`` carries."""
    found: dict[str, Any] = {
        MESSAGING_SYSTEM: SYSTEM,
        OPERATION_NAME: operation,
        OPERATION_TYPE: operation,
    }
    if queue is not None:
        found[DESTINATION] = queue
    return found


def mark_failed(span: trace.Span, error_type: str, message: str) -> None:
    span.set_status(trace.Status(trace.StatusCode.ERROR, message))
    span.set_attribute(ERROR_TYPE, error_type)


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
