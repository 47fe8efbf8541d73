"""errands.lifecycle: each backend and the worker write exactly the module's endings.

The backend tests run on PostgreSQL and SQLite (the ``backend`` fixture): each
rule a backend applies (rescue of a silent worker, of a worker without a
heartbeat row, loss of an orphan, cancel of a pending request) is compared with
the status, error type and message the module gives for it.
"""

from __future__ import annotations

import datetime
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import sample_jobs
from staleness import backdate_claims, backdate_heartbeat

import errands.worker
from conftest import SpawnWorker, wait_for
from errands import Status, lifecycle
from errands.backends import Backend
from errands.models import JobResult, NewRequest, Requeue, Selection, WorkerInfo
from errands.testing.memory import MemoryBackend
from errands.worker.execution import Assignment, ended

TIMEOUT = 60.0


def _enqueue(backend: Backend, count: int = 1, **fields: Any) -> list[uuid.UUID]:
    with backend.enqueue_transaction() as tx:
        made = tx.insert_requests(
            [NewRequest(job_class="tests.Job", parameters={"n": n}, **fields) for n in range(count)]
        )
    return [request.uuid for request in made]


def _register(backend: Backend) -> uuid.UUID:
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="test-host", pid=1234, queues=["a"])
    )
    return worker_id


def _ending(result: JobResult) -> tuple[Status, str, str]:
    return (result.status, result.error_type, result.error)


def _expected(ending: lifecycle.Ending) -> tuple[Status, str, str]:
    return (ending.status, ending.error_type, ending.error)


# -- the backends ----------------------------------------------------------------------


def test_a_silent_workers_processes_end_as_lost_with_worker(backend: Backend) -> None:
    worker_id = _register(backend)
    _enqueue(backend, 2)
    backend.claim(worker_id=worker_id, queues=[], limit=10)
    backdate_heartbeat(backend.url, worker_id, 2 * TIMEOUT)

    lost = backend.rescue_stale_workers(timeout_seconds=TIMEOUT)

    expected = _expected(lifecycle.lost_with_worker(worker_id, TIMEOUT))
    assert [_ending(r) for r in lost] == [expected, expected]
    assert expected[2] == f"worker {worker_id} stopped heartbeating for over 60 s"


def test_processes_of_a_worker_without_row_end_as_lost_without_heartbeat_row(
    backend: Backend,
) -> None:
    _enqueue(backend)
    unregistered = uuid.uuid4()
    backend.claim(worker_id=unregistered, queues=[], limit=10)
    backdate_claims(backend.url, unregistered, 2 * TIMEOUT)

    (lost,) = backend.rescue_stale_workers(timeout_seconds=TIMEOUT)

    assert _ending(lost) == _expected(lifecycle.lost_without_heartbeat_row(unregistered))


def test_an_untracked_process_ends_as_orphaned(backend: Backend) -> None:
    worker_id = _register(backend)
    _enqueue(backend)
    (process,) = backend.claim(worker_id=worker_id, queues=[], limit=10)

    (lost,) = backend.lose_processes(worker_id=worker_id, process_uuids=[process.uuid])

    assert _ending(lost) == _expected(lifecycle.orphaned(worker_id))


def test_a_cancelled_pending_request_ends_as_cancelled_pending(backend: Backend) -> None:
    (request_uuid,) = _enqueue(backend)

    result = backend.cancel_pending(uuid=request_uuid)

    assert result is not None
    assert _ending(result) == _expected(lifecycle.CANCELLED_PENDING)
    assert result.retry_request_uuid is None


def test_cancelled_selected_requests_end_as_cancelled_pending(backend: Backend) -> None:
    _enqueue(backend, 3, queue="cancel-me")

    results = backend.cancel_pending_selected(selection=Selection(queue="cancel-me"), limit=10)

    assert [_ending(r) for r in results] == [_expected(lifecycle.CANCELLED_PENDING)] * 3


def test_the_memory_backend_cancels_as_the_databases_do() -> None:
    memory = MemoryBackend(mode="capture")
    (request_uuid,) = _enqueue(memory)

    result = memory.cancel_pending(uuid=request_uuid)

    assert result is not None
    assert _ending(result) == _expected(lifecycle.CANCELLED_PENDING)


# -- the rules themselves -------------------------------------------------------------------


def test_a_timeout_in_seconds_reads_without_a_trailing_zero() -> None:
    worker_id = uuid.uuid4()
    assert lifecycle.lost_with_worker(worker_id, 300.0).error.endswith("for over 300 s")
    assert lifecycle.lost_with_worker(worker_id, 2.5).error.endswith("for over 2.5 s")


def test_the_worker_exceptions_name_the_error_types() -> None:
    assert errands.worker.qualified_name(errands.worker.ProcessDied) == lifecycle.PROCESS_DIED
    assert errands.worker.qualified_name(errands.worker.Interrupted) == lifecycle.INTERRUPTED
    assert lifecycle.TIMED_OUT == "errands.errors.JobTimeout"


def test_a_dead_child_loses_a_begun_job_and_fails_one_not_begun() -> None:
    assert lifecycle.process_died(7, -9, begun=True).status is Status.LOST
    assert lifecycle.process_died(7, -9, begun=False).status is Status.ERRORED
    assert lifecycle.process_died(7, 13, begun=True).error == "job process 7 exited with code 13"


@pytest.mark.parametrize(
    ("retries", "retry_attempt", "left"), [(0, 0, False), (2, 0, True), (2, 1, True), (2, 2, False)]
)
def test_attempts_left(retries: int, retry_attempt: int, left: bool) -> None:
    assert lifecycle.attempts_left(retries=retries, retry_attempt=retry_attempt) is left


def _assignment(*, retries: int, retry_attempt: int) -> Assignment:
    # An unregistered job: the retry delay cannot be computed, so no retry is made
    # for IF_ATTEMPTS_LEFT; the other two rules decide without it.
    return Assignment(
        process_uuid=uuid.uuid4(),
        job_class="tests.Unregistered",
        parameters={},
        retries=retries,
        retry_attempt=retry_attempt,
    )


def test_the_worker_writes_the_endings_and_their_retry_rule() -> None:
    started = datetime.datetime.now(datetime.UTC)
    assignment = _assignment(retries=3, retry_attempt=1)
    for ending in (
        lifecycle.CANCELLED_RUNNING,
        lifecycle.timed_out(5.0),
        lifecycle.interrupted("x (timeout)"),
        lifecycle.process_died(1, 2, begun=True),
    ):
        outcome = ended(assignment, ending, started_at=started)
        assert (outcome.status, outcome.error_type, outcome.error) == _expected(ending)
        if ending.retry is lifecycle.Retry.SAME_ATTEMPT:
            assert outcome.requeue == Requeue(delay_seconds=0.0, retry_attempt=1)
        else:
            assert outcome.requeue is None  # NEVER, or a delay that cannot be computed


def test_with_no_attempts_left_nothing_is_retried() -> None:
    outcome = ended(
        _assignment(retries=1, retry_attempt=1),
        lifecycle.timed_out(1.0),
        started_at=None,
    )
    assert outcome.requeue is None
    assert outcome.traceback == ""  # the retry delay was not even asked for


def test_a_cancelled_job_has_one_error_type_pending_or_running() -> None:
    assert lifecycle.CANCELLED_PENDING.error_type == lifecycle.CANCELLED == "Cancelled"
    assert lifecycle.CANCELLED_RUNNING.error_type == lifecycle.CANCELLED
    assert lifecycle.CANCELLED_PENDING.status is lifecycle.CANCELLED_RUNNING.status


# -- a real worker ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_worker_cancels_pending_and_running_jobs_with_one_error_type(
    spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    running = sample_jobs.SlowRetry(str(marks), seconds=60).run_in_worker(queue="run")
    pending = sample_jobs.Noop().run_in_worker(queue="later")  # no worker serves it
    assert running is not None and pending is not None
    worker = spawn_worker(queues=("run",))
    wait_for(lambda: marks.exists() and marks.read_text() == "started\n", timeout=30)
    (process,) = errands.processes()

    errands.cancel(pending.uuid)
    errands.cancel(process.uuid)
    wait_for(lambda: len(errands.results()) == 2, timeout=30)

    by_request = {r.request_uuid: r for r in errands.results()}
    cancelled_pending, cancelled_running = by_request[pending.uuid], by_request[running.uuid]
    assert cancelled_pending.status == cancelled_running.status == Status.CANCELLED
    assert cancelled_pending.error_type == cancelled_running.error_type == "Cancelled"
    assert cancelled_pending.error == "cancelled before it started"
    assert cancelled_running.error == "cancelled"
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
