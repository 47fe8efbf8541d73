"""Final failures ("dead letters"): results that failed (ERRORED or LOST) with no
attempts left and were never retried since, listed and retried in bulk from the
Python API, the CLI and the dashboard; on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import errands
from errands import api
from errands.backends import Backend
from errands.cli import cli
from errands.dashboard import create_app
from errands.models import JobResult, Kind, Outcome, Selection, Status

PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


def _fail(backend: Backend, status: Status, *, retries: int = 0, queue: str = "default") -> Any:
    """A sample_jobs.Fail request claimed and ended with ``status``; its process."""
    from sample_jobs import Fail

    request = Fail().run_in_worker(retries=retries, queue=queue)
    assert request is not None
    (process,) = backend.claim(worker_id=uuid.uuid4(), queues=[queue], limit=1)
    now = backend.now()
    outcome = Outcome(process.uuid, status, started_at=now, ended_at=now, error="boom")
    backend.complete_many(outcomes=[outcome])
    return process


@pytest.fixture
def dead_letters(backend: Backend) -> list[uuid.UUID]:
    """Two final failures of queue "default" (ERRORED, LOST), one of queue "other",
    and results that are not final: a failure with attempts left, a success."""
    final = [_fail(backend, Status.ERRORED), _fail(backend, Status.LOST)]
    _fail(backend, Status.ERRORED, queue="other")
    _fail(backend, Status.ERRORED, retries=2)  # attempts left
    _fail(backend, Status.SUCCESSFUL)
    return sorted(process.uuid for process in final)


def _finals(**filters: Any) -> list[JobResult]:
    return errands.results(final=True, **filters)


def test_the_api_lists_final_failures(dead_letters: list[uuid.UUID]) -> None:
    assert sorted(r.process_uuid for r in _finals(queue="default")) == dead_letters
    assert len(_finals()) == 3
    assert len(errands.results(final=False)) == 2
    assert api.count(Kind.RESULT, Selection(final=True, status=Status.LOST)) == 1


def test_the_cli_lists_and_retries_final_failures(
    db_url: str, dead_letters: list[uuid.UUID]
) -> None:
    def invoke(*args: str, **kwargs: Any) -> Any:
        prefix = ["--database-url", db_url, "--import", "sample_jobs"]
        return CliRunner().invoke(cli, [*prefix, *args], catch_exceptions=False, **kwargs)

    listed = invoke("results", "--final", "--queue", "default", "--json")
    assert sorted(uuid.UUID(row["process_uuid"]) for row in _json(listed.output)) == dead_letters
    declined = invoke("retry", "--final", "--queue", "default", input="n\n")
    assert "Retry 2 final failure(s)" in declined.output and declined.exit_code == 1
    assert errands.requests() == []
    done = invoke("retry", "--final", "--queue", "default", "--yes")
    assert done.exit_code == 0 and "Retried 2 final failure(s)." in done.output
    retried = errands.requests()
    assert sorted(r.retry_attempt for r in retried) == [1, 1]
    assert [r.queue for r in _finals()] == ["other"]
    assert "No final failures" in invoke("retry", "--final", "--job-class", "nope.Job").output
    assert invoke("retry", "--final", "x" * 8).exit_code == 2  # a UUID or --final, not both


@pytest.mark.slow
def test_the_dashboard_shows_and_bulk_retries_final_failures(
    db_url: str, dead_letters: list[uuid.UUID]
) -> None:
    errands.configure(import_modules=["sample_jobs"])
    try:
        with _client() as client:
            page = client.get("/results?final=yes").text
            assert "<strong>final failures</strong>" in page
            shown = set(re.findall(r'href="/jobs/([0-9a-f-]+)"', page))
            assert len(shown) == 3
            confirm = client.get("/bulk?action=retry&kind=result&final=yes&queue=default").text
            assert "Retry 2 results?" in confirm
            form = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm)
            assert ("final", "yes") in form
            client.post("/bulk", data=dict(form))
            assert len(errands.requests()) == 2
            assert client.get("/results?final=maybe").status_code == 400
    finally:
        errands.configure(import_modules=None)


def _json(output: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(output)
    return rows


def _client() -> TestClient:
    client = TestClient(create_app(password=PASSWORD), base_url="http://localhost")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post("/login", data={"password": PASSWORD, "csrf_token": token.group(1), "next": "/"})
    return client
