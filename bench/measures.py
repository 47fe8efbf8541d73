"""One run of each measurement; ``run.py`` repeats them and takes medians.

Every function starts from an emptied database and returns plain numbers.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bench_jobs
from databases import BenchDatabase
from harness import WorkerProcess, cpu_seconds, process_tree, rss_bytes, wait_until

import errands
from errands import EnqueueOptions, Limit
from errands.registry import job_class_path

ENQUEUE_CHUNK = 10_000  # jobs per enqueue_many call (one transaction each)
LIMITED_CONCURRENCY = 50  # drain_limited: jobs of its one key at once
DRAIN_TIMEOUT = 900.0  # seconds: a drain slower than this is a failure, not a figure


def use_database(db: BenchDatabase) -> None:
    """Point errands' own API (enqueueing) at the benchmark's database."""
    errands.configure(database_url=db.url)


def fill_queue(db: BenchDatabase, count: int, options: EnqueueOptions | None = None) -> None:
    jobs = [bench_jobs.Noop() for _ in range(count)]
    for start in range(0, count, ENQUEUE_CHUNK):
        errands.enqueue_many(jobs[start : start + ENQUEUE_CHUNK], options=options)


# -- enqueueing ------------------------------------------------------------------------


def bulk_enqueue(db: BenchDatabase, count: int) -> float:
    """Jobs per second through ``enqueue_many``, ``ENQUEUE_CHUNK`` jobs per transaction."""
    db.empty()
    jobs = [bench_jobs.Noop() for _ in range(count)]
    start = time.perf_counter()
    for first in range(0, count, ENQUEUE_CHUNK):
        errands.enqueue_many(jobs[first : first + ENQUEUE_CHUNK])
    return count / (time.perf_counter() - start)


def single_enqueue(db: BenchDatabase, seconds: float) -> float:
    """Jobs per second through ``run_in_worker``, one transaction per job, one client."""
    db.empty()
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        bench_jobs.Noop().run_in_worker()
        done += 1
    return done / (time.perf_counter() - start)


# -- draining ----------------------------------------------------------------------------


def drain(db: BenchDatabase, count: int, settings: Mapping[str, Any]) -> float:
    """No-op jobs per second, from a queue filled before the worker starts."""
    db.empty()
    fill_queue(db, count)
    return _timed_drain(db, settings)


def drain_limited(db: BenchDatabase, count: int, settings: Mapping[str, Any]) -> float:
    """As ``drain``, every job under one key with ``LIMITED_CONCURRENCY`` at once."""
    db.empty()
    limit = Limit("bench", concurrency=LIMITED_CONCURRENCY)
    fill_queue(db, count, EnqueueOptions(limits=[limit]))
    return _timed_drain(db, settings)


def drain_workflow(db: BenchDatabase, width: int, settings: Mapping[str, Any]) -> float:
    """As ``drain``, the jobs being one workflow: a root, ``width`` jobs after it, and
    one job after all of those (a fan-out and a fan-in)."""
    db.empty()
    workflow = errands.Workflow("bench fan-out")
    root = workflow.add(bench_jobs.Noop())
    fanned = [workflow.add(bench_jobs.Noop(), after=[root]) for _ in range(width)]
    workflow.add(bench_jobs.Noop(), after=fanned)
    workflow.enqueue()
    return _timed_drain(db, settings)


def chain_step(db: BenchDatabase, length: int, settings: Mapping[str, Any]) -> float:
    """Milliseconds from one job's start to the next one's along a chain of ``length``
    no-op jobs on a warm, idle worker: the job, its result, the release in that
    transaction, the wake-up and the claim of the next."""
    db.empty()
    with WorkerProcess(db.url, settings):
        _run_one(db)  # warm-up: children spawned, modules imported
        chained = errands.chain(*(bench_jobs.Noop() for _ in range(length))).enqueue()
        first, last = chained.requests[0].uuid, chained.requests[-1].uuid
        wait_until(lambda: db.started_at(last) is not None, timeout=DRAIN_TIMEOUT, step=0.05)
        began, ended = db.started_at(first), db.started_at(last)
    assert began is not None and ended is not None
    return 1000 * (ended - began) / (length - 1)


def _timed_drain(db: BenchDatabase, settings: Mapping[str, Any]) -> float:
    """Run a worker until no due job is left; the rate is read from the results' write times.

    Timing the results rather than the worker leaves out its start-up (spawning and
    importing in the children), which a long-running worker pays once.
    """
    db.settle()
    with WorkerProcess(db.url, settings):
        wait_until(lambda: db.remaining() == 0, timeout=DRAIN_TIMEOUT, step=0.2)
    return db.drain_window().rate


def history_setup(db: BenchDatabase, *, results: int, delayed: int) -> None:
    db.empty()
    db.fill_history(results=results, delayed=delayed, job_class=job_class_path(bench_jobs.Noop))


def drain_with_history(db: BenchDatabase, count: int, settings: Mapping[str, Any]) -> float:
    """As ``drain``, with the history of ``history_setup`` in the tables."""
    db.forget_recent_results()
    fill_queue(db, count)
    return _timed_drain(db, settings)


# -- latency -----------------------------------------------------------------------------


def pickup_latency(db: BenchDatabase, samples: int, settings: Mapping[str, Any]) -> list[float]:
    """Seconds from an enqueue's commit to its job starting, on an idle worker.

    The clock starts when ``run_in_worker`` returns (the commit is acknowledged)
    and stops at the ``started_at`` the child records just before building the job.
    Between samples the worker is left idle (its result written, then a short pause).
    """
    db.empty()
    latencies = []
    with WorkerProcess(db.url, settings):
        _run_one(db)  # warm-up: children spawned, modules imported
        for _ in range(samples):
            time.sleep(random.uniform(0.02, 0.05))
            latencies.append(_run_one(db))
    return latencies


def _run_one(db: BenchDatabase) -> float:
    request = bench_jobs.Noop().run_in_worker()
    committed = time.time()
    assert request is not None
    started: list[float] = []

    def has_started() -> bool:
        value = db.started_at(request.uuid)
        if value is not None:
            started.append(value)
        return value is not None

    wait_until(has_started, timeout=60, step=0.005)
    return started[0] - committed


# -- resources --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryProfile:
    warm_mb: float  # worker tree RSS once warm
    peak_mb: float  # highest tree RSS after warm-up
    end_mb: float  # tree RSS at the end of the drain
    parent_warm_mb: float
    parent_peak_mb: float

    @property
    def growth_percent(self) -> float:
        return 100.0 * (self.peak_mb - self.warm_mb) / self.warm_mb


def memory_over_drain(
    db: BenchDatabase, count: int, settings: Mapping[str, Any], *, warm_fraction: float = 0.1
) -> MemoryProfile:
    """Resident memory of the worker and its children while draining ``count`` jobs.

    "Warm" is the first sample after ``warm_fraction`` of the jobs are done: caches,
    connection pools and the children's imports are in place by then, so what grows
    afterwards grows with the number of jobs.
    """
    db.empty()
    fill_queue(db, count)
    db.settle()
    warm: tuple[float, float] | None = None
    peak = parent_peak = end = 0.0
    with WorkerProcess(db.url, settings) as worker:
        remaining = count
        next_count = 0.0
        while remaining > 0:
            time.sleep(0.25)
            tree_mb, parent_mb = _rss_mb(worker.pid)
            if time.monotonic() >= next_count:
                remaining = db.remaining()
                next_count = time.monotonic() + 1.0
            if warm is None:
                if count - remaining >= warm_fraction * count:
                    warm = (tree_mb, parent_mb)
                continue
            peak, parent_peak, end = max(peak, tree_mb), max(parent_peak, parent_mb), tree_mb
    if warm is None:
        raise RuntimeError("the drain ended before the worker was warm; enqueue more jobs")
    return MemoryProfile(
        warm_mb=warm[0],
        peak_mb=max(peak, warm[0]),
        end_mb=end or warm[0],
        parent_warm_mb=warm[1],
        parent_peak_mb=max(parent_peak, warm[1]),
    )


def _rss_mb(root: int) -> tuple[float, float]:
    tree = process_tree(root)
    return sum(rss_bytes(pid) for pid in tree) / 2**20, rss_bytes(root) / 2**20


def idle_cpu(db: BenchDatabase, seconds: float, settings: Mapping[str, Any]) -> float:
    """Percent of one core that an idle worker (parent, children, threads) uses."""
    db.empty()
    with WorkerProcess(db.url, settings) as worker:
        _run_one(db)  # children up and idle
        time.sleep(1.0)
        tree = process_tree(worker.pid)
        before, start = cpu_seconds(tree), time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(tree) - before
        elapsed = time.monotonic() - start
    return 100.0 * used / elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
