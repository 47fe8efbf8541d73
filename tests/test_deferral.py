"""Deferral (issue 18 item 5): ``DeferJob(increment_retries=True)`` ends once the
attempts are spent, and a deferral is enqueued again through the job's
``should_enqueue``, its own concurrency slot free, as the reference does.

Real workers run the jobs (``run_worker``), on PostgreSQL and SQLite.
"""

from __future__ import annotations

import datetime
import importlib
import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import sample_jobs

import errands
from conftest import WorkerRunner
from errands import Status, lifecycle
from errands.backends import Backend
from errands.jobs import EnqueueOptions, _new_requests
from errands.models import Outcome, Requeue
from errands.testing.memory import MemoryBackend
from errands.worker.deferrals import write_deferral

JOBS_MODULE = textwrap.dedent(
    '''
    """Jobs that defer (written by tests/test_deferral.py)."""

    from errands import DeferJob, Job, register_job


    def note(path, line):
        with open(path, "a") as f:
            f.write(line + "\\n")


    @register_job
    class DeferAlways(Job):
        """Defers every time, each deferral counted as an attempt."""

        def __init__(self, path):
            self.path = path

        def run(self):
            note(self.path, "run")
            raise DeferJob(delay=0, increment_retries=True)


    @register_job
    class DeferBroken(Job):
        """Defers once; its should_enqueue raises once it ran (a marker file)."""

        def __init__(self, path):
            self.path = path

        def should_enqueue(self, concurrency_key):
            try:
                with open(self.path) as f:
                    ran = bool(f.read())
            except FileNotFoundError:
                ran = False
            if ran:
                raise RuntimeError("no way")
            return True

        def run(self):
            note(self.path, "run")
            raise DeferJob(delay=0)


    @register_job
    class DeferDeclined(Job):
        """Defers once; its should_enqueue says no once it ran (a marker file)."""

        def __init__(self, path):
            self.path = path

        def should_enqueue(self, concurrency_key):
            try:
                with open(self.path) as f:
                    return not f.read()
            except FileNotFoundError:
                return True

        def run(self):
            note(self.path, "run")
            raise DeferJob(delay=0)
    '''
)


@pytest.fixture
def deferral_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``deferral_jobs`` importable here and in the worker's children."""
    directory = tmp_path / "jobs"
    directory.mkdir()
    (directory / "deferral_jobs.py").write_text(JOBS_MODULE)
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(directory), os.environ["PYTHONPATH"]]))
    yield importlib.import_module("deferral_jobs")
    sys.modules.pop("deferral_jobs", None)


IMPORTS = ("sample_jobs", "deferral_jobs")


def idle() -> bool:
    """No job held, and none pending but those an hour away."""
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    return not errands.processes(limit=1) and all(
        r.start_at > soon for r in errands.requests(limit=100)
    )


@pytest.mark.slow
def test_deferring_with_increment_retries_ends_when_the_attempts_are_spent(
    run_worker: WorkerRunner, deferral_jobs: ModuleType, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    deferral_jobs.DeferAlways(str(runs)).run_in_worker(retries=2)

    run_worker(lambda: len(errands.results(limit=100)) >= 3 and idle(), import_modules=IMPORTS)

    chain = sorted(errands.results(limit=100), key=lambda r: r.retry_attempt)
    assert runs.read_text().count("run") == 3  # the first run and its 2 retries
    assert [r.status for r in chain] == [Status.DEFERRED, Status.DEFERRED, Status.ERRORED]
    assert [r.retry_attempt for r in chain] == [0, 1, 2]
    assert chain[0].retry_request_uuid == chain[1].request_uuid
    assert chain[1].retry_request_uuid == chain[2].request_uuid
    last = chain[-1]
    ending = lifecycle.deferred_after_last_attempt(retries=2, retry_attempt=2)
    assert (last.error_type, last.error) == (ending.error_type, ending.error)
    assert last.error_type == "errands.errors.DeferJob"
    assert last.error == "deferred after its last attempt (attempt 3 of 3)"
    assert "DeferJob" in last.traceback
    assert last.retry_request_uuid is None
    assert not errands.requests(limit=10)


@pytest.mark.slow
def test_a_deferral_is_enqueued_again_with_its_own_concurrency_slot_free(
    run_worker: WorkerRunner, tmp_path: Path
) -> None:
    """The process is gone before should_enqueue is asked: its own key does not block it."""
    runs = tmp_path / "runs"
    sample_jobs.DeferOnce(str(runs)).run_in_worker(concurrency_key="k")

    run_worker(lambda: len(errands.results(limit=100)) >= 2 and idle())

    chain = sorted(errands.results(limit=100), key=lambda r: r.ended_at)
    assert [r.status for r in chain] == [Status.DEFERRED, Status.SUCCESSFUL]
    assert chain[0].error == "Deferred for 0 seconds"
    assert chain[0].retry_request_uuid == chain[1].request_uuid
    assert chain[1].concurrency_key == "k" and chain[1].retry_attempt == 0
    assert chain[1].source == chain[0].source  # the job's origin, not the worker's
    assert runs.read_text().count("run") == 2


@pytest.mark.slow
def test_a_deferral_whose_key_another_pending_job_holds_is_not_enqueued_again(
    run_worker: WorkerRunner, backend: Backend, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    deferring = sample_jobs.DeferOnce(str(runs)).run_in_worker(concurrency_key="k")
    assert deferring is not None
    # Another request of the same class and key, pending for an hour (inserted as is:
    # should_enqueue would have declined it while the first was pending).
    (other,) = backend.insert_requests(
        requests=_new_requests(
            [sample_jobs.DeferOnce(str(tmp_path / "other"))],
            EnqueueOptions(delay=3600, concurrency_key="k"),
            "test",
        )[0]
    )

    run_worker(lambda: len(errands.results(limit=100)) >= 1 and idle())

    (result,) = errands.results(limit=100)
    assert result.status == Status.DEFERRED
    assert result.retry_request_uuid is None
    assert result.error == lifecycle.deferral_skipped(0, "k")
    assert result.error == (
        "Deferred for 0 seconds (re-enqueue skipped: should_enqueue() returned False "
        "for concurrency_key 'k')"
    )
    assert [r.uuid for r in errands.requests(limit=10)] == [other.uuid]
    assert runs.read_text().count("run") == 1


@pytest.mark.slow
def test_a_deferral_declined_by_its_own_should_enqueue(
    run_worker: WorkerRunner, deferral_jobs: ModuleType, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    deferral_jobs.DeferDeclined(str(runs)).run_in_worker()

    run_worker(lambda: len(errands.results(limit=100)) >= 1 and idle(), import_modules=IMPORTS)

    (result,) = errands.results(limit=100)
    assert result.status == Status.DEFERRED
    assert result.retry_request_uuid is None
    assert "re-enqueue skipped: should_enqueue() returned False" in result.error
    assert not errands.requests(limit=10)
    assert runs.read_text().count("run") == 1


@pytest.mark.slow
def test_a_deferral_whose_should_enqueue_raises_is_not_enqueued_again(
    run_worker: WorkerRunner, deferral_jobs: ModuleType, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    deferral_jobs.DeferBroken(str(runs)).run_in_worker()

    run_worker(lambda: len(errands.results(limit=100)) >= 1 and idle(), import_modules=IMPORTS)

    (result,) = errands.results(limit=100)
    assert result.status == Status.DEFERRED
    assert result.retry_request_uuid is None
    assert result.error == "Deferred for 0 seconds (not enqueued again: RuntimeError: no way)"
    assert not errands.requests(limit=10)


def test_the_in_memory_backend_writes_a_deferral_the_same_way() -> None:
    """The in-memory backend implements ``completing`` too: result, re-enqueue, link."""
    backend = MemoryBackend(mode="capture")
    job = sample_jobs.DeferOnce("unused")
    backend.insert_requests(requests=_new_requests([job], EnqueueOptions(), "test")[0])
    (process,) = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=1)
    ended = datetime.datetime.now(datetime.UTC)
    outcome = Outcome(
        process_uuid=process.uuid,
        status=Status.DEFERRED,
        started_at=ended,
        ended_at=ended,
        error=lifecycle.deferred(5),
        requeue=Requeue(delay_seconds=5.0, retry_attempt=0),
    )

    result = write_deferral(backend, outcome)

    assert result is not None and result.status == Status.DEFERRED
    (again,) = backend.requests.values()
    assert result.retry_request_uuid == again.uuid
    assert write_deferral(backend, outcome) is None  # written once: the process is gone
