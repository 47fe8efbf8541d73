"""Batching: bulk enqueue (COPY on PostgreSQL), and the worker's batched claims and
writes under faults, with the settings that make it fastest.

The fault tests run a worker as a subprocess (``tests/support/worker_main.py``) in
its own process group with many slots and a long waiting line, stop or kill it
mid-drain, let a second worker finish, and check the invariant: every job ends in
exactly one result of its own, and a job runs twice only after a fault.
"""

from __future__ import annotations

import collections
import datetime
import os
import signal
from pathlib import Path

import psycopg
import pytest
import sample_jobs
from staleness import backdate_heartbeat
from worker_process import WorkerProcess

import errands
from conftest import SpawnWorker, WorkerRunner, wait_for
from errands import EnqueueOptions, Status
from errands.backends import Backend

# Heartbeats fast enough for a test.
TIMING = {"heartbeat_interval": 0.5, "heartbeat_timeout": 60, "poll_interval": 0.1}
# The settings of the benchmark's fastest drain, and the defaults (claims sized by the
# worker from the jobs' run time, up to 200 per process).
DRAIN_SETTINGS = {
    "fast": {
        "worker_max_processes": 2,
        "worker_threads": 2,
        "worker_max_pending_per_process": 100,
    },
    "default": {"worker_max_processes": 2},
}


# -- bulk enqueue ----------------------------------------------------------------------


def test_bulk_enqueue_returns_the_requests_as_stored(db_url: str) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    jobs = [sample_jobs.Echo(n) for n in range(250)]
    now_due = errands.enqueue_many(jobs[:100], options=EnqueueOptions(queue="a", priority=3))
    delayed = errands.enqueue_many(jobs[100:200], options=EnqueueOptions(delay=30))
    at_time = errands.enqueue_many(jobs[200:], options=EnqueueOptions(delay=later))

    returned = [r for r in now_due + delayed + at_time if r is not None]
    assert len(returned) == 250
    for request in returned:
        assert errands.get(request.uuid) == request
    assert [r.parameters["args"] for r in returned] == [[n] for n in range(250)]
    assert {(r.queue, r.priority) for r in returned[:100]} == {("a", 3)}
    assert {r.start_at - r.created_at for r in returned[100:200]} == {
        datetime.timedelta(seconds=30)
    }
    assert {r.start_at for r in returned[200:]} == {later}


@pytest.mark.postgres_only
def test_bulk_enqueue_in_a_callers_transaction_commits_with_it(db_url: str) -> None:
    jobs = [sample_jobs.Noop() for _ in range(150)]
    with psycopg.connect(db_url) as conn:
        errands.enqueue_many(jobs, connection=conn)
        conn.rollback()
        assert errands.requests(limit=200) == []
        errands.enqueue_many(jobs, connection=conn)
        assert errands.requests(limit=200) == []  # not committed yet
        conn.commit()
    assert len(errands.requests(limit=200)) == 150


@pytest.mark.postgres_only
@pytest.mark.slow
def test_bulk_enqueue_notifies_each_queue_with_due_jobs_once(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN errands_jobs")
        errands.enqueue_many(
            [sample_jobs.Noop() for _ in range(150)], options=EnqueueOptions(queue="a")
        )
        errands.enqueue_many(
            [sample_jobs.Noop() for _ in range(150)], options=EnqueueOptions(queue="b")
        )
        errands.enqueue_many(
            [sample_jobs.Noop() for _ in range(150)], options=EnqueueOptions(queue="c", delay=60)
        )
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]
    assert sorted(payloads) == ["a", "b"]


# -- faults with fast settings ------------------------------------------------------------


@pytest.fixture(params=sorted(DRAIN_SETTINGS))
def fast_worker(spawn_worker: SpawnWorker, request: pytest.FixtureRequest) -> WorkerProcess:
    """A worker subprocess with many jobs in hand, in its own process group."""
    return spawn_worker(**TIMING, **DRAIN_SETTINGS[request.param])


def tokens(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def enqueue_records(path: Path, count: int, retries: int) -> list[str]:
    names = [f"t{n}" for n in range(count)]
    jobs = [sample_jobs.Record(str(path), name) for name in names]
    errands.enqueue_many(jobs, options=EnqueueOptions(retries=retries))
    return names


def results_by_token(count: int) -> dict[str, list[errands.JobResult]]:
    found = collections.defaultdict(list)
    for result in errands.results(limit=2 * count):
        found[result.parameters["args"][1]].append(result)
    return found


def drained(count: int) -> bool:
    successful = errands.results(status=Status.SUCCESSFUL, limit=count)
    return len(successful) == count and not errands.processes() and not errands.requests()


@pytest.mark.slow
def test_graceful_stop_mid_drain_runs_every_job_exactly_once(
    fast_worker: WorkerProcess, run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "tokens"
    names = enqueue_records(log, 600, retries=0)
    wait_for(lambda: len(tokens(log)) >= 100, timeout=60)
    fast_worker.process.send_signal(signal.SIGTERM)
    assert fast_worker.process.wait(timeout=30) == 0

    run_worker(lambda: drained(600), timeout=60)

    assert sorted(tokens(log)) == sorted(names)  # no job ran twice, none was lost
    by_token = results_by_token(600)
    assert {token: [r.status for r in found] for token, found in by_token.items()} == {
        token: [Status.SUCCESSFUL] for token in names
    }


@pytest.mark.slow
def test_killed_worker_mid_drain_loses_no_job(
    fast_worker: WorkerProcess, run_worker: WorkerRunner, tmp_path: Path, backend: Backend
) -> None:
    log = tmp_path / "tokens"
    names = enqueue_records(log, 600, retries=1)
    wait_for(lambda: len(tokens(log)) >= 100, timeout=60)
    dead = fast_worker.wait_registered()
    os.killpg(fast_worker.process.pid, signal.SIGKILL)  # the worker and its children
    fast_worker.process.wait(timeout=10)
    backdate_heartbeat(backend.url, dead.worker_id, 60)  # its heartbeat timed out long ago

    run_worker(lambda: drained(600), heartbeat_timeout=2, timeout=90)

    by_token = results_by_token(600)
    assert set(by_token) == set(names)
    for found in by_token.values():
        statuses = sorted(r.status for r in found)
        # Each job succeeded once; one in flight at the kill was LOST first, then retried.
        assert statuses in ([Status.SUCCESSFUL], [Status.LOST, Status.SUCCESSFUL])
    ran = collections.Counter(tokens(log))
    assert set(ran) == set(names)
    lost = {t for t, found in by_token.items() if Status.LOST in [r.status for r in found]}
    assert {t for t, n in ran.items() if n > 1} <= lost  # ran twice only if caught by the kill
