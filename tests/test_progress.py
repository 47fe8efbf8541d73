"""Progress (errands.progress): a running job's reports, coalesced in its worker's
child, written by the parent with its batches, shown by errands processes and the
dashboard, kept on the result; on PostgreSQL and SQLite (the memory backend in the
contract-like tests below too)."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import errands
from errands import Job, progress, register_job
from errands.backends import Backend
from errands.cli import cli
from errands.context import ATTRIBUTE
from errands.dashboard import create_app
from errands.models import NewRequest, Outcome, PageSpec, Selection, Status, uuid7
from errands.testing.memory import MemoryBackend

UTC = datetime.UTC


@register_job
class Plain(Job):
    def run(self) -> None:
        pass


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _claim(backend: Backend, worker_id: uuid.UUID | None = None) -> list[Any]:
    return list(backend.claim(worker_id=worker_id or uuid7(), queues=(), limit=100))


def test_recorded_progress_shows_on_the_process_and_stays_on_the_result(
    backend: Backend,
) -> None:
    _progress_kept(backend)


def test_the_memory_backend_keeps_progress_too() -> None:
    _progress_kept(MemoryBackend(mode="capture"))


def _progress_kept(backend: Backend) -> None:
    with backend.enqueue_transaction() as tx:
        tx.insert_requests([NewRequest("tests.Job", {}), NewRequest("tests.Job", {})])
    first, second = _claim(backend)
    assert (first.progress_done, first.progress_total, first.progress_message) == (None,) * 3
    backend.record_progress(
        progress=[(first.uuid, (30, 100, "rows")), (second.uuid, (7, None, None))]
    )
    backend.record_progress(progress=[(first.uuid, (40, 100, "rows"))])  # the latest wins
    listed = {
        p.uuid: (p.progress_done, p.progress_total, p.progress_message)
        for p in backend.page_processes(selection=Selection(), page=PageSpec(limit=10))
    }
    assert listed == {first.uuid: (40, 100, "rows"), second.uuid: (7, None, None)}
    (result,) = backend.complete_many(
        outcomes=[Outcome(first.uuid, Status.SUCCESSFUL, _now(), _now())]
    )
    assert (result.progress_done, result.progress_total, result.progress_message) == (
        40,
        100,
        "rows",
    )
    (stored,) = backend.page_results(selection=Selection(), page=PageSpec(limit=10))
    assert (stored.progress_done, stored.progress_total) == (40, 100)
    assert stored.as_json()["progress_done"] == 40


def test_a_lost_process_keeps_its_progress(backend: Backend) -> None:
    Plain().run_in_worker()
    worker_id = uuid7()
    (process,) = _claim(backend, worker_id)
    backend.record_progress(progress=[(process.uuid, (5, 10, "half"))])
    (result,) = backend.lose_processes(worker_id=worker_id, process_uuids=[process.uuid])
    assert (result.status, result.progress_done, result.progress_message) == (
        Status.LOST,
        5,
        "half",
    )


def test_progress_of_a_process_that_ended_is_ignored(backend: Backend) -> None:
    Plain().run_in_worker()
    (process,) = _claim(backend)
    backend.complete_many(outcomes=[Outcome(process.uuid, Status.SUCCESSFUL, _now(), _now())])
    backend.record_progress(progress=[(process.uuid, (1, 2, "late"))])  # no error
    (result,) = errands.results()
    assert result.progress_done is None


def test_cli_processes_shows_a_progress_column(backend: Backend, cli_state_restored: None) -> None:
    Plain().run_in_worker()
    Plain().run_in_worker()
    first, _ = _claim(backend)
    backend.record_progress(progress=[(first.uuid, (30, 100, "rows"))])
    output = CliRunner().invoke(cli, ["processes"]).output
    assert "PROGRESS" in output and "30/100 rows" in output
    assert output.count("\n") == 3  # the header, the two processes


def test_progress_text() -> None:
    assert progress.progress_text(30, 100, "rows") == "30/100 rows"
    assert progress.progress_text(30, None, None) == "30"
    assert progress.progress_text(None, None, None) == "-"
    assert progress.percent(30, 120) == 25.0 and progress.percent(3, None) is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((-1,), ValueError),
        ((1.5,), TypeError),
        ((True,), TypeError),
        ((1, "10"), TypeError),
        ((1, 10, 3), TypeError),
        ((1 << 63,), ValueError),
    ],
)
def test_invalid_reports_raise(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error, match="report_progress"):
        Plain().report_progress(*args)


class _Context:
    """Stands for the JobContext a worker attaches (built when first read)."""

    def __init__(self, process_uuid: uuid.UUID) -> None:
        self.process_uuid = process_uuid

    def __call__(self) -> _Context:
        return self


def test_reports_outside_a_worker_do_nothing_and_inside_are_coalesced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = Plain()
    job.report_progress(1, 2, "called directly")  # no worker: nothing, no error
    sent: list[tuple[uuid.UUID, Any]] = []
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    progress.install(lambda key, value: sent.append((key, value)))
    try:
        job.report_progress(1, 10)  # not run by a worker (no context): nothing
        assert sent == []
        key = uuid.uuid4()
        setattr(job, ATTRIBUTE, _Context(key))
        for done in range(1, 1001):
            job.report_progress(done, 1000, "x" * 300 if done == 1000 else None)
        assert sent == [(key, (1, 1000, None))]  # the first at once, the rest wait
        clock[0] += progress.INTERVAL
        job.report_progress(1001, 1000)
        assert sent[-1] == (key, (1001, 1000, None))
        job.report_progress(1002, 1000, "last\x00")
        progress.finish(key)  # the job ended: its last report goes
        assert sent[-1] == (key, (1002, 1000, "last"))
        assert len(sent) == 3 and not progress.active()
    finally:
        progress.install(None)


@pytest.mark.slow
def test_a_running_job_shows_its_progress_and_the_result_keeps_the_last(
    backend: Backend, run_worker: Any
) -> None:
    from progress_jobs import Stepped

    Stepped(3, 0.7).run_in_worker()
    seen: list[tuple[Any, ...]] = []

    def observed() -> bool:
        seen.extend((p.progress_done, p.progress_message) for p in errands.processes())
        return bool(errands.results())

    run_worker(observed, import_modules=("sample_jobs", "progress_jobs"))
    assert (1, "step 1") in seen or (2, "step 2") in seen  # live, while it ran
    (result,) = errands.results()
    assert (result.status, result.progress_done, result.progress_total) == (Status.SUCCESSFUL, 3, 3)
    assert result.progress_message == "step 3"


@pytest.mark.slow
def test_a_tight_loop_of_reports_costs_little(backend: Backend, run_worker: Any) -> None:
    from progress_jobs import CountItems

    count = 100_000
    CountItems(count, False).run_in_worker()
    CountItems(count, True).run_in_worker()
    run_worker(lambda: len(errands.results()) == 2, import_modules=("sample_jobs", "progress_jobs"))
    by_report = {r.progress_done is not None: r for r in errands.results()}
    plain, reporting = by_report[False], by_report[True]
    assert (reporting.progress_done, reporting.progress_total) == (count, count)
    assert reporting.progress_message == "items" and plain.progress_done is None
    per_call = (reporting.return_value - plain.return_value) / count
    print(
        f"\n{count} report_progress calls: {reporting.return_value:.3f} s "
        f"(loop alone {plain.return_value:.3f} s): {per_call * 1e6:.2f} µs a call"
    )
    assert per_call < 20e-6


PASSWORD = "progress-password"


def test_dashboard_shows_progress_on_processes_and_the_job_page(
    backend: Backend, cli_state_restored: None
) -> None:
    Plain().run_in_worker()
    (process,) = _claim(backend)
    backend.record_progress(progress=[(process.uuid, (25, 100, "rows copied"))])
    client = TestClient(create_app(password=PASSWORD), base_url="http://localhost")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post("/login", data={"password": PASSWORD, "csrf_token": token.group(1), "next": "/"})
    listing = client.get("/processes")
    assert listing.status_code == 200
    assert "<th>Progress</th>" in listing.text and "25/100 rows copied" in listing.text
    assert '<progress max="100" value="25.0">' in listing.text
    job = client.get(f"/jobs/{process.uuid}")
    assert job.status_code == 200 and "25/100 rows copied" in job.text
    backend.complete_many(outcomes=[Outcome(process.uuid, Status.SUCCESSFUL, _now(), _now())])
    (result,) = errands.results()
    finished = client.get(f"/jobs/{result.uuid}")
    assert "25/100 rows copied" in finished.text
