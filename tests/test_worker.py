"""The worker: running jobs in child processes and recording every outcome."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import sample_jobs

import errands
from conftest import WorkerRunner
from errands import Status
from errands.backends import Backend
from errands.models import JobResult, NewRequest


def results_by_status(**filters: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in errands.results(limit=10_000, **filters):  # type: ignore[arg-type]
        counts[result.status] = counts.get(result.status, 0) + 1
    return counts


def finished(count: int) -> bool:
    return (
        len(errands.results(limit=10_000)) >= count
        and not errands.requests(limit=1)
        and not errands.processes(limit=1)
    )


def only_result() -> JobResult:
    (result,) = errands.results()
    return result


@pytest.mark.slow
def test_successful_job_records_its_return_value_and_times(run_worker: WorkerRunner) -> None:
    request = sample_jobs.Echo({"answer": 42}).run_in_worker()
    assert request is not None
    worker = run_worker(lambda: finished(1))
    result = only_result()
    assert result.status == Status.SUCCESSFUL
    assert result.return_value == {"answer": 42}
    assert result.request_uuid == request.uuid
    assert result.worker_id == worker.worker_id
    assert result.started_at is not None
    assert result.requested_at <= result.started_at <= result.ended_at


@pytest.mark.slow
def test_async_run_is_awaited(run_worker: WorkerRunner) -> None:
    sample_jobs.AsyncEcho("hi").run_in_worker()
    run_worker(lambda: finished(1))
    assert only_result().return_value == "hi"


@pytest.mark.slow
def test_exception_ends_errored_with_type_message_and_traceback(run_worker: WorkerRunner) -> None:
    sample_jobs.Fail("kaput").run_in_worker()
    run_worker(lambda: finished(1))
    result = only_result()
    assert result.status == Status.ERRORED
    assert result.error_type == "ValueError"
    assert result.error == "kaput"
    assert "raise ValueError(self.message)" in result.traceback
    assert result.retry_request_uuid is None


@pytest.mark.slow
def test_failed_job_is_retried_until_it_succeeds(run_worker: WorkerRunner, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    sample_jobs.FailTimes(str(counter), 2).run_in_worker(retries=3)
    run_worker(lambda: finished(3))
    chain = sorted(errands.results(), key=lambda r: r.retry_attempt)
    assert [r.status for r in chain] == [Status.ERRORED, Status.ERRORED, Status.SUCCESSFUL]
    assert [r.retry_attempt for r in chain] == [0, 1, 2]
    assert chain[0].retry_request_uuid == chain[1].request_uuid
    assert chain[1].retry_request_uuid == chain[2].request_uuid
    assert chain[2].retry_request_uuid is None
    assert counter.read_text().count("attempt") == 3


@pytest.mark.slow
def test_retries_stop_when_exhausted(run_worker: WorkerRunner) -> None:
    sample_jobs.Fail().run_in_worker(retries=1)
    run_worker(lambda: finished(2))
    chain = sorted(errands.results(), key=lambda r: r.retry_attempt)
    assert [r.status for r in chain] == [Status.ERRORED, Status.ERRORED]
    assert chain[-1].retry_request_uuid is None


@pytest.mark.slow
def test_defer_records_deferred_and_runs_again(run_worker: WorkerRunner, tmp_path: Path) -> None:
    log = tmp_path / "runs"
    sample_jobs.DeferOnce(str(log)).run_in_worker()
    run_worker(lambda: finished(2))
    chain = sorted(errands.results(), key=lambda r: r.ended_at)
    assert [r.status for r in chain] == [Status.DEFERRED, Status.SUCCESSFUL]
    assert chain[0].retry_request_uuid == chain[1].request_uuid
    assert chain[1].retry_attempt == 0  # a plain deferral does not use up a retry
    assert log.read_text().count("run") == 2


@pytest.mark.slow
def test_unknown_job_class_ends_errored_without_stopping_the_worker(
    run_worker: WorkerRunner, backend: Backend
) -> None:
    with backend.enqueue_transaction() as tx:
        tx.insert_requests(
            [NewRequest(job_class="nowhere.Missing", parameters={"args": [], "kwargs": {}})]
        )
    sample_jobs.Echo(1).run_in_worker()
    run_worker(lambda: finished(2))
    missing = errands.results(job_class="nowhere.Missing")[0]
    assert missing.status == Status.ERRORED
    assert missing.error_type == "errands.errors.JobNotRegistered"
    assert "nowhere.Missing" in missing.error
    assert errands.results(job_class="sample_jobs.Echo")[0].status == Status.SUCCESSFUL


@pytest.mark.slow
def test_undecodable_parameters_end_errored(run_worker: WorkerRunner, backend: Backend) -> None:
    bad = {"args": [{"__errands__": "no-such-type", "value": 1}], "kwargs": {}}
    with backend.enqueue_transaction() as tx:
        tx.insert_requests([NewRequest(job_class="sample_jobs.Echo", parameters=bad)])
    run_worker(lambda: finished(1))
    result = only_result()
    assert result.status == Status.ERRORED
    assert result.error_type == "errands.errors.ParameterError"


@pytest.mark.slow
def test_crashed_job_process_is_lost_and_the_worker_goes_on(run_worker: WorkerRunner) -> None:
    sample_jobs.Crash().run_in_worker()
    sample_jobs.Echo("after").run_in_worker(priority=-1)
    worker = run_worker(lambda: finished(2))
    crashed = errands.results(job_class="sample_jobs.Crash")[0]
    assert crashed.status == Status.LOST
    assert "exited with code 13" in crashed.error
    assert errands.results(job_class="sample_jobs.Echo")[0].status == Status.SUCCESSFUL
    assert worker.pool.spawned >= 3  # the dead child was replaced


@pytest.mark.slow
def test_job_past_its_timeout_is_killed_and_errored(run_worker: WorkerRunner) -> None:
    sample_jobs.Sleep(60).run_in_worker(timeout=0.5)
    run_worker(lambda: finished(1), timeout=20)
    result = only_result()
    assert result.status == Status.ERRORED
    assert result.error_type == "errands.errors.JobTimeout"


@pytest.mark.slow
def test_cancelling_a_running_job_kills_it_and_fires_on_aborted(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    request = sample_jobs.AbortAware(str(log)).run_in_worker()
    assert request is not None

    cancelled = False

    def cancel_once_started() -> bool:
        nonlocal cancelled
        if not cancelled and log.exists():
            (process,) = errands.processes()
            assert errands.cancel(process.uuid) is not None
            cancelled = True
        return cancelled and finished(1)

    run_worker(cancel_once_started, timeout=20)
    result = only_result()
    assert result.status == Status.CANCELLED
    assert log.read_text().splitlines() == ["started", "aborted CANCELLED"]


def test_cancelling_a_pending_request_records_cancelled(backend: Backend) -> None:
    request = sample_jobs.Noop().run_in_worker(delay=3600)
    assert request is not None
    result = errands.cancel(request.uuid)
    assert isinstance(result, JobResult) and result.status == Status.CANCELLED
    assert errands.requests() == []
    assert errands.cancel(uuid.uuid4()) is None


@pytest.mark.slow
def test_worker_only_claims_its_queues(run_worker: WorkerRunner) -> None:
    sample_jobs.Mail(1).run_in_worker()
    sample_jobs.Noop().run_in_worker()
    run_worker(lambda: len(errands.results()) >= 1, queues=["mail"])
    assert [r.job_class for r in errands.results()] == ["sample_jobs.Mail"]
    assert [r.job_class for r in errands.requests()] == ["sample_jobs.Noop"]


@pytest.mark.slow
def test_higher_priority_runs_first_then_fifo(run_worker: WorkerRunner, tmp_path: Path) -> None:
    log = tmp_path / "order"
    for token, priority in [("low", -1), ("first", 0), ("second", 0), ("high", 5)]:
        sample_jobs.Record(str(log), token).run_in_worker(priority=priority)
    run_worker(lambda: finished(4), worker_max_processes=1)
    assert log.read_text().split() == ["high", "first", "second", "low"]


@pytest.mark.slow
def test_delayed_job_waits_for_its_time(run_worker: WorkerRunner) -> None:
    sample_jobs.Noop().run_in_worker(delay=3600)
    sample_jobs.Echo(1).run_in_worker()
    run_worker(lambda: len(errands.results()) >= 1)
    assert len(errands.requests()) == 1


@pytest.mark.slow
def test_middleware_wraps_each_execution(run_worker: WorkerRunner) -> None:
    sample_jobs.Echo(5).run_in_worker()
    run_worker(lambda: finished(1), middleware=("sample_jobs.DoubleResult",))
    assert only_result().return_value == 10


@pytest.mark.slow
def test_stopping_puts_claimed_but_unstarted_jobs_back(db_url: str) -> None:
    from conftest import worker_config
    from errands.worker import Worker

    for _ in range(5):
        sample_jobs.Noop().run_in_worker(delay=0)
    worker = Worker(config=worker_config(db_url, worker_max_processes=1))
    worker.start()
    worker._claim()  # claim everything, start nothing
    assert len(worker.waiting) == 5
    worker.stop()
    while not worker.finished():
        worker.turn()
    worker.shut_down()
    assert len(errands.requests()) == 5
    assert errands.processes() == []
    assert errands.results() == []
    assert errands.workers() == []


@pytest.mark.slow
def test_paused_queue_is_not_claimed_until_resumed(run_worker: WorkerRunner) -> None:
    assert errands.pause_queue("mail") is True
    assert errands.pause_queue("mail") is False  # already paused
    assert errands.paused_queues() == ["mail"]
    sample_jobs.Mail(1).run_in_worker()
    sample_jobs.Noop().run_in_worker()
    run_worker(lambda: len(errands.results()) == 1)
    assert only_result().job_class == "sample_jobs.Noop"
    (waiting,) = errands.requests()
    assert waiting.queue == "mail"

    assert errands.resume_queue("mail") is True
    assert errands.resume_queue("mail") is False
    run_worker(lambda: finished(2))
    assert errands.paused_queues() == []


@pytest.mark.slow
def test_stats_line_reports_queues_and_throughput(
    run_worker: WorkerRunner, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        sample_jobs.Noop().run_in_worker()
    sample_jobs.Mail(7).run_in_worker(delay=600)
    with caplog.at_level(logging.INFO, logger="errands"):
        worker = run_worker(lambda: finished_count(3))
        worker.log_stats()
    (record,) = [r for r in caplog.records if r.getMessage() == "worker stats"][-1:]
    assert record.completed == 3  # type: ignore[attr-defined]
    assert record.jobs_per_second > 0  # type: ignore[attr-defined]
    assert record.queues["mail"] == {"pending": 0, "running": 0}  # type: ignore[attr-defined]


def finished_count(count: int) -> bool:
    return len(errands.results(limit=10_000)) >= count


@pytest.mark.slow
def test_worker_heartbeats_between_slow_on_aborted_hooks(db_url: str) -> None:
    from conftest import worker_config
    from errands.worker import Worker

    requests = [sample_jobs.SlowAbortHook(0.3).run_in_worker() for _ in range(5)]
    cancelled = [errands.backend().cancel_pending(uuid=r.uuid) for r in requests if r]
    worker = Worker(config=worker_config(db_url, heartbeat_interval=0.2))
    worker.start()
    try:
        (before,) = errands.workers()
        worker.run_aborted_hooks([r for r in cancelled if r])  # 1.5 s of hooks
        (after,) = errands.workers()
    finally:
        worker.stop()
        while not worker.finished():
            worker.turn()
        worker.shut_down()
    assert before.last_heartbeat_at and after.last_heartbeat_at
    assert (after.last_heartbeat_at - before.last_heartbeat_at).total_seconds() >= 1.0


@pytest.mark.parametrize(("limit", "expected_pids"), [(1, 4), (None, 1)])
@pytest.mark.slow
def test_max_jobs_per_process_recycles_children(
    run_worker: WorkerRunner, limit: int | None, expected_pids: int
) -> None:
    for _ in range(4):
        sample_jobs.ProcessId().run_in_worker()
    run_worker(lambda: finished(4), worker_max_processes=1, worker_max_jobs_per_process=limit)
    pids = {r.return_value for r in errands.results()}
    assert len(pids) == expected_pids


@pytest.mark.slow
def test_outcomes_larger_than_a_pipe_holds_reach_the_parent(run_worker: WorkerRunner) -> None:
    # A child writes each outcome as its job ends and rings the parent before a large
    # one: a return value bigger than the pipe's buffer must not stall either process.
    big = "x" * 300_000
    values = [big, "small", big + "y", "tiny", big + "z"]
    for value in values:
        sample_jobs.Echo(value).run_in_worker()
    run_worker(lambda: finished(len(values)), worker_max_processes=1)
    results = errands.results(limit=10)
    assert sorted(r.return_value for r in results) == sorted(values)
    assert {r.status for r in results} == {Status.SUCCESSFUL}
