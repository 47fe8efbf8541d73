"""OpenTelemetry contract: spans, links, attributes and metric values, read back from the
SDK's in-memory span exporter and metric reader (installed once as the global providers).

Job processes are spawned children: their spans are written to a file by
``telemetry_support`` (an ``import_modules`` entry) and read back here.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sample_jobs import Crash, DeferOnce, Echo, Fail, Mail
from staleness import backdate_heartbeat
from telemetry_support import SPANS_ENV, Refuse, Traced

import errands
from conftest import WorkerRunner, wait_for, worker_config
from errands import jobs, telemetry
from errands.backends import Backend
from errands.models import JobResult, Status, WorkerInfo
from errands.worker import Worker, execution

SENT = "messaging.client.sent.messages"
CONSUMED = "messaging.client.consumed.messages"
DURATION = "messaging.client.operation.duration"
WAIT = "errands.queue.wait.duration"
SUPPORT_DIR = Path(__file__).parent / "support"


# -- in-memory OpenTelemetry -------------------------------------------------------------


@dataclass
class Metrics:
    """One collection: metric name -> [(attributes, data point)]."""

    points: dict[str, list[tuple[dict[str, Any], Any]]]

    def matching(self, name: str, attributes: Mapping[str, Any]) -> list[Any]:
        return [
            point
            for attrs, point in self.points.get(name, [])
            if all(attrs.get(k) == v for k, v in attributes.items())
        ]

    def total(self, name: str, attributes: Mapping[str, Any] = {}) -> int:
        return sum(p.value for p in self.matching(name, attributes))

    def count(self, name: str, attributes: Mapping[str, Any] = {}) -> int:
        return sum(p.count for p in self.matching(name, attributes))

    def gauge(self, name: str, key: str) -> dict[Any, Any]:
        return {attrs.get(key): p.value for attrs, p in self.points.get(name, [])}


class Telemetry:
    """The process-wide SDK providers; counters and histograms are read as deltas."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(tracer_provider)
        delta = AggregationTemporality.DELTA
        self.reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))

    def errands_spans(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "errands"
            and (kind is None or s.kind is kind)
        ]

    def metrics(self) -> Metrics:
        points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(
                        (dict(p.attributes or {}), p) for p in metric.data.data_points
                    )
        return Metrics(points)

    def reset(self) -> None:
        telemetry.flush_pending_sends()
        self.exporter.clear()
        self.reader.get_metrics_data()  # drop the deltas of earlier tests


_installed: list[Telemetry] = []


@pytest.fixture
def otel() -> Telemetry:
    if not _installed:
        _installed.append(Telemetry())
    _installed[0].reset()
    return _installed[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def send_attributes(queue: str) -> dict[str, Any]:
    return {
        "messaging.system": "errands",
        "messaging.destination.name": queue,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
    }


# -- producer spans ----------------------------------------------------------------------


def test_enqueue_is_a_producer_span_whose_ids_the_request_stores(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    request = Echo(1).run_in_worker(queue="emails")
    assert request is not None
    [span] = otel.errands_spans()
    path, line = request.source.rsplit(":", 1)
    assert span.name == "send emails"
    assert span.kind is SpanKind.PRODUCER
    assert dict(span.attributes or {}) == {
        **send_attributes("emails"),
        "messaging.message.id": str(request.uuid),
        "errands.job.class": "sample_jobs.Echo",
        "code.file.path": __file__,
        "code.line.number": int(line),
    }
    assert path == __file__
    assert span.status.status_code is StatusCode.UNSET
    stored = backend.get(uuid=request.uuid)
    assert stored is not None
    assert (stored.trace_id, stored.span_id) == hex_ids(span)


def test_enqueue_joins_the_callers_trace(db_url: str, otel: Telemetry) -> None:
    with trace.get_tracer("web").start_as_current_span("POST /signup") as parent:
        Echo(1).run_in_worker()
    [send] = otel.errands_spans()
    assert send.parent is not None
    assert send.parent.span_id == parent.get_span_context().span_id


def test_enqueue_many_is_one_send_span_for_the_batch(db_url: str, otel: Telemetry) -> None:
    requests = errands.enqueue_many([Echo(1), Echo(2), Echo(3)])
    [span] = otel.errands_spans()
    assert span.name == "send default"
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in span.attributes
    assert {(r.trace_id, r.span_id) for r in requests if r} == {hex_ids(span)}
    assert otel.metrics().total(SENT, send_attributes("default")) == 3


def test_a_bulk_batch_stores_the_send_span_ids_with_every_request(
    db_url: str, otel: Telemetry
) -> None:
    """A batch large enough for the bulk path (COPY on PostgreSQL) keeps the links."""
    returned = errands.enqueue_many([Echo(n) for n in range(250)])
    [span] = otel.errands_spans()
    stored = errands.requests(limit=500)
    assert len(stored) == 250
    assert {(r.trace_id, r.span_id) for r in stored} == {hex_ids(span)}
    assert {(r.trace_id, r.span_id) for r in returned if r} == {hex_ids(span)}


def test_batch_across_queues_is_named_send_and_counted_per_queue(
    db_url: str, otel: Telemetry
) -> None:
    errands.enqueue_many([Echo(1), Mail(1), Mail(2)])
    [span] = otel.errands_spans()
    assert span.name == "send"
    assert span.attributes is not None
    assert "messaging.destination.name" not in span.attributes
    assert "errands.job.class" not in span.attributes
    measured = otel.metrics()
    assert measured.total(SENT, send_attributes("default")) == 1
    assert measured.total(SENT, send_attributes("mail")) == 2
    assert measured.count(DURATION, {"messaging.operation.name": "send"}) == 1


def test_skipped_enqueue_marks_the_span_and_is_not_counted(db_url: str, otel: Telemetry) -> None:
    assert Echo(1).run_in_worker(concurrency_key="only-one") is not None
    assert Echo(2).run_in_worker(concurrency_key="only-one") is None
    first, second = otel.errands_spans()
    assert second.attributes is not None
    assert second.attributes["errands.enqueue.skipped"] is True
    assert "messaging.message.id" not in second.attributes
    assert second.status.status_code is StatusCode.UNSET
    assert first.attributes is not None
    assert "errands.enqueue.skipped" not in first.attributes
    assert otel.metrics().total(SENT) == 1


def test_partly_skipped_batch_counts_the_skipped(db_url: str, otel: Telemetry) -> None:
    errands.enqueue_many([Mail(1), Mail(1), Mail(2)])
    [span] = otel.errands_spans()
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 2
    assert span.attributes["errands.enqueue.skipped_count"] == 1
    assert otel.metrics().total(SENT) == 2


def test_failed_enqueue_sets_error_status_and_is_counted_at_once(
    db_url: str, otel: Telemetry
) -> None:
    with pytest.raises(RuntimeError, match="refusing"):
        Refuse().run_in_worker()
    [span] = otel.errands_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in span.events] == ["exception"]
    measured = otel.metrics()
    assert measured.total(SENT, {"error.type": "RuntimeError"}) == 1
    assert measured.count(DURATION, {"error.type": "RuntimeError"}) == 1


# -- sent counter: only committed sends count ----------------------------------------------


def test_own_transaction_counts_only_after_commit(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    with telemetry.counting_sends(backend), backend.enqueue_transaction() as tx:
        jobs.enqueue_in(tx, [Echo(1), Echo(2)])
        assert otel.metrics().total(SENT) == 0  # inserted, not committed
    assert otel.metrics().total(SENT) == 2


def test_own_transaction_rolled_back_is_not_counted(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    with (
        pytest.raises(RuntimeError, match="after the insert"),
        telemetry.counting_sends(backend),
        backend.enqueue_transaction() as tx,
    ):
        [request] = jobs.enqueue_in(tx, [Echo(1)])
        raise RuntimeError("after the insert")
    assert request is not None
    assert backend.get(uuid=request.uuid) is None
    assert len(otel.errands_spans()) == 1  # the send happened, its transaction did not
    assert otel.metrics().total(SENT) == 0
    assert telemetry.flush_pending_sends() == 0


def connect(db_url: str, *, autocommit: bool = False) -> Any:
    """A connection of the application's own to errands' database."""
    if db_url.startswith("sqlite:"):
        return sqlite3.connect(
            db_url.removeprefix("sqlite:///"), isolation_level=None if autocommit else ""
        )
    return psycopg.connect(db_url, autocommit=autocommit)


@pytest.fixture
def caller_connection(db_url: str) -> Iterator[Any]:
    conn = connect(db_url)
    try:
        yield conn
    finally:
        conn.close()


def test_callers_transaction_is_counted_once_it_commits(
    db_url: str, caller_connection: Any, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(connection=caller_connection)
    assert telemetry.flush_pending_sends() == 1  # the caller has not committed yet
    assert otel.metrics().total(SENT) == 0
    caller_connection.commit()
    assert telemetry.flush_pending_sends() == 0
    assert otel.metrics().total(SENT, send_attributes("default")) == 1


def test_callers_transaction_rolled_back_is_never_counted(
    db_url: str, caller_connection: Any, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(connection=caller_connection)
    caller_connection.rollback()
    telemetry.flush_pending_sends()
    assert otel.metrics().total(SENT) == 0
    # Committing later work on the same connection does not count the rolled-back job.
    caller_connection.commit()
    telemetry.flush_pending_sends()
    assert otel.metrics().total(SENT) == 0


@pytest.mark.postgres_only
def test_callers_rollback_is_settled_without_a_flush(
    db_url: str, caller_connection: Any, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(connection=caller_connection)
    caller_connection.rollback()
    # psycopg connections are watched: the ended transaction is seen and dropped.
    wait_for(lambda: telemetry.waiting() == 0, timeout=5)
    assert otel.metrics().total(SENT) == 0


@pytest.mark.slow
def test_callers_commit_is_counted_by_the_background_check(
    db_url: str, caller_connection: Any, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(connection=caller_connection)
    caller_connection.commit()
    counted = [0]

    def seen() -> bool:
        counted[0] += otel.metrics().total(SENT)
        return counted[0] >= 1

    wait_for(seen, timeout=10)
    assert counted[0] == 1


def test_autocommit_connection_is_counted_at_once(db_url: str, otel: Telemetry) -> None:
    conn = connect(db_url, autocommit=True)
    try:
        Echo(1).run_in_worker(connection=conn)
    finally:
        conn.close()
    assert otel.metrics().total(SENT) == 1


# -- consumer spans --------------------------------------------------------------------


def claim_one(backend: Backend) -> Any:
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="test", pid=os.getpid(), queues=[])
    )
    [job] = backend.claim(worker_id=worker_id, queues=[], limit=1)
    return job


def run_in_process(backend: Backend) -> tuple[Any, Any]:
    job = claim_one(backend)
    outcome = execution.execute(execution.Assignment.of(job), execution.build_handler(()))
    return job, outcome


def test_process_span_is_a_consumer_linked_to_the_send(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    request = Echo(7).run_in_worker(queue="emails")
    assert request is not None
    job, outcome = run_in_process(backend)
    assert outcome.return_value == 7
    send, process = otel.errands_spans()
    assert process.name == "process emails"
    assert process.kind is SpanKind.CONSUMER
    [link] = process.links
    assert link.context.trace_id == send.context.trace_id
    assert link.context.span_id == send.context.span_id
    assert dict(process.attributes or {}) == {
        "messaging.system": "errands",
        "messaging.destination.name": "emails",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.message.id": str(request.uuid),
        "errands.job.class": "sample_jobs.Echo",
        "errands.job.uuid": str(job.uuid),
        "errands.job.attempt": 0,
        "errands.outcome": "successful",
        "code.function.name": "sample_jobs.Echo.run",
    }
    assert process.status.status_code is StatusCode.UNSET


def test_failed_job_sets_error_status_and_error_type(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    Fail("bad input").run_in_worker(retries=2)
    _, outcome = run_in_process(backend)
    [process] = otel.errands_spans(SpanKind.CONSUMER)
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "bad input"
    assert process.attributes is not None
    assert process.attributes["error.type"] == "ValueError"
    assert process.attributes["errands.outcome"] == "errored"
    [event] = process.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert "bad input" in str(event.attributes["exception.stacktrace"])
    assert outcome.requeue is not None  # a retry is still planned


def test_automatic_retry_links_to_the_original_send(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    request = Fail().run_in_worker(retries=1)
    assert request is not None
    job, outcome = run_in_process(backend)
    backend.complete_many(outcomes=[outcome])  # writes the result and the retry
    [retry] = backend.claim(worker_id=job.worker_id, queues=[], limit=1)
    execution.execute(execution.Assignment.of(retry), execution.build_handler(()))
    send, first, second = otel.errands_spans()
    assert [dict(s.attributes or {})["errands.job.attempt"] for s in (first, second)] == [0, 1]
    for process in (first, second):
        [link] = process.links
        assert link.context.span_id == send.context.span_id


def test_job_spans_are_children_of_the_process_span(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    Traced().run_in_worker()
    run_in_process(backend)
    [inner] = [s for s in otel.exporter.get_finished_spans() if s.name == "inner work"]
    [process] = otel.errands_spans(SpanKind.CONSUMER)
    assert inner.parent is not None
    assert inner.parent.span_id == process.context.span_id


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_worker_job_processes_emit_linked_process_spans(
    db_url: str,
    run_worker: WorkerRunner,
    otel: Telemetry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPANS_ENV, str(spans_file))
    ok = Echo(1).run_in_worker()
    bad = Fail().run_in_worker()
    assert ok is not None and bad is not None
    sends = {r.uuid: (r.trace_id, r.span_id) for r in (ok, bad)}
    run_worker(
        until=lambda: len(errands.results()) == 2,
        import_modules=("sample_jobs", "telemetry_support"),
    )
    processes = {s["attributes"]["messaging.message.id"]: s for s in read_spans(spans_file)}
    assert set(processes) == {str(ok.uuid), str(bad.uuid)}
    for request_uuid, (trace_id, span_id) in sends.items():
        span = processes[str(request_uuid)]
        assert span["name"] == "process default"
        assert span["kind"] == "CONSUMER"
        assert span["links"] == [[trace_id, span_id]]
    assert processes[str(ok.uuid)]["status"] == "UNSET"
    assert processes[str(bad.uuid)]["status"] == "ERROR"
    assert processes[str(bad.uuid)]["attributes"]["error.type"] == "ValueError"


@pytest.mark.slow
def test_idle_worker_emits_no_spans(
    db_url: str, otel: Telemetry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPANS_ENV, str(spans_file))
    config = worker_config(db_url, import_modules=("sample_jobs", "telemetry_support"))
    worker = Worker(config=config)
    worker.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            worker.turn()  # polls about 20 times
    finally:
        worker.stop()
        worker.shut_down()
    assert otel.exporter.get_finished_spans() == ()
    assert read_spans(spans_file) == []


# -- worker metrics ----------------------------------------------------------------------


@pytest.mark.slow
def test_worker_counts_consumed_by_outcome_with_durations(
    db_url: str, run_worker: WorkerRunner, otel: Telemetry, tmp_path: Path
) -> None:
    Echo(1).run_in_worker(queue="emails")
    Fail().run_in_worker(queue="emails")
    Crash().run_in_worker(queue="emails")
    DeferOnce(str(tmp_path / "defer.txt")).run_in_worker(queue="emails")
    run_worker(until=lambda: len(errands.results()) == 5)
    measured = otel.metrics()
    emails = {"messaging.destination.name": "emails", "messaging.operation.name": "process"}
    by_outcome = {
        outcome: measured.total(CONSUMED, {**emails, "errands.outcome": outcome})
        for outcome in ("successful", "errored", "lost", "deferred", "cancelled")
    }
    assert by_outcome == {"successful": 2, "errored": 1, "lost": 1, "deferred": 1, "cancelled": 0}
    assert measured.total(CONSUMED, {"errands.outcome": "errored", "error.type": "ValueError"}) == 1
    assert measured.total(CONSUMED, {"errands.outcome": "lost"}) == measured.total(
        CONSUMED, {"error.type": "errands.worker.ProcessDied"}
    )
    assert measured.count(DURATION, emails) == 5
    assert measured.count(WAIT, {"messaging.destination.name": "emails"}) == 5
    [wait] = measured.matching(WAIT, {})
    assert 0 <= wait.min <= wait.max < 60


def test_results_never_started_count_without_durations(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    request = Echo(1).run_in_worker()
    assert request is not None
    cancelled = backend.cancel_pending(uuid=request.uuid)
    assert isinstance(cancelled, JobResult)
    telemetry.record_results([cancelled])
    measured = otel.metrics()
    assert measured.total(CONSUMED, {"errands.outcome": "cancelled"}) == 1
    assert "error.type" not in measured.matching(CONSUMED, {})[0].attributes
    assert measured.count(DURATION, {"messaging.operation.name": "process"}) == 0
    assert measured.count(WAIT) == 0


@pytest.mark.slow
def test_a_delayed_jobs_queue_wait_starts_at_its_due_time(
    db_url: str, run_worker: WorkerRunner, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(queue="later", delay=1.5)
    run_worker(until=lambda: len(errands.results()) == 1, timeout=30)
    (result,) = errands.results()
    assert result.started_at is not None and result.start_at is not None
    assert (result.started_at - result.requested_at).total_seconds() >= 1.5  # it was delayed
    [wait] = otel.metrics().matching(WAIT, {"messaging.destination.name": "later"})
    assert wait.count == 1
    # From the due time: the worker polls every 0.05 s here; the delay is not a wait.
    assert 0 <= wait.max < 1.0
    assert wait.max == pytest.approx((result.started_at - result.start_at).total_seconds())


@pytest.mark.parametrize(
    ("due_after", "expected_wait"),
    [(None, 3.0), (1.0, 2.0), (-1.0, 3.0)],
    ids=["no due time (old result)", "delayed", "due before the enqueue"],
)
def test_queue_wait_is_measured_from_the_later_of_enqueue_and_due_time(
    otel: Telemetry, due_after: float | None, expected_wait: float
) -> None:
    requested = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    started = requested + datetime.timedelta(seconds=3)
    due = None if due_after is None else requested + datetime.timedelta(seconds=due_after)
    result = JobResult(
        uuid=uuid.uuid4(),
        process_uuid=uuid.uuid4(),
        request_uuid=uuid.uuid4(),
        requested_at=requested,
        started_at=started,
        ended_at=started + datetime.timedelta(seconds=0.5),
        created_at=started,
        status=Status.SUCCESSFUL,
        worker_id=None,
        job_class="tests.Job",
        parameters={},
        queue="timed",
        priority=0,
        retries=0,
        retry_attempt=0,
        concurrency_key="",
        timeout=None,
        source="",
        trace_id=None,
        span_id=None,
        start_at=due,
    )
    telemetry.record_results([result])
    [wait] = otel.metrics().matching(WAIT, {"messaging.destination.name": "timed"})
    assert (wait.count, wait.sum) == (1, pytest.approx(expected_wait))


@pytest.mark.slow
def test_worker_gauges_report_queues_processes_and_workers(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(queue="emails")
    Echo(2).run_in_worker(queue="emails", delay=3600)
    Echo(3).run_in_worker(queue="other")  # not this worker's queue
    silent = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=silent, hostname="gone", pid=1, queues=["emails"])
    )
    backdate_heartbeat(db_url, silent, 60)  # its heartbeat is stale (heartbeat_timeout 1 s)
    worker = Worker(queues=["emails", "empty"], config=worker_config(db_url, heartbeat_timeout=1))
    worker.start()
    try:
        measured = otel.metrics()
    finally:
        worker.stop()
        worker.shut_down()
    queue = "messaging.destination.name"
    assert measured.gauge("errands.queue.depth", queue) == {"emails": 1, "empty": 0}
    assert measured.gauge("errands.queue.scheduled", queue) == {"emails": 1, "empty": 0}
    assert measured.gauge("errands.running", queue) == {"emails": 0, "empty": 0}
    ages = measured.gauge("errands.queue.oldest.age", queue)
    assert set(ages) == {"emails", "empty"} and 0 <= ages["emails"] < 60
    assert measured.gauge("errands.worker.processes", "none") == {None: 2}
    assert measured.gauge("errands.workers", "errands.worker.state") == {"active": 1, "stale": 1}
    after = otel.metrics()  # a finished worker is no longer observed
    assert after.gauge("errands.worker.processes", "none") == {}
    assert after.gauge("errands.queue.depth", queue) == {}


# -- without OpenTelemetry -----------------------------------------------------------------


@pytest.mark.slow
def test_errands_runs_without_opentelemetry(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("opentelemetry is not installed")\n')
    script = textwrap.dedent(
        f"""
        import dataclasses, sqlite3, sys, time
        import errands
        from errands import settings, telemetry
        from errands.worker import Worker
        import telemetry_support

        assert "opentelemetry" not in sys.modules and not telemetry.ENABLED
        url = "sqlite:///{tmp_path / "errands.db"}"
        errands.configure(database_url=url)
        errands.backend().migrate()
        telemetry_support.TelemetryState().run_in_worker()
        conn = sqlite3.connect("{tmp_path / "errands.db"}")
        telemetry_support.TelemetryState().run_in_worker(connection=conn)
        conn.commit()
        config = dataclasses.replace(
            settings.load(environ={{}}), database_url=url, poll_interval=0.05,
            import_modules=("telemetry_support",), worker_max_processes=1,
        )
        worker = Worker(config=config)
        worker.start()
        deadline = time.monotonic() + 60
        while len(errands.results()) < 2 and time.monotonic() < deadline:
            worker.turn()
        worker.stop()
        worker.shut_down()
        print(sorted((str(r.status), r.return_value) for r in errands.results()))
        """
    )
    printed = run_python(script, cwd=tmp_path, path=[tmp_path / "shadow", SUPPORT_DIR])
    # Both jobs ran, and their job processes had no telemetry either.
    assert printed.strip() == "[('SUCCESSFUL', False), ('SUCCESSFUL', False)]"


def run_python(script: str, *, cwd: Path, path: list[Path]) -> str:
    """Run ``script`` in a new interpreter (fresh global providers); what it printed."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_meter_provider_installed_after_the_worker_started_gets_the_later_results(
    tmp_path: Path,
) -> None:
    """The worker asks per batch whether results are measured, not once at start."""
    script = textwrap.dedent(
        f"""
        import dataclasses, time
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import errands
        from errands import settings
        from errands.worker import Worker
        from sample_jobs import Echo

        url = "sqlite:///{tmp_path / "errands.db"}"
        errands.configure(database_url=url)
        errands.backend().migrate()
        config = dataclasses.replace(
            settings.load(environ={{}}), database_url=url, poll_interval=0.05,
            import_modules=("sample_jobs",), worker_max_processes=1,
        )
        worker = Worker(config=config)
        worker.start()

        def run_until(count):
            deadline = time.monotonic() + 60
            while len(errands.results()) < count and time.monotonic() < deadline:
                worker.turn()
            worker.flush()

        errands.enqueue_many([Echo(n) for n in range(2)])
        run_until(2)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        errands.enqueue_many([Echo(n) for n in range(3)])
        run_until(5)
        worker.stop()
        while not worker.finished():
            worker.turn()
        worker.shut_down()
        consumed = 0
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "{CONSUMED}":
                        consumed += sum(p.value for p in metric.data.data_points)
        print(len(errands.results()), consumed)
        """
    )
    printed = run_python(script, cwd=tmp_path, path=[SUPPORT_DIR])
    # Five jobs ran; the three that ended after the provider was installed were counted.
    assert printed.split() == ["5", "3"]


def test_jobs_a_claim_ends_as_expired_are_counted_as_cancelled_with_their_type(
    db_url: str, backend: Backend, otel: Telemetry
) -> None:
    Echo(1).run_in_worker(queue="mail", expires=0.05)
    time.sleep(0.1)
    claimed = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=10)
    assert list(claimed) == [] and claimed.expired == ("mail",)
    telemetry.record_expired(claimed.expired)  # what the worker's intake does with them
    measured = otel.metrics()
    mail = {"messaging.destination.name": "mail", "errands.outcome": "cancelled"}
    assert measured.total(CONSUMED, {**mail, "error.type": "errands.Expired"}) == 1
