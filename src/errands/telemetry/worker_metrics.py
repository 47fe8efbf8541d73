"""Metrics a worker records in its parent process: results, and gauges from stats."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from errands.expiry import EXPIRED_TYPE
from errands.models import FAILED_STATUSES, JobResult, Stats
from errands.telemetry import conventions
from errands.telemetry.conventions import (
    DESTINATION,
    ENABLED,
    ERROR_TYPE,
    MESSAGING_SYSTEM,
    OUTCOME,
    SYSTEM,
    WORKER_STATE,
)

if ENABLED:
    from opentelemetry import metrics

if TYPE_CHECKING:
    from errands.worker import Worker

logger = logging.getLogger("errands")

STATS_MAX_AGE = 5.0  # seconds the gauges reuse one stats query


def results_measured() -> bool:
    """Whether ``record_results`` records anything (else it needs no results)."""
    return ENABLED and conventions.metrics_configured()


def record_results(results: Sequence[JobResult]) -> None:
    """Count results written by a worker and record their run and wait durations."""
    if not results or not results_measured():
        return  # without a meter provider the records would go nowhere
    instruments = conventions.instruments()
    for result in results:
        attributes = conventions.attributes("process", result.queue)
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


def record_expired(queues: Sequence[str]) -> None:
    """Count the jobs a worker's claim ended as expired (errands.expiry): never run,
    CANCELLED, counted with their error type so they are told apart from cancels."""
    if not queues or not results_measured():
        return
    instruments = conventions.instruments()
    for queue in queues:
        attributes = conventions.attributes("process", queue)
        attributes[ERROR_TYPE] = EXPIRED_TYPE
        instruments.consumed.add(1, {**attributes, OUTCOME: "cancelled"})


def _queue_wait(result: JobResult) -> float:
    assert result.started_at is not None
    # A delayed job (run_in_worker's delay, a retry's backoff) waits from its due
    # time, not from its enqueueing; results of before schema version 5 have none.
    due = result.requested_at
    if result.start_at is not None and result.start_at > due:
        due = result.start_at
    # requested_at is the database clock, started_at the job process's: clamp skew.
    return max((result.started_at - due).total_seconds(), 0.0)


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
    meter = conventions.meter()
    for name, unit, description, callback in _GAUGES:
        meter.create_observable_gauge(
            name, callbacks=[callback], unit=unit, description=description
        )


def _live_workers() -> list[Worker]:
    return [w for w in list(_workers) if not w.finished()]


class _StatsCache:
    """One ``stats()`` result, reused for ``STATS_MAX_AGE`` seconds by the same workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -STATS_MAX_AGE
        self._key: tuple[Any, ...] = ()
        self._stats: Stats | None = None

    def get(self, workers: list[Worker]) -> Stats | None:
        first = workers[0]
        key = (id(first.backend), *sorted(w.worker_id for w in workers))
        with self._lock:
            now = time.monotonic()
            if key == self._key and now - self._at < STATS_MAX_AGE:
                return self._stats
            try:
                stats = first.backend.stats(
                    heartbeat_timeout_seconds=first.config.heartbeat_timeout
                )
            except Exception:
                logger.debug("stats for gauges failed", exc_info=True)
                stats = None
            self._at, self._key, self._stats = now, key, stats
            return stats


_stats_cache = _StatsCache()


def _snapshot() -> tuple[list[Worker], Stats | None]:
    workers = _live_workers()
    return workers, (_stats_cache.get(workers) if workers else None)


def _queue_rows(metric: str) -> Iterable[metrics.Observation]:
    """One observation per queue the workers serve (every queue with rows when one of
    them serves all), 0 for a served queue without rows."""
    workers, stats = _snapshot()
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
    _, stats = _snapshot()
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
