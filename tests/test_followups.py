"""Retries that cannot be lost: a LOST job gets its retry and its ``on_aborted`` hooks
whichever worker rescues it (issue 18, item 1).

The rescue writes, with each LOST result, what the job is still owed; any worker
that can load the job's class settles it exactly once. Real workers: one killed
while it runs the job, one that rescues it but cannot load the job's class (it
serves another application's jobs), one that can.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import sample_jobs
from staleness import backdate_heartbeat
from worker_process import WorkerProcess

import errands
from conftest import SpawnWorker, WorkerRunner, wait_for
from errands import Status

pytestmark = pytest.mark.slow  # real workers killed (not in scripts/test --fast)


OTHER_APP_JOBS = """
from errands import Job, register_job


@register_job
class OtherAppJob(Job):
    def run(self) -> None:
        pass
"""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def kill_while_running(spawn_worker: SpawnWorker, db_url: str, pid_file: Path) -> None:
    """Run the job on a worker, SIGKILL the worker's whole tree, and age its heartbeat."""
    doomed = spawn_worker()
    wait_for(pid_file.exists, timeout=30)
    dead = doomed.wait_registered()
    doomed.signal_group(signal.SIGKILL)
    doomed.wait(10)
    backdate_heartbeat(db_url, dead.worker_id, 60)


def test_a_job_rescued_by_a_worker_that_cannot_load_it_is_retried_by_one_that_can(
    spawn_worker: SpawnWorker, run_worker: WorkerRunner, tmp_path: Path, db_url: str
) -> None:
    pid_file = tmp_path / "pid"
    request = sample_jobs.SleepUnlessRerun(str(pid_file)).run_in_worker(retries=1)
    assert request is not None
    kill_while_running(spawn_worker, db_url, pid_file)

    # Another application's worker: it rescues every dead worker's jobs, but cannot
    # load this job's class (its import setting names only its own module, and the
    # tests' job modules are not on its path).
    other_app = tmp_path / "other_app"
    other_app.mkdir()
    (other_app / "other_jobs.py").write_text(OTHER_APP_JOBS)
    other = WorkerProcess.errands(
        db_url,
        tmp_path / "other.log",
        *("--import", "other_jobs", "worker"),
        *("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"),
        env={**os.environ, "PYTHONPATH": str(other_app)},
    )
    wait_for(lambda: len(errands.results()) == 1, timeout=30)
    (lost,) = errands.results()
    assert (lost.status, lost.retry_request_uuid) == (Status.LOST, None)
    # It keeps owing the retry and the hooks: the rescuer could settle neither.
    assert [r.uuid for r in errands.backend().followups(limit=10)] == [lost.uuid]
    assert errands.requests() == []
    assert lines(Path(f"{pid_file}.aborted")) == []
    other.signal(signal.SIGTERM)
    assert other.wait(20) == 0

    # A worker of this application settles it: one retry, the hooks once.
    run_worker(lambda: len(errands.results()) == 2, heartbeat_timeout=2)
    lost, retried = sorted(errands.results(), key=lambda r: r.retry_attempt)
    assert lost.retry_request_uuid == retried.request_uuid
    assert (retried.status, retried.retry_attempt, retried.return_value) == (
        Status.SUCCESSFUL,
        1,
        "rerun",
    )
    assert lines(Path(f"{pid_file}.aborted")) == ["LOST"]
    assert errands.backend().followups(limit=10) == []


def test_a_lost_job_without_attempts_left_still_gets_its_hooks_and_no_retry(
    spawn_worker: SpawnWorker, run_worker: WorkerRunner, tmp_path: Path, db_url: str
) -> None:
    pid_file = tmp_path / "pid"
    assert sample_jobs.SleepUnlessRerun(str(pid_file)).run_in_worker(retries=0) is not None
    kill_while_running(spawn_worker, db_url, pid_file)

    run_worker(
        lambda: (
            lines(Path(f"{pid_file}.aborted")) == ["LOST"]
            and errands.backend().followups(limit=10) == []
        ),
        heartbeat_timeout=2,
    )
    (lost,) = errands.results()
    assert (lost.status, lost.retry_request_uuid) == (Status.LOST, None)
    assert errands.requests() == []
