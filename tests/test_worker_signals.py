"""Shutdown signals that talk: ``errands worker`` logs what each signal does.

The first Ctrl-C (SIGINT to the terminal's process group) or SIGTERM says what
happens to the jobs in hand, the worker then tells how many still run as each
one ends, and a second signal (or the drain timeout) says which jobs it
cancelled. Each scenario runs the real ``errands worker`` command in its own
session, logging JSON lines, and compares the messages it logged from the first
signal on with the exact text expected.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sample_jobs
from worker_process import WorkerProcess

import errands
from conftest import wait_for
from errands import Status

pytestmark = pytest.mark.slow  # real workers, signalled

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(db_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """``errands worker`` on the test's database, logging JSON lines at INFO."""
    started: list[WorkerProcess] = []

    def start(*options: str, processes: int = 1) -> WorkerProcess:
        worker = WorkerProcess.errands(
            db_url,
            tmp_path / f"worker{len(started)}.log",
            "--import",
            "sample_jobs",
            "worker",
            "--max-processes",
            str(processes),
            "--poll-interval",
            "0.1",
            "--heartbeat-interval",
            "0.5",
            "--stats-every",
            "0",
            "--log-format",
            "json",
            *options,
        )
        started.append(worker)
        worker.wait_registered()
        return worker

    yield start
    for worker in started:
        worker.close()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def shutdown_messages(worker: WorkerProcess) -> list[tuple[str, str]]:
    """(level, message) of each record the worker logged from its first "shutting down" on."""
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    logged = [(r["level"], r["message"]) for r in records]
    first = next(i for i, (_, message) in enumerate(logged) if message.startswith("shutting down"))
    return logged[first:]


def short(uuid: object) -> str:
    return str(uuid)[:8]


def test_first_ctrl_c_says_what_runs_on_and_what_goes_back(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=2).run_in_worker(priority=10)
    waiting = [sample_jobs.Noop().run_in_worker() for _ in range(2)]
    worker = start_worker()
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    assert len(errands.processes()) == 3  # all three claimed; one running

    worker.signal_group(signal.SIGINT)  # a terminal's Ctrl-C reaches the job processes too
    assert worker.wait(30) == 0

    assert shutdown_messages(worker) == [
        (
            "INFO",
            "shutting down (Ctrl-C): finishing 1 running job, "
            "2 claimed jobs returned to the queue; Ctrl-C again cancels it",
        ),
        ("INFO", "all jobs finished, exiting"),
    ]
    assert lines(marks) == ["started", "finished"]
    assert sorted(r.uuid for r in errands.requests()) == sorted(r.uuid for r in waiting if r)


def test_sigterm_reports_as_each_running_job_finishes(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    short_marks, long_marks = tmp_path / "short", tmp_path / "long"
    sample_jobs.SlowRetry(str(short_marks), seconds=1).run_in_worker()
    sample_jobs.SlowRetry(str(long_marks), seconds=3).run_in_worker()
    worker = start_worker(processes=2)
    wait_for(lambda: lines(short_marks) == lines(long_marks) == ["started"], timeout=30)

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    assert shutdown_messages(worker) == [
        (
            "INFO",
            "shutting down (SIGTERM): finishing 2 running jobs; a second SIGTERM cancels them",
        ),
        ("INFO", "1 job still running"),
        ("INFO", "all jobs finished, exiting"),
    ]
    assert [r.status for r in errands.results()] == [Status.SUCCESSFUL] * 2


def test_second_signal_says_which_jobs_it_cancelled(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=60).run_in_worker()
    worker = start_worker()
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    (process,) = errands.processes()

    worker.signal(signal.SIGTERM)
    wait_for(lambda: "shutting down" in worker.log(), timeout=10)
    worker.signal_group(signal.SIGINT)
    assert worker.wait(15) == 0

    assert shutdown_messages(worker) == [
        ("INFO", "shutting down (SIGTERM): finishing 1 running job; a second SIGTERM cancels it"),
        ("WARNING", "terminating job"),
        (
            "INFO",
            f"second signal (Ctrl-C): cancelled 1 running job "
            f"(sample_jobs.SlowRetry {short(process.uuid)}); exiting",
        ),
    ]
    (result,) = errands.results()
    assert (result.status, result.error_type) == (Status.CANCELLED, "Cancelled")


def test_an_idle_worker_says_it_exits(start_worker: StartWorker) -> None:
    worker = start_worker()

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    assert shutdown_messages(worker) == [
        ("INFO", "shutting down (SIGTERM): no job running; exiting"),
    ]


def test_the_drain_timeout_is_announced_and_says_what_it_cancelled(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    sample_jobs.SlowRetry(str(marks), seconds=60).run_in_worker()
    worker = start_worker("--drain-timeout", "1")
    wait_for(lambda: lines(marks) == ["started"], timeout=30)
    (process,) = errands.processes()

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    assert shutdown_messages(worker) == [
        (
            "INFO",
            "shutting down (SIGTERM): finishing 1 running job; a second SIGTERM cancels it, "
            "as does the drain timeout in 1 s",
        ),
        ("WARNING", "terminating job"),
        (
            "WARNING",
            f"drain timeout: cancelled 1 running job "
            f"(sample_jobs.SlowRetry {short(process.uuid)}); exiting",
        ),
    ]
