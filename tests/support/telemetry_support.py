"""Support for the telemetry tests, imported by workers through ``import_modules``.

In a worker's job process (a spawned child) with ``ERRANDS_TEST_SPANS`` set, it
installs an OpenTelemetry SDK tracer provider that appends every finished span to
that file as one JSON line, so the test process can read the children's spans.
It must stay importable without OpenTelemetry (the no-telemetry test uses it).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

from errands import Job, register_job, telemetry

SPANS_ENV = "ERRANDS_TEST_SPANS"


@register_job
class TelemetryState(Job):
    """Returns whether errands' telemetry is enabled in the job process."""

    def run(self) -> bool:
        return telemetry.ENABLED


@register_job
class Refuse(Job):
    """Its enqueue fails: ``should_enqueue`` raises."""

    def should_enqueue(self, concurrency_key: str) -> bool:
        raise RuntimeError("refusing to decide")


@register_job
class Traced(Job):
    """Makes a span of its own while it runs."""

    def run(self) -> None:
        from opentelemetry import trace

        with trace.get_tracer("jobs").start_as_current_span("inner work"):
            pass


def span_as_json(span: Any) -> dict[str, Any]:
    """The fields the tests check, from an SDK ``ReadableSpan``."""
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "links": [
            [f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"] for link in span.links
        ],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }


def _install_file_exporter(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for span in spans:
                line = json.dumps(span_as_json(span)) + "\n"
                # One short O_APPEND write per span: children do not interleave lines.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


if os.environ.get(SPANS_ENV) and multiprocessing.parent_process() is not None:
    _install_file_exporter(os.environ[SPANS_ENV])
