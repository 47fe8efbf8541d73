"""OpenTelemetry traces and metrics of errands; a cheap no-op without ``opentelemetry-api``.

errands never configures OpenTelemetry: it uses the global tracer and meter
providers, so spans and metrics go wherever the application's SDK sends them
(and nowhere when it has none). Names and attributes follow the messaging
semantic conventions; the full list is in the README, "Monitoring".

Where each signal is made:

* enqueue (any process): a PRODUCER span ``send {queue}`` around deciding and
  inserting; its ids are stored with every request it inserted. The sent counter
  and the send duration are recorded only once the requests are committed
  (:func:`counting_sends`).
* job process (a worker's child): a CONSUMER span ``process {queue}`` linked to
  the send span (:func:`processing`).
* worker parent: the consumed counter, process duration and queue wait of every
  result it writes (:func:`record_results`), and observable gauges computed from
  cached stats (:func:`register_worker_gauges`).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from errands.models import FAILED_STATUSES, JobRequest, JobResult, NewRequest, Outcome, Stats

if TYPE_CHECKING:
    from errands.backends.base import Backend
    from errands.execution import Assignment
    from errands.worker import Worker

try:
    from opentelemetry import metrics, trace
except ImportError:  # the ``telemetry`` extra is not installed: no telemetry at all
    ENABLED = False
else:
    ENABLED = True

logger = logging.getLogger("errands")

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

STATS_MAX_AGE = 5.0  # seconds the gauges reuse one stats query
PENDING_CHECK_INTERVAL = 0.5  # seconds between looks at callers' open transactions
PENDING_MAX_WAIT = 300.0  # seconds after which an unseen commit counts as a rollback


# -- providers -----------------------------------------------------------------------


@functools.cache
def _tracer() -> trace.Tracer:
    # A proxy until the application sets a provider; it follows the provider after.
    return trace.get_tracer("errands")


@dataclasses.dataclass(frozen=True)
class _Instruments:
    sent: metrics.Counter
    consumed: metrics.Counter
    duration: metrics.Histogram
    queue_wait: metrics.Histogram


@functools.cache
def _instruments() -> _Instruments:
    meter = metrics.get_meter("errands")
    return _Instruments(
        sent=meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Jobs enqueued (counted when their transaction commits).",
        ),
        consumed=meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Jobs that reached a result, by errands.outcome.",
        ),
        duration=meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of enqueues (send) and of job runs (process).",
        ),
        queue_wait=meter.create_histogram(
            "errands.queue.wait.duration",
            unit="s",
            description="Time from a job's request to the start of its run.",
        ),
    )


def _metrics_configured() -> bool:
    """Whether the application installed a meter provider (else records go nowhere)."""
    provider = metrics.get_meter_provider()
    return not isinstance(provider, metrics.NoOpMeterProvider) and (
        type(provider).__name__ != "_ProxyMeterProvider"
    )


def _attributes(operation: str, queue: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: SYSTEM,
        OPERATION_NAME: operation,
        OPERATION_TYPE: operation,
    }
    if queue is not None:
        attributes[DESTINATION] = queue
    return attributes


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


# -- producer ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sent:
    """Messages one enqueue call inserted, to count once they are committed."""

    counts: dict[str, int]  # queue -> messages
    queue: str | None  # the destination, when the call had one queue
    started: float  # monotonic
    probe: uuid.UUID  # one inserted request: present in the database iff committed


# The sends made inside ``counting_sends`` (None outside: counted at once).
_collector: contextvars.ContextVar[list[_Sent] | None] = contextvars.ContextVar(
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
        sent = _Sent(counts, self.queue, self.started, enqueued[0].uuid)
        collector = _collector.get()
        if collector is None:
            _record_sent(sent, time.monotonic())
        else:
            collector.append(sent)


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
    with _tracer().start_as_current_span(
        name,
        kind=trace.SpanKind.PRODUCER,
        attributes=_send_attributes(requests, queue),
        record_exception=True,
        set_status_on_exception=False,
    ) as span:
        try:
            yield Sending(_with_trace_context(requests, span), span, queue, started)
        except Exception as exc:
            _fail(span, _type_name(exc), str(exc))
            _record_failed_send(requests, queue, started, _type_name(exc))
            raise


def _send_attributes(requests: Sequence[NewRequest], queue: str | None) -> dict[str, Any]:
    attributes = _attributes("send", queue)
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


def _fail(span: trace.Span, error_type: str, message: str) -> None:
    span.set_status(trace.Status(trace.StatusCode.ERROR, message))
    span.set_attribute(ERROR_TYPE, error_type)


def _record_sent(sent: _Sent, now: float) -> None:
    instruments = _instruments()
    for queue, count in sent.counts.items():
        instruments.sent.add(count, _attributes("send", queue))
    instruments.duration.record(now - sent.started, _attributes("send", sent.queue))


def _record_failed_send(
    requests: Sequence[NewRequest], queue: str | None, started: float, error_type: str
) -> None:
    # Failures are counted at once (nothing will commit) so errors stay visible.
    instruments = _instruments()
    for request in requests:
        instruments.sent.add(1, {**_attributes("send", request.queue), ERROR_TYPE: error_type})
    attributes = {**_attributes("send", queue), ERROR_TYPE: error_type}
    instruments.duration.record(time.monotonic() - started, attributes)


# -- counting sends on commit ---------------------------------------------------------


@contextlib.contextmanager
def counting_sends(backend: Backend, connection: Any | None = None) -> Iterator[None]:
    """Count the sends made in the block once the transaction they joined has committed.

    Wrap the block that opens the enqueue transaction: errands' own transaction
    (``connection=None``) has committed when the block exits cleanly, and so has a
    caller's connection left outside a transaction (autocommit). A caller's open
    transaction commits later, out of errands' sight (psycopg and sqlite3 have no
    commit hook): its sends wait until a background check sees the transaction
    ended and the requests present (committed: counted) or absent (rolled back:
    dropped). A block that raises counts nothing: its transaction rolled back.
    """
    if not ENABLED:
        yield
        return
    sends: list[_Sent] = []
    token = _collector.set(sends)
    try:
        yield
    finally:
        _collector.reset(token)
    if not sends:
        return
    if connection is None or not _transaction_open(connection):
        now = time.monotonic()
        for sent in sends:
            _record_sent(sent, now)
    elif _metrics_configured():
        _pending.add(_Waiting(backend, _connection_state(connection), sends))


def flush_pending_sends() -> int:
    """Settle now the sends waiting for callers' transactions; return how many still wait.

    For tests and for short scripts; a daemon thread does this every
    ``PENDING_CHECK_INTERVAL`` seconds anyway, and once more at exit.
    """
    return _pending.resolve(force=True)


def _transaction_open(connection: Any) -> bool:
    """Whether a caller's psycopg or sqlite3 connection is inside a transaction."""
    try:
        if hasattr(connection, "in_transaction"):  # sqlite3
            return bool(connection.in_transaction)
        if connection.closed:
            return False
        return bool(connection.info.transaction_status.name != "IDLE")
    except Exception:  # a closed sqlite3 connection raises: its transaction is over
        return False


OPEN, ENDED, UNKNOWN = "open", "ended", "unknown"


def _connection_state(connection: Any) -> Callable[[], str]:
    """A probe of the connection's transaction that does not keep the connection alive.

    sqlite3 connections cannot be weakly referenced, and holding one would keep its
    locks after the caller dropped it: their state is UNKNOWN, settled by the rows.
    """
    try:
        ref = weakref.ref(connection)
    except TypeError:
        return lambda: UNKNOWN

    def state() -> str:
        conn = ref()
        return OPEN if conn is not None and _transaction_open(conn) else ENDED

    return state


@dataclasses.dataclass
class _Waiting:
    """Sends of one enqueue into a caller's transaction, waiting to be counted or dropped."""

    backend: Backend
    state: Callable[[], str]
    sends: list[_Sent]
    since: float = dataclasses.field(default_factory=time.monotonic)
    backoff: float = PENDING_CHECK_INTERVAL
    next_lookup: float = 0.0
    errors: int = 0

    def settle(self, now: float, *, force: bool, final: bool) -> bool:
        """True once counted or dropped; False to look again later.

        The connection's state is read before the rows: a transaction seen ended
        has committed or rolled back by then, so the lookup that follows decides.
        Connections whose state is open or unknown are looked up less and less often.
        """
        state = self.state()
        if state != ENDED and not force and now < self.next_lookup:
            return False
        try:
            committed = self.backend.get(uuid=self.sends[0].probe) is not None
        except Exception:
            self.errors += 1
            logger.debug("cannot tell whether enqueued jobs were committed", exc_info=True)
            return final or self.errors >= 3
        if committed:
            for sent in self.sends:
                _record_sent(sent, now)
            return True
        if state == ENDED or final or now - self.since > PENDING_MAX_WAIT:
            return True  # rolled back (or never seen committed): nothing was sent
        self.backoff = min(self.backoff * 2, 30.0)
        self.next_lookup = now + self.backoff
        return False


class _PendingSends:
    """Sends waiting for callers' transactions, settled by one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the fields
        self._resolving = threading.Lock()  # one settling round at a time
        self._items: list[_Waiting] = []
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def add(self, item: _Waiting) -> None:
        item.next_lookup = item.since + item.backoff
        with self._lock:
            self._items.append(item)
            if not self._at_exit:
                atexit.register(self.resolve, force=True, final=True)
                self._at_exit = True
            self._ensure_thread()

    def resolve(self, *, force: bool = False, final: bool = False) -> int:
        """Settle what can be settled (everything now with ``force``; at exit, ``final``
        drops what is still unseen); return how many still wait."""
        with self._resolving:
            now = time.monotonic()
            with self._lock:
                items, self._items = self._items, []
            kept = [i for i in items if not i.settle(now, force=force, final=final)]
            with self._lock:
                self._items += kept
                if self._items:
                    self._ensure_thread()
                return len(self._items)

    def forget(self) -> None:
        """In a forked child: the parent counts its own pending sends."""
        self._lock = threading.Lock()
        self._resolving = threading.Lock()
        self._items = []
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="errands-telemetry", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(PENDING_CHECK_INTERVAL)
            self.resolve()
            with self._lock:
                if not self._items:
                    self._thread = None
                    return


_pending = _PendingSends()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pending.forget)


# -- consumer ------------------------------------------------------------------------


def _ignore(outcome: Outcome) -> None:
    pass


@contextlib.contextmanager
def processing(assignment: Assignment) -> Iterator[Callable[[Outcome], None]]:
    """Trace one job's run as a CONSUMER span ``process {queue}``, current while it
    runs (the job's own spans are its children) and linked to the send span.
    Call the yielded function with the outcome to record it on the span."""
    if not ENABLED:
        yield _ignore
        return
    with _tracer().start_as_current_span(
        f"process {assignment.queue}",
        kind=trace.SpanKind.CONSUMER,
        attributes=_process_attributes(assignment),
        links=_links(assignment),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield functools.partial(_describe_outcome, span)


def _process_attributes(assignment: Assignment) -> dict[str, Any]:
    attributes = _attributes("process", assignment.queue)
    attributes[JOB_CLASS] = assignment.job_class
    attributes[JOB_UUID] = str(assignment.process_uuid)
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
    _fail(span, outcome.error_type, outcome.error)
    span.add_event(
        "exception",
        {
            "exception.type": outcome.error_type,
            "exception.message": outcome.error,
            "exception.stacktrace": outcome.traceback,
        },
    )


# -- worker parent: results ------------------------------------------------------------


def record_results(results: Sequence[JobResult]) -> None:
    """Count results written by a worker and record their run and wait durations."""
    if not ENABLED or not results:
        return
    instruments = _instruments()
    for result in results:
        attributes = _attributes("process", result.queue)
        if result.status in FAILED_STATUSES and result.error_type:
            attributes[ERROR_TYPE] = result.error_type
        outcome = {**attributes, OUTCOME: result.status.value.lower()}
        instruments.consumed.add(1, outcome)
        if result.started_at is None:
            continue  # never ran: no run duration, no end of its wait
        run = (result.ended_at - result.started_at).total_seconds()
        instruments.duration.record(max(run, 0.0), attributes)
        instruments.queue_wait.record(
            _queue_wait(result), {MESSAGING_SYSTEM: SYSTEM, DESTINATION: result.queue}
        )


def _queue_wait(result: JobResult) -> float:
    assert result.started_at is not None
    due = result.requested_at
    start_at = getattr(result, "start_at", None)  # a delayed job waits from its due time
    if start_at is not None and start_at > due:
        due = start_at
    # requested_at is the database clock, started_at the job process's: clamp skew.
    return max((result.started_at - due).total_seconds(), 0.0)


# -- worker parent: gauges --------------------------------------------------------------


_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_gauges_lock = threading.Lock()
_gauges_registered = False


def register_worker_gauges(worker: Worker) -> None:
    """Report the worker's processes and its queues' state as observable gauges.

    The gauges are created once per process and observe every registered worker
    that has not finished; their values come from one ``stats()`` query per
    ``STATS_MAX_AGE`` seconds, whatever the number of collections.
    """
    global _gauges_registered
    if not ENABLED:
        return
    with _gauges_lock:
        _workers.add(worker)
        if _gauges_registered:
            return
        _gauges_registered = True
    meter = metrics.get_meter("errands")
    for name, unit, description, callback in _GAUGES:
        meter.create_observable_gauge(
            name, callbacks=[callback], unit=unit, description=description
        )


def _live_workers() -> list[Worker]:
    return [w for w in list(_workers) if not w.finished()]


class _StatsCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -STATS_MAX_AGE
        self._backend: Backend | None = None
        self._stats: Stats | None = None

    def get(self, worker: Worker) -> Stats | None:
        with self._lock:
            now = time.monotonic()
            if self._backend is worker.backend and now - self._at < STATS_MAX_AGE:
                return self._stats
            try:
                stats = worker.backend.stats(
                    heartbeat_timeout_seconds=worker.config.heartbeat_timeout
                )
            except Exception:
                logger.debug("stats for gauges failed", exc_info=True)
                stats = None
            self._at, self._backend, self._stats = now, worker.backend, stats
            return stats


_stats_cache = _StatsCache()


def _queue_rows(metric: str) -> Iterable[metrics.Observation]:
    workers = _live_workers()
    stats = _stats_cache.get(workers[0]) if workers else None
    if stats is None:
        return []
    by_queue = {q.queue: q for q in stats.queues}
    wanted: set[str] = set()
    if all(w.queues for w in workers):
        wanted = {q for w in workers for q in w.queues}
    observations = []
    for queue in sorted(wanted or by_queue):
        row = by_queue.get(queue)
        value = (getattr(row, metric) or 0) if row is not None else 0
        observations.append(
            metrics.Observation(value, {MESSAGING_SYSTEM: SYSTEM, DESTINATION: queue})
        )
    return observations


def _observe_processes(options: Any) -> Iterable[metrics.Observation]:
    workers = _live_workers()
    if not workers:
        return []
    return [metrics.Observation(sum(len(w.pool.children) for w in workers))]


def _observe_workers(options: Any) -> Iterable[metrics.Observation]:
    workers = _live_workers()
    stats = _stats_cache.get(workers[0]) if workers else None
    if stats is None:
        return []
    return [
        metrics.Observation(stats.workers_active, {WORKER_STATE: "active"}),
        metrics.Observation(stats.workers_stale, {WORKER_STATE: "stale"}),
    ]


_GAUGES: list[tuple[str, str, str, Callable[[Any], Iterable[Any]]]] = [
    (
        "errands.worker.processes",
        "{process}",
        "Job processes of the workers in this process.",
        _observe_processes,
    ),
    (
        "errands.queue.depth",
        "{message}",
        "Requests due now, per queue.",
        lambda options: _queue_rows("pending"),
    ),
    (
        "errands.queue.scheduled",
        "{message}",
        "Requests due later, per queue.",
        lambda options: _queue_rows("scheduled"),
    ),
    (
        "errands.queue.oldest.age",
        "s",
        "Age of the oldest request due now, per queue (0 when none).",
        lambda options: _queue_rows("oldest_pending_age"),
    ),
    (
        "errands.running",
        "{process}",
        "Claimed or running processes, per queue.",
        lambda options: _queue_rows("running"),
    ),
    (
        "errands.workers",
        "{worker}",
        "Registered workers by errands.worker.state (active or stale).",
        _observe_workers,
    ),
]
