"""errands.testing (capture and immediate modes), its pytest fixtures, and
errands.wait_for_result on both backends."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from integration_jobs import Add, FanOut, Forever, Keywords, SlowAdd, Unhandled
from sample_jobs import DeferOnce, Echo, FailTimes, Record, WithTypes

import errands
from conftest import SERVER_URL
from errands import testing
from errands.backends import Backend
from errands.errors import ParameterError
from errands.models import Status
from errands.testing.databases import BackgroundWorker, TestDatabases

# -- capture mode ------------------------------------------------------------------------


def test_capture_records_jobs_without_running_them(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with testing.capture() as jobs:
        request = Record(str(log), "a").run_in_worker(queue="mail")
        assert request is not None
        found = jobs.assert_enqueued(Record, path=str(log), token="a")
        assert [r.uuid for r in found] == [request.uuid]
        assert found[0].queue == "mail"
        jobs.assert_not_enqueued(Record, token="b")
        assert jobs.pending() == found
    assert not log.exists()


def test_assert_enqueued_names_what_was_enqueued_when_nothing_matches() -> None:
    with testing.capture() as jobs:
        Add(1, 2).run_in_worker()
        with pytest.raises(AssertionError, match=r"integration_jobs\.Add\(a=1, b=2\)"):
            jobs.assert_enqueued(Add, a=5)
        with pytest.raises(AssertionError, match="expected none"):
            jobs.assert_not_enqueued(Add)


def test_parameters_match_by_name_with_defaults_and_decoded_types() -> None:
    when = datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC)
    with testing.capture():
        Add(7).run_in_worker()
        WithTypes(when, (1, 2)).run_in_worker()
        Keywords("x", colour="red").run_in_worker()
        assert len(testing.assert_enqueued(Add, a=7, b=0)) == 1
        testing.assert_enqueued(WithTypes, when=when, ids=(1, 2))
        testing.assert_enqueued("integration_jobs.Keywords", name="x", colour="red")
        assert testing.enqueued_jobs(Add, a=8) == []
        assert len(testing.enqueued_jobs()) == 3


def test_capture_refuses_a_parameter_a_worker_could_not_receive() -> None:
    with testing.capture() as jobs, pytest.raises(ParameterError, match="Echo"):
        Echo(object()).run_in_worker()
    assert jobs.enqueued_jobs() == []


def test_drain_runs_captured_jobs_and_the_jobs_they_enqueue() -> None:
    with testing.capture() as jobs:
        request = FanOut([1, 2]).run_in_worker()
        results = jobs.drain()
        assert [(r.job_class, r.status, r.return_value) for r in results] == [
            ("integration_jobs.FanOut", Status.SUCCESSFUL, 2),
            ("integration_jobs.Add", Status.SUCCESSFUL, 101),
            ("integration_jobs.Add", Status.SUCCESSFUL, 102),
        ]
        assert request is not None
        found = errands.get(request.uuid)
        assert found is not None and found.kind == "result"
        jobs.assert_enqueued(Add, a=2, b=100)
        assert jobs.pending() == []
        assert jobs.drain() == []


def test_drain_follows_retries_and_deferrals_without_waiting(tmp_path: Path) -> None:
    with testing.capture() as jobs:
        FailTimes(str(tmp_path / "fails"), 1).run_in_worker(retries=3)
        DeferOnce(str(tmp_path / "defers"), delay=3600).run_in_worker()
        statuses = sorted(str(r.status) for r in jobs.drain())
    assert statuses == ["DEFERRED", "ERRORED", "SUCCESSFUL", "SUCCESSFUL"]


def test_drain_can_leave_delayed_jobs_for_later() -> None:
    with testing.capture() as jobs:
        Add(1).run_in_worker(delay=3600)
        Add(2).run_in_worker()
        assert [r.return_value for r in jobs.drain(include_delayed=False)] == [2]
        assert [r.return_value for r in jobs.drain()] == [1]


def test_drain_runs_higher_priority_first() -> None:
    with testing.capture() as jobs:
        Add(1).run_in_worker(priority=0)
        Add(2).run_in_worker(priority=10)
        assert [r.return_value for r in jobs.drain()] == [2, 1]


def test_drain_stops_a_job_that_never_finishes() -> None:
    with testing.capture() as jobs:
        Forever().run_in_worker()
        with pytest.raises(testing.RunawayJobs, match=r"integration_jobs\.Forever"):
            jobs.drain(max_jobs=5)


def test_capture_respects_concurrency_keys() -> None:
    with testing.capture() as jobs:
        assert Add(1).run_in_worker(concurrency_key="k") is not None
        assert Add(2).run_in_worker(concurrency_key="k") is None
        jobs.drain()
        assert Add(3).run_in_worker(concurrency_key="k") is not None


def test_helpers_outside_a_block_say_how_to_use_them() -> None:
    with pytest.raises(RuntimeError, match="capture"):
        testing.assert_enqueued(Add)


def test_a_rescue_in_capture_mode_finds_no_dead_worker() -> None:
    # The in-memory backend implements the whole seam; no worker registers here.
    with testing.capture():
        assert errands.backend().rescue_stale_workers(timeout_seconds=1) == []


# -- immediate mode ----------------------------------------------------------------------


def test_immediate_runs_the_job_when_enqueued_and_records_its_result() -> None:
    with testing.immediate() as jobs:
        request = Add(2, 3).run_in_worker()
        assert request is not None
        result = errands.get(request.uuid)
        assert result is not None and result.kind == "result"
        assert (result.status, result.return_value) == (Status.SUCCESSFUL, 5)
        assert jobs.results == [result]


def test_immediate_makes_the_json_round_trip() -> None:
    when = datetime.datetime(2030, 1, 2, 3, 4, tzinfo=datetime.UTC)
    with testing.immediate() as jobs:
        WithTypes(when, (4, 5)).run_in_worker()
        assert jobs.results[0].return_value == {"when": when.isoformat(), "ids": [4, 5]}
        with pytest.raises(ParameterError):
            Echo({1: "non-string key"}).run_in_worker()


def test_immediate_records_a_failure_like_a_worker() -> None:
    with testing.immediate() as jobs:
        Unhandled("missing").run_in_worker(retries=1)
        assert [r.status for r in jobs.results] == [Status.ERRORED, Status.ERRORED]
        assert jobs.results[-1].error_type == "KeyError"
        assert "missing" in jobs.results[-1].traceback


def test_immediate_can_raise_a_failure_where_the_job_was_enqueued() -> None:
    with testing.immediate(raise_errors=True), pytest.raises(testing.JobFailed) as failed:
        Unhandled("boom").run_in_worker()
    assert failed.value.result.error_type == "KeyError"


def test_immediate_runs_jobs_enqueued_by_jobs() -> None:
    with testing.immediate() as jobs:
        FanOut([5]).run_in_worker()
        assert sorted(r.return_value for r in jobs.results) == [1, 105]


def test_immediate_uses_the_configured_middleware() -> None:
    errands.configure(middleware=["sample_jobs.DoubleResult"])
    try:
        with testing.immediate() as jobs:
            Add(2, 3).run_in_worker()
            assert jobs.results[0].return_value == 10
    finally:
        errands.configure(middleware=None)


# -- the pytest plugin's fixtures -----------------------------------------------------------

PLUGIN_TESTS = """
import errands
from integration_jobs import Add, FanOut


def test_capture(errands_capture):
    Add(1, 2).run_in_worker()
    errands_capture.assert_enqueued(Add, a=1, b=2)
    assert [r.return_value for r in errands_capture.drain()] == [3]


def test_immediate(errands_immediate):
    request = Add(4, 5).run_in_worker()
    assert errands.get(request.uuid).return_value == 9


def test_real_database_and_worker(errands_database, errands_worker):
    assert errands.backend().url == errands_database
    assert errands_database.startswith(EXPECTED_SCHEME)
    request = FanOut([1]).run_in_worker()
    assert errands_worker.wait_for(request, timeout=60).return_value == 1


def test_database_is_fresh_for_each_test(errands_database):
    assert errands.requests() == [] and errands.results() == []
"""


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
@pytest.mark.slow
def test_fixtures_work_in_an_applications_test_suite(tmp_path: Path, kind: str) -> None:
    scheme = "postgresql://" if kind == "postgresql" else "sqlite:///"
    (tmp_path / "test_app.py").write_text(
        f"EXPECTED_SCHEME = {scheme!r}\n" + textwrap.dedent(PLUGIN_TESTS)
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    if kind == "postgresql":
        args.append(f"--errands-database-url={SERVER_URL}")
    done = subprocess.run(
        args, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=240
    )
    assert "4 passed" in done.stdout, done.stdout + done.stderr


# -- wait_for_result -----------------------------------------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def errands_test_databases(request: pytest.FixtureRequest) -> Iterator[TestDatabases]:
    """Overrides the plugin's fixture: every test below runs on both backends."""
    databases = TestDatabases(SERVER_URL if request.param == "postgresql" else None)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def slow_recheck() -> Iterator[None]:
    """Waiters look again only every 60 s: a prompt wake-up must be a notification."""
    errands.configure(poll_interval=60)
    try:
        yield
    finally:
        errands.configure(poll_interval=None)


@pytest.mark.slow
def test_wait_for_result_is_woken_when_the_result_is_written(
    errands_worker: BackgroundWorker, slow_recheck: None
) -> None:
    request = SlowAdd(20, 22, 0.3).run_in_worker()
    assert request is not None
    started = time.monotonic()
    result = errands.wait_for_result(request.uuid, timeout=30)
    assert (result.status, result.return_value) == (Status.SUCCESSFUL, 42)
    assert time.monotonic() - started < 20


@pytest.mark.slow
def test_wait_for_result_follows_retries_to_the_final_result(
    errands_worker: BackgroundWorker, tmp_path: Path
) -> None:
    request = FailTimes(str(tmp_path / "attempts"), 2).run_in_worker(retries=2)
    assert request is not None
    result = errands.wait_for_result(str(request.uuid), timeout=60)
    assert (result.status, result.retry_attempt) == (Status.SUCCESSFUL, 2)
    first = errands.wait_for_result(request.uuid, timeout=5, follow_retries=False)
    assert (first.status, first.retry_attempt) == (Status.ERRORED, 0)


@pytest.mark.slow
def test_wait_for_result_returns_a_final_failure(errands_worker: BackgroundWorker) -> None:
    request = Unhandled("gone").run_in_worker()
    assert request is not None
    result = errands.wait_for_result(request.uuid, timeout=60)
    assert (result.status, result.error_type) == (Status.ERRORED, "KeyError")


@pytest.mark.slow
def test_wait_for_result_times_out_naming_the_pending_job(errands_database: str) -> None:
    request = Add(1).run_in_worker()
    assert request is not None
    with pytest.raises(TimeoutError, match=f"{request.uuid}.*pending request"):
        errands.wait_for_result(request.uuid, timeout=0.2)


@pytest.mark.slow
def test_wait_for_result_of_an_unknown_uuid_fails_at_once(errands_database: str) -> None:
    with pytest.raises(LookupError, match="no job"):
        errands.wait_for_result(uuid.uuid4(), timeout=30)


@pytest.mark.slow
def test_wait_for_result_async(errands_worker: BackgroundWorker) -> None:
    request = Add(3, 4).run_in_worker()
    assert request is not None
    result = asyncio.run(errands.wait_for_result_async(request.uuid, timeout=30))
    assert result.return_value == 7


@pytest.mark.slow
def test_many_threads_wait_at_once(errands_worker: BackgroundWorker) -> None:
    requests = [Add(i).run_in_worker() for i in range(5)]

    async def wait_all() -> list[int]:
        waits = [errands.wait_for_result_async(r.uuid, timeout=60) for r in requests if r]
        return [r.return_value for r in await asyncio.gather(*waits)]

    assert asyncio.run(wait_all()) == [0, 1, 2, 3, 4]


def test_wait_for_result_in_immediate_mode() -> None:
    with testing.immediate():
        request = Add(1, 1).run_in_worker()
        assert request is not None
        assert errands.wait_for_result(request.uuid, timeout=1).return_value == 2


@pytest.mark.parametrize("errands_test_databases", ["postgresql"], indirect=True)
@pytest.mark.slow
def test_postgres_notifies_the_request_uuids_of_new_results(errands_backend: Backend) -> None:
    request = Add(1).run_in_worker()
    assert request is not None
    with psycopg.connect(errands_backend.url, autocommit=True) as conn:
        conn.execute("LISTEN errands_results")
        worker_id = uuid.uuid4()
        processes = errands_backend.claim(worker_id=worker_id, queues=[], limit=1)
        assert errands.cancel(uuid.uuid4()) is None  # writes nothing, notifies nothing
        errands_backend.complete_many(
            outcomes=[
                errands.models.Outcome(
                    process_uuid=processes[0].uuid,
                    status=Status.SUCCESSFUL,
                    started_at=None,
                    ended_at=datetime.datetime.now(datetime.UTC),
                )
            ]
        )
        payloads = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
    assert payloads == [str(request.uuid)]
