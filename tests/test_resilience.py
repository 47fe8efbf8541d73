"""Faults: killed and paused workers, shutdown signals, drain timeouts, lost connections.

Each scenario kills, pauses or signals real processes: a worker runs as a
subprocess (``tests/support/worker_main.py``) in its own process group, and a
second worker, driven in-process, plays the surviving peer.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sample_jobs
from staleness import backdate_heartbeat

import errands
from conftest import SpawnWorker, WorkerRunner, wait_for
from errands import Status
from errands.errors import BackendError

pytestmark = pytest.mark.slow  # real workers killed and signalled (not in scripts/test --fast)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# The settings of the fastest drains (README, Performance): many jobs claimed ahead
# per process and several threads per process. Batching must not weaken a guarantee.
FAST_SETTINGS = {"worker_max_pending_per_process": 200, "worker_threads": 2}
SETTINGS = pytest.mark.parametrize(
    "settings", [{}, FAST_SETTINGS], ids=["default-settings", "fast-settings"]
)


def test_killed_worker_is_rescued_as_lost_and_retried_to_success(
    spawn_worker: SpawnWorker, run_worker: WorkerRunner, tmp_path: Path, db_url: str
) -> None:
    pid_file = tmp_path / "pid"
    request = sample_jobs.SleepUnlessRerun(str(pid_file)).run_in_worker(retries=1)
    assert request is not None
    doomed = spawn_worker()
    wait_for(pid_file.exists, timeout=30)
    dead = doomed.wait_registered()
    doomed.signal_group(signal.SIGKILL)  # the whole tree, as a deploy or the OOM killer would
    doomed.wait(10)
    backdate_heartbeat(db_url, dead.worker_id, 60)  # its heartbeat timed out long ago

    # A surviving worker rescues the job once the heartbeat times out, and runs the retry.
    run_worker(lambda: len(errands.results()) == 2, heartbeat_timeout=2)

    lost, retried = sorted(errands.results(), key=lambda r: r.retry_attempt)
    assert (lost.status, lost.error_type, lost.request_uuid) == (
        Status.LOST,
        "WorkerLost",
        request.uuid,
    )
    assert lost.retry_request_uuid == retried.request_uuid
    assert (retried.status, retried.retry_attempt, retried.return_value) == (
        Status.SUCCESSFUL,
        1,
        "rerun",
    )
    assert lines(Path(f"{pid_file}.aborted")) == ["LOST"]  # on_aborted ran exactly once
    assert errands.requests() == [] and errands.processes() == []
    assert all(w.worker_id != lost.worker_id for w in errands.workers())


@SETTINGS
def test_worker_killed_mid_drain_loses_nothing(
    spawn_worker: SpawnWorker,
    run_worker: WorkerRunner,
    tmp_path: Path,
    db_url: str,
    settings: dict[str, Any],
) -> None:
    """SIGKILL while jobs are claimed ahead, running, and finished but unwritten:
    every job still ends with exactly one SUCCESSFUL result, after a LOST one
    (retried) for each job the dead worker held."""
    total = 3_000
    marks = tmp_path / "marks"
    requests = errands.enqueue_many(
        [sample_jobs.Record(str(marks), str(i)) for i in range(total)],
        options=errands.EnqueueOptions(retries=1),
    )
    doomed = spawn_worker(worker_max_processes=2, **settings)
    wait_for(lambda: len(lines(marks)) >= total // 3, timeout=60)
    dead = doomed.wait_registered()
    doomed.signal_group(signal.SIGKILL)
    doomed.wait(10)
    backdate_heartbeat(db_url, dead.worker_id, 60)  # its heartbeat timed out long ago

    def all_succeeded() -> bool:
        successes = errands.results(status=Status.SUCCESSFUL, limit=2 * total)
        return len(successes) >= total

    run_worker(all_succeeded, heartbeat_timeout=2, timeout=120, **settings)
    results = errands.results(limit=3 * total)
    by_process = collections.Counter(r.process_uuid for r in results)
    assert max(by_process.values()) == 1  # one result per process
    successes = [r for r in results if r.status == Status.SUCCESSFUL]
    lost = [r for r in results if r.status == Status.LOST]
    assert len(successes) == total and len(lost) + total == len(results)
    assert lost, "the worker held jobs when it was killed"
    assert all(r.retry_request_uuid is not None for r in lost)  # each lost job retried
    # Every job ran to success once, as its original request or as the retry of it.
    original = {r.uuid for r in requests if r}
    retried_from = {r.retry_request_uuid: r.request_uuid for r in lost}
    succeeded = [retried_from.get(r.request_uuid, r.request_uuid) for r in successes]
    assert sorted(map(str, succeeded)) == sorted(map(str, original))
    assert errands.requests() == [] and errands.processes() == []
    # At least once: a job the dead worker ran but could not record ran again.
    assert set(lines(marks)) == {str(i) for i in range(total)}


def test_rescue_waits_for_the_heartbeat_timeout(
    spawn_worker: SpawnWorker, run_worker: WorkerRunner, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=4).run_in_worker()
    alive = spawn_worker()
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    # A peer with a generous timeout runs its maintenance several times meanwhile.
    deadline = time.monotonic() + 2
    run_worker(lambda: time.monotonic() > deadline, heartbeat_timeout=30)
    assert errands.results() == []
    assert len(errands.processes()) == 1
    wait_for(lambda: bool(errands.results()), timeout=30)
    assert errands.results()[0].status == Status.SUCCESSFUL
    alive.signal(signal.SIGTERM)
    assert alive.wait(15) == 0


def test_paused_worker_declared_dead_does_not_write_a_second_result(
    spawn_worker: SpawnWorker, run_worker: WorkerRunner, tmp_path: Path, db_url: str
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=2).run_in_worker()
    paused = spawn_worker()
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    silent = paused.wait_registered()
    paused.signal_group(signal.SIGSTOP)  # a frozen VM, a long GC pause, a network partition
    backdate_heartbeat(db_url, silent.worker_id, 60)  # silent for longer than the timeout
    try:
        run_worker(lambda: bool(errands.results()), heartbeat_timeout=1.5)
    finally:
        paused.signal_group(signal.SIGCONT)
    (lost,) = errands.results()
    assert lost.status == Status.LOST

    # The job finishes late; its outcome finds no process and writes nothing.
    wait_for(lambda: "finished" in lines(marks), timeout=30)
    wait_for(lambda: len(errands.workers()) == 1, timeout=10)  # it registered again
    time.sleep(1)  # give a wrong second write every chance to happen
    assert [r.uuid for r in errands.results()] == [lost.uuid]
    paused.signal(signal.SIGTERM)
    assert paused.wait(15) == 0


def test_sigterm_finishes_running_jobs_and_returns_unstarted_ones(
    spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    running = sample_jobs.SlowRetry(str(marks), seconds=2).run_in_worker(priority=10)
    assert running is not None
    waiting = [sample_jobs.Noop().run_in_worker() for _ in range(3)]
    worker = spawn_worker()
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    assert len(errands.processes()) == 4  # all four were claimed in one batch

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    (result,) = errands.results()
    assert (result.request_uuid, result.status) == (running.uuid, Status.SUCCESSFUL)
    assert lines(marks) == ["started", "finished"]
    assert sorted(r.uuid for r in errands.requests()) == sorted(r.uuid for r in waiting if r)
    assert errands.processes() == []
    assert errands.workers() == []


def test_second_signal_cancels_running_jobs_promptly(
    spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=60).run_in_worker(retries=3)
    worker = spawn_worker()
    wait_for(lambda: lines(marks) == ["started"], timeout=30)

    worker.signal(signal.SIGTERM)
    time.sleep(0.5)
    began = time.monotonic()
    worker.signal(signal.SIGINT)
    assert worker.wait(15) == 0
    assert time.monotonic() - began < 10

    (result,) = errands.results()
    assert result.status == Status.CANCELLED
    assert result.retry_request_uuid is None  # a cancelled job is not retried
    assert errands.requests() == []
    assert lines(marks) == ["started", "aborted CANCELLED"]


def test_drain_timeout_cancels_jobs_still_running(
    spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=60).run_in_worker()
    worker = spawn_worker(worker_drain_timeout=1)
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert 1 <= time.monotonic() - began < 15
    assert errands.results()[0].status == Status.CANCELLED


@pytest.mark.postgres_only
@SETTINGS
def test_worker_survives_losing_its_database_connections(
    run_worker: WorkerRunner, db_url: str, settings: dict[str, Any]
) -> None:
    total = 200
    for i in range(total):
        sample_jobs.Echo(i).run_in_worker()
    dbname = db_url.rsplit("/", 1)[1]
    terminated = threading.Event()

    def terminate_connections() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
        terminated.set()

    def count_results() -> int:
        # The test's own reads share the pool whose connections were just killed;
        # a read failing once is not what this test is about.
        try:
            return len(errands.results(limit=10 * total))
        except BackendError:
            return 0

    def done() -> bool:
        if not terminated.is_set() and count_results() >= total // 4:
            terminate_connections()
        return terminated.is_set() and count_results() >= total

    run_worker(done, timeout=60, **settings)
    results = errands.results(limit=10 * total)
    assert len(results) == total
    assert {r.status for r in results} == {Status.SUCCESSFUL}
    assert sorted(r.return_value for r in results) == list(range(total))
    assert errands.requests() == [] and errands.processes() == []


@SETTINGS
def test_four_workers_run_every_job_exactly_once(
    spawn_worker: SpawnWorker, tmp_path: Path, settings: dict[str, Any]
) -> None:
    total = 20_000
    marks = tmp_path / "marks"
    errands.enqueue_many(sample_jobs.Record(str(marks), str(i)) for i in range(total))
    workers = [spawn_worker(worker_max_processes=2, **settings) for _ in range(4)]

    wait_for(lambda: len(lines(marks)) >= total and not errands.processes(limit=1), timeout=300)
    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in workers] == [0, 0, 0, 0]

    assert sorted(lines(marks), key=int) == [str(i) for i in range(total)]  # each ran once
    results = errands.results(limit=2 * total)
    assert len(results) == total
    assert {r.status for r in results} == {Status.SUCCESSFUL}
    assert len({r.request_uuid for r in results}) == total
    assert len({r.worker_id for r in results}) == 4  # the work was shared
    assert errands.requests() == [] and errands.workers() == []


FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def skewed_clock(offset: str) -> dict[str, str]:
    """Environment that runs a process (and its children) with its wall clock off by
    ``offset`` (libfaketime, Debian package faketime); monotonic clocks stay true."""
    assert FAKETIME_LIBRARY.exists(), (
        "install Debian's faketime package (bash scripts/install-test-deps does)"
    )
    return {
        "LD_PRELOAD": str(FAKETIME_LIBRARY),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


# On SQLite every process reads the one host's clock, which is the database's clock:
# a worker cannot disagree with it.
@pytest.mark.postgres_only
@pytest.mark.parametrize("offset", ["+1h", "-1h"], ids=["ahead", "behind"])
def test_a_worker_with_a_wrong_clock_behaves_like_a_right_one(
    spawn_worker: SpawnWorker, tmp_path: Path, offset: str
) -> None:
    marks = tmp_path / "marks"
    busy_marks = tmp_path / "busy"
    # A healthy peer, heartbeating, runs a job longer than the skewed worker's timeout.
    healthy = spawn_worker(queues=("healthy",))
    sample_jobs.SlowRetry(str(busy_marks), seconds=4).run_in_worker(queue="healthy")
    sample_jobs.Record(str(marks), "soon").run_in_worker(delay=2)
    sample_jobs.Record(str(marks), "later").run_in_worker(delay=600)
    wait_for(lambda: lines(busy_marks) == ["started"], timeout=30)
    skewed = spawn_worker(env=skewed_clock(offset), queues=("default",), heartbeat_timeout=2)

    # Due in 2 s by the database clock: runs then, neither an hour early nor late.
    wait_for(lambda: lines(marks) == ["soon"], timeout=60)
    wait_for(lambda: "finished" in lines(busy_marks), timeout=30)
    time.sleep(1)
    statuses = sorted(r.status for r in errands.results())
    assert statuses == [Status.SUCCESSFUL, Status.SUCCESSFUL]  # no LOST for the healthy peer
    # The skew was real: the skewed job process stamped its start with its own clock.
    (soon,) = errands.results(queue="default")
    ended_by_database = errands.backend().now()
    apparent_skew = (soon.started_at - ended_by_database).total_seconds()
    assert abs(apparent_skew - (3600 if offset == "+1h" else -3600)) < 120
    (later,) = errands.requests()
    assert later.parameters["args"][1] == "later"
    for worker in (healthy, skewed):
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_killed_job_process_is_lost_and_retried(run_worker: WorkerRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sample_jobs.SleepUnlessRerun(str(pid_file)).run_in_worker(retries=1)

    def kill_once_started() -> bool:
        if pid_file.exists() and not getattr(kill_once_started, "done", False):
            os.kill(int(lines(pid_file)[0]), signal.SIGKILL)
            kill_once_started.done = True  # type: ignore[attr-defined]
        return len(errands.results()) == 2

    run_worker(kill_once_started)
    lost, rerun = sorted(errands.results(), key=lambda r: r.retry_attempt)
    assert (lost.status, lost.error_type) == (Status.LOST, "errands.worker.ProcessDied")
    assert "-9" in lost.error  # the exit code of a SIGKILL
    assert lost.retry_request_uuid == rerun.request_uuid
    assert (rerun.status, rerun.return_value) == (Status.SUCCESSFUL, "rerun")
