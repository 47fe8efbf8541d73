"""User code never stops the worker (README, Security).

``SystemExit``, ``KeyboardInterrupt`` or an application's own ``BaseException``
raised by a job's ``run()`` (sync or async), its constructor, a middleware, or a
hook (``calculate_retry_delay`` in a child or in the worker parent, ``on_aborted``
in the parent) is recorded on that job like an ordinary exception, and the same
worker goes on running the jobs enqueued after it. Each scenario runs a real
worker (``tests/support/worker_main.py``, with its own signal handlers, as
``errands worker`` has) in a subprocess, on PostgreSQL and SQLite; the jobs are in
``tests/support/hostile_jobs.py``. At enqueue, such an exception from
``should_enqueue`` reaches the caller as an ordinary error, with nothing written.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import hostile_jobs
import pytest
import sample_jobs
from hostile_jobs import ERROR_TYPES
from staleness import backdate_heartbeat
from worker_process import WorkerProcess

import errands
from conftest import SpawnWorker, wait_for
from errands import Job, JobResult, Status
from errands.containment import UserCodeError

KINDS = pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "Boom"])
RUN_KINDS = pytest.mark.parametrize("kind", list(hostile_jobs.EXCEPTIONS))  # + GeneratorExit
# worker_threads 1: the job runs on the child's main thread; 2: on a runner thread
# beside another job.
MODES = pytest.mark.parametrize("threads", [1, 2], ids=["processes", "threads"])


@pytest.fixture
def spawn_worker(spawn_worker: SpawnWorker) -> SpawnWorker:
    """conftest's ``spawn_worker``, whose workers import the hostile jobs too."""
    return functools.partial(spawn_worker, import_modules=("sample_jobs", "hostile_jobs"))


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    return tmp_path / "marks"


def pids_at(marks: Path, place: str) -> list[int]:
    """The processes in which ``place`` raised, in order."""
    lines = marks.read_text().splitlines() if marks.exists() else []
    return [int(line.rpartition(" ")[2]) for line in lines if line.rpartition(" ")[0] == place]


def result_of(job: Job, **options: Any) -> JobResult:
    """Enqueue ``job`` and wait for its result."""
    request = job.run_in_worker(**options)
    assert request is not None
    return result_of_request(request.uuid)


def result_of_request(request_uuid: uuid.UUID) -> JobResult:
    found: list[JobResult] = []

    def finished() -> bool:
        result = errands.get(request_uuid)
        if isinstance(result, JobResult):
            found.append(result)
        return bool(found)

    wait_for(finished, timeout=30)
    return found[0]


def assert_worker_goes_on(worker: WorkerProcess, *, child: int | None = None) -> None:
    """A job enqueued now runs under the same worker process (in the same child)."""
    assert worker.alive()
    result = result_of(hostile_jobs.WhereAmI())
    assert result.status == Status.SUCCESSFUL
    pid, parent = result.return_value
    assert parent == worker.pid
    if child is not None:
        assert pid == child  # the child did not exit and get replaced
    assert worker.alive()


def assert_errored(result: JobResult, kind: str, place: str) -> None:
    assert (result.status, result.error_type, result.error) == (
        Status.ERRORED,
        ERROR_TYPES[kind],
        f"raised in {place}",
    )
    assert 'raise EXCEPTIONS[kind](f"raised in {place}")' in result.traceback


# -- in a child -------------------------------------------------------------------------


@RUN_KINDS
@MODES
@pytest.mark.slow
def test_run_raising_is_errored_and_its_child_runs_the_next_job(
    spawn_worker: SpawnWorker, marks: Path, kind: str, threads: int
) -> None:
    worker = spawn_worker(worker_threads=threads)
    beside = sample_jobs.Sleep(0.5).run_in_worker()  # with 2 threads, it runs alongside

    result = result_of(hostile_jobs.RaiseInRun(kind, str(marks)))

    assert_errored(result, kind, "run")
    assert beside is not None
    assert result_of_request(beside.uuid).status == Status.SUCCESSFUL  # not LOST with it
    assert_worker_goes_on(worker, child=pids_at(marks, "run")[0])


@RUN_KINDS
@MODES
@pytest.mark.slow
def test_async_run_raising_is_errored_and_the_event_loop_runs_the_next_job(
    spawn_worker: SpawnWorker, marks: Path, kind: str, threads: int
) -> None:
    worker = spawn_worker(worker_threads=threads)

    result = result_of(hostile_jobs.AsyncRaiseInRun(kind, str(marks)))

    assert_errored(result, kind, "async run")
    assert result_of(sample_jobs.AsyncEcho("still looping")).return_value == "still looping"
    assert_worker_goes_on(worker, child=pids_at(marks, "async run")[0])


# asyncio logs any other exception of a callback and goes on: these two stopped the loop.
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.slow
def test_a_callback_raising_on_the_shared_event_loop_leaves_it_running(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker()

    result = result_of(hostile_jobs.AsyncRaiseOnTheLoop(kind, str(marks)))

    assert (result.status, result.return_value) == (Status.SUCCESSFUL, "done")
    wait_for(lambda: bool(pids_at(marks, "loop callback")))
    # Once the loop stopped, later async jobs waited forever.
    assert result_of(sample_jobs.AsyncEcho("still looping")).return_value == "still looping"
    assert_worker_goes_on(worker, child=pids_at(marks, "loop callback")[0])


@KINDS
@pytest.mark.slow
def test_constructor_raising_is_errored_and_its_child_runs_the_next_job(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker()

    result = result_of(hostile_jobs.RaiseInConstructor(kind, str(marks), os.getpid()))

    assert_errored(result, kind, "constructor")
    assert_worker_goes_on(worker, child=pids_at(marks, "constructor")[0])


@KINDS
@pytest.mark.slow
def test_middleware_raising_is_errored_and_its_child_runs_the_next_job(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker(middleware="hostile_jobs.RaisingMiddleware")

    result = result_of(hostile_jobs.MiddlewareTarget(kind, str(marks)))

    assert_errored(result, kind, "middleware")
    assert_worker_goes_on(worker, child=pids_at(marks, "middleware")[0])


@KINDS
@pytest.mark.slow
def test_middleware_raising_as_it_is_built_fails_each_job_in_one_child(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker(
        middleware="hostile_jobs.MiddlewareRaisingWhenBuilt",
        env={"HOSTILE_KIND": kind, "HOSTILE_MARKS": str(marks)},
    )

    first = result_of(sample_jobs.Echo(1))
    second = result_of(sample_jobs.Echo(2))

    for result in (first, second):
        assert_errored(result, kind, "middleware constructor")
    assert worker.alive()
    # One child built the middleware once and ran both: no crash and respawn loop.
    assert len(pids_at(marks, "middleware constructor")) == 1


@KINDS
@pytest.mark.slow
def test_retry_delay_raising_in_the_child_ends_the_job_errored_without_a_retry(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker()

    result = result_of(hostile_jobs.FailWithRaisingRetryDelay(kind, str(marks)), retries=1)

    assert (result.status, result.error_type) == (Status.ERRORED, "ValueError")
    assert (
        f"Not retried: computing the retry delay raised {ERROR_TYPES[kind]}: "
        "raised in calculate_retry_delay" in result.traceback
    )
    assert result.retry_request_uuid is None
    assert not errands.requests()
    (child,) = pids_at(marks, "calculate_retry_delay")
    assert child != worker.pid
    assert_worker_goes_on(worker, child=child)


UNSTORABLE_DELAYS = pytest.mark.parametrize("delay", ["nan", "inf", "1e12", "-1e12"])


@UNSTORABLE_DELAYS
@pytest.mark.slow
def test_a_deferral_no_database_can_store_fails_only_its_own_job(
    spawn_worker: SpawnWorker, delay: str
) -> None:
    worker = spawn_worker()

    result = result_of(hostile_jobs.DeferUnstorably(delay))

    assert (result.status, result.error_type) == (Status.ERRORED, "ValueError")
    assert "hostile_jobs.DeferUnstorably: DeferJob delay" in result.error
    assert not errands.requests()
    assert_worker_goes_on(worker)


@UNSTORABLE_DELAYS
@pytest.mark.slow
def test_a_retry_delay_no_database_can_store_ends_the_job_without_a_retry(
    spawn_worker: SpawnWorker, delay: str
) -> None:
    worker = spawn_worker()

    result = result_of(hostile_jobs.FailWithUnstorableRetryDelay(delay), retries=2)

    assert (result.status, result.error) == (Status.ERRORED, "an ordinary failure")
    assert "Not retried: computing the retry delay raised ValueError" in result.traceback
    assert result.retry_request_uuid is None
    assert not errands.requests()
    assert_worker_goes_on(worker)


# -- in the worker parent ------------------------------------------------------------------


@KINDS
@pytest.mark.slow
def test_retry_delay_raising_in_the_parent_after_a_timeout_ends_the_job_errored(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker()

    job = hostile_jobs.SlowWithRaisingRetryDelay(kind, str(marks))
    result = result_of(job, retries=1, timeout=0.5)

    assert (result.status, result.error_type) == (Status.ERRORED, "errands.errors.JobTimeout")
    assert f"retry delay raised {ERROR_TYPES[kind]}: raised in" in result.traceback
    assert result.retry_request_uuid is None
    assert pids_at(marks, "calculate_retry_delay") == [worker.pid]  # the parent computed it
    assert_worker_goes_on(worker)


@KINDS
@pytest.mark.slow
def test_on_aborted_raising_in_the_parent_is_logged_and_the_worker_goes_on(
    spawn_worker: SpawnWorker, marks: Path, kind: str
) -> None:
    worker = spawn_worker()

    result = result_of(hostile_jobs.CrashWithRaisingOnAborted(kind, str(marks)))

    assert (result.status, result.error_type) == (Status.LOST, "errands.worker.ProcessDied")
    wait_for(lambda: bool(pids_at(marks, "on_aborted")))
    assert pids_at(marks, "on_aborted") == [worker.pid]
    assert_worker_goes_on(worker)
    log = worker.log_path.read_text()
    assert "on_aborted failed" in log
    assert f"{ERROR_TYPES[kind]}: raised in on_aborted" in log


@KINDS
@pytest.mark.slow
def test_retry_delay_raising_while_rescuing_a_dead_workers_job_is_logged(
    spawn_worker: SpawnWorker, marks: Path, kind: str, db_url: str
) -> None:
    doomed = spawn_worker()
    request = hostile_jobs.SlowWithRaisingRetryDelay(kind, str(marks)).run_in_worker(retries=1)
    assert request is not None
    wait_for(lambda: bool(pids_at(marks, "run")))
    dead = doomed.wait_registered()
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.process.wait(timeout=10)
    backdate_heartbeat(db_url, dead.worker_id, 60)  # its heartbeat timed out long ago

    rescuer = spawn_worker(heartbeat_timeout=1)  # it retries the LOST job: the delay raises

    result = result_of_request(request.uuid)
    assert (result.status, result.error_type) == (Status.LOST, "WorkerLost")
    wait_for(lambda: bool(pids_at(marks, "calculate_retry_delay")))
    assert pids_at(marks, "calculate_retry_delay") == [rescuer.pid]
    assert_worker_goes_on(rescuer)
    assert result_of_request(request.uuid).retry_request_uuid is None
    log = rescuer.log_path.read_text()
    assert f"{ERROR_TYPES[kind]}: raised in calculate_retry_delay" in log


# -- the worker's own signals ------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_a_signal_still_stops_the_worker_after_a_job_raised_keyboard_interrupt(
    spawn_worker: SpawnWorker, marks: Path, tmp_path: Path, signum: int
) -> None:
    worker = spawn_worker()
    raised = result_of(hostile_jobs.RaiseInRun("KeyboardInterrupt", str(marks)))
    assert_errored(raised, "KeyboardInterrupt", "run")
    progress = tmp_path / "progress"
    request = sample_jobs.Sleep(1.0, str(progress)).run_in_worker()
    assert request is not None
    wait_for(progress.exists)

    if signum == signal.SIGINT:
        os.killpg(worker.pid, signum)  # Ctrl-C reaches the children too (they ignore it)
    else:
        os.kill(worker.pid, signum)

    assert worker.process.wait(timeout=20) == 0  # a graceful stop: the job drained
    assert result_of_request(request.uuid).status == Status.SUCCESSFUL


# -- at enqueue ---------------------------------------------------------------------------


@KINDS
def test_should_enqueue_raising_is_an_error_for_the_caller_and_nothing_is_written(
    db_url: str, marks: Path, kind: str
) -> None:
    caught: list[BaseException] = []

    def enqueue() -> None:  # a thread: a KeyboardInterrupt there is no Ctrl-C
        try:
            hostile_jobs.RaiseInShouldEnqueue(kind, str(marks)).run_in_worker()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=enqueue)
    thread.start()
    thread.join()

    (error,) = caught
    assert isinstance(error, UserCodeError)
    assert type(error.__cause__) is hostile_jobs.EXCEPTIONS[kind]
    assert "should_enqueue() raised" in str(error)
    assert not errands.requests() and not errands.results()
    assert sample_jobs.Echo("after").run_in_worker() is not None


def test_keyboard_interrupt_in_should_enqueue_on_the_main_thread_stays_a_ctrl_c(
    db_url: str, marks: Path
) -> None:
    # With Python's default SIGINT handler, the main thread's KeyboardInterrupt may be
    # the user's Ctrl-C: it interrupts the enqueueing script, as before.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        hostile_jobs.RaiseInShouldEnqueue("KeyboardInterrupt", str(marks)).run_in_worker()
    assert not errands.requests()
