"""Thread mode: a child process runs up to ``worker_threads`` jobs at once.

Every test runs on both backends with a real worker and real child processes.
Jobs write timestamped marks to a file (``tests/support/thread_jobs.py``), from
which the tests read overlap, process and event loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sample_jobs
import thread_jobs

import errands
from conftest import WorkerRunner
from errands import Status

pytestmark = pytest.mark.slow  # each test runs a real worker (not in scripts/test --fast)

JOBS = ("sample_jobs", "thread_jobs")


def results_of(job_class: type) -> list[errands.JobResult]:
    return errands.results(job_class=f"{job_class.__module__}.{job_class.__qualname__}")


def all_finished(count: int) -> bool:
    finished = len(errands.results(limit=count))
    return finished >= count and not errands.processes() and not errands.requests()


def test_one_child_runs_as_many_jobs_at_once_as_it_has_threads(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "marks"
    for n in range(6):
        thread_jobs.Hold(str(log), f"job{n}", 1.0).run_in_worker()

    run_worker(
        lambda: all_finished(6), import_modules=JOBS, worker_max_processes=1, worker_threads=3
    )

    assert [r.status for r in errands.results()] == [Status.SUCCESSFUL] * 6
    assert thread_jobs.most_at_once(log) == 3  # never more jobs than threads, and no fewer
    assert len({m.pid for m in thread_jobs.marks(log)}) == 1  # all in the one child
    assert len({m.detail for m in thread_jobs.marks(log) if m.event == "start"}) == 3


def test_jobs_spread_over_processes_before_sharing_one(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "marks"
    for n in range(2):
        thread_jobs.Hold(str(log), f"job{n}", 1.0).run_in_worker()

    run_worker(
        lambda: all_finished(2), import_modules=JOBS, worker_max_processes=2, worker_threads=4
    )

    assert len({m.pid for m in thread_jobs.marks(log)}) == 2


def test_async_jobs_run_concurrently_on_one_event_loop(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "marks"
    for n in range(4):
        thread_jobs.AsyncHold(str(log), f"job{n}", 1.0).run_in_worker()

    run_worker(
        lambda: all_finished(4), import_modules=JOBS, worker_max_processes=1, worker_threads=4
    )

    assert sorted(r.return_value for r in errands.results()) == [f"job{n}" for n in range(4)]
    spans = thread_jobs.spans(log).values()
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all overlapped
    loops = {m.detail for m in thread_jobs.marks(log) if m.event == "start"}
    assert len(loops) == 1


def test_sync_and_async_jobs_mix_in_one_child(run_worker: WorkerRunner, tmp_path: Path) -> None:
    log = tmp_path / "marks"
    thread_jobs.Hold(str(log), "sync", 1.0).run_in_worker()
    thread_jobs.AsyncHold(str(log), "async", 1.0).run_in_worker()
    sample_jobs.Echo(7).run_in_worker()

    run_worker(
        lambda: all_finished(3), import_modules=JOBS, worker_max_processes=1, worker_threads=3
    )

    assert {r.status for r in errands.results()} == {Status.SUCCESSFUL}
    assert results_of(sample_jobs.Echo)[0].return_value == 7
    assert thread_jobs.most_at_once(log) == 2


def test_timeout_in_a_threaded_child_retries_its_neighbour_at_the_same_attempt(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "marks"
    late = sample_jobs.Sleep(60).run_in_worker(timeout=1.0)
    neighbour = thread_jobs.Hold(str(log), "neighbour", 3.0).run_in_worker(retries=0)
    assert late is not None and neighbour is not None

    run_worker(
        lambda: all_finished(3),
        import_modules=JOBS,
        worker_max_processes=1,
        worker_threads=2,
        timeout=60,
    )

    (timed_out,) = results_of(sample_jobs.Sleep)
    assert timed_out.status == Status.ERRORED
    assert timed_out.error_type == "errands.errors.JobTimeout"
    interrupted, succeeded = sorted(results_of(thread_jobs.Hold), key=lambda r: r.ended_at)
    assert interrupted.status == Status.LOST
    assert interrupted.error_type == "errands.worker.Interrupted"
    assert str(timed_out.process_uuid) in interrupted.error
    # Run again although it had no retries left: the interruption was not its fault.
    assert interrupted.retry_request_uuid == succeeded.request_uuid
    assert (succeeded.status, succeeded.retry_attempt) == (Status.SUCCESSFUL, 0)


def test_cancel_in_a_threaded_child_keeps_jobs_that_had_not_begun(
    run_worker: WorkerRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Children take 3 s to start: both jobs are handed to the first child and wait
    # there, not begun, while the first is cancelled.
    monkeypatch.setenv("THREAD_JOBS_IMPORT_DELAY", "3")
    log = tmp_path / "marks"
    doomed = thread_jobs.Hold(str(log), "doomed", 0.1).run_in_worker()
    waiting = thread_jobs.Hold(str(log), "waiting", 0.1).run_in_worker(retries=0)
    assert doomed is not None and waiting is not None
    cancelled = []

    def cancel_when_both_handed_over() -> bool:
        if not cancelled and len(errands.processes()) == 2:
            cancelled.append(errands.cancel(doomed.uuid))
        return all_finished(2)

    run_worker(
        cancel_when_both_handed_over,
        import_modules=JOBS,
        worker_max_processes=1,
        worker_threads=2,
        timeout=60,
    )

    assert len(cancelled) == 1 and cancelled[0] is not None
    results = results_of(thread_jobs.Hold)
    assert len(results) == 2
    by_status = {r.status: r for r in results}
    assert by_status[Status.CANCELLED].request_uuid == doomed.uuid
    # The other one had not begun: it went back to the line and ran once, unharmed.
    assert by_status[Status.SUCCESSFUL].request_uuid == waiting.uuid
    assert [(m.event, m.token) for m in thread_jobs.marks(log)] == [
        ("start", "waiting"),
        ("end", "waiting"),
    ]


def test_crashed_threaded_child_loses_every_job_it_held(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "marks"
    thread_jobs.Hold(str(log), "neighbour", 30).run_in_worker(retries=0)
    crashes = []

    def crash_once_neighbour_runs() -> bool:
        if thread_jobs.marks(log) and not crashes:
            crashes.append(sample_jobs.Crash().run_in_worker())
        return len(errands.results()) == 2

    run_worker(
        crash_once_neighbour_runs,
        import_modules=JOBS,
        worker_max_processes=1,
        worker_threads=2,
        timeout=60,
    )

    crashed, neighbour = results_of(sample_jobs.Crash), results_of(thread_jobs.Hold)
    assert [r.status for r in crashed] == [Status.LOST]
    assert [r.status for r in neighbour] == [Status.LOST]
    assert neighbour[0].error_type == "errands.worker.ProcessDied"
    assert neighbour[0].retry_request_uuid is None  # no retries: LOST for good, as in a crash


def test_many_short_jobs_each_run_once_with_threads(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "tokens"
    tokens = [f"t{n}" for n in range(300)]
    errands.enqueue_many(sample_jobs.Record(str(log), token) for token in tokens)

    run_worker(
        lambda: all_finished(300),
        import_modules=JOBS,
        worker_max_processes=2,
        worker_threads=4,
        worker_max_pending_per_process=50,
        timeout=60,
    )

    assert sorted(log.read_text().splitlines()) == sorted(tokens)
    results = errands.results(limit=1000)
    assert len(results) == 300
    assert {r.status for r in results} == {Status.SUCCESSFUL}
