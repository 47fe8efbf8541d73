"""Flow control where people look: ``errands limits``, ``errands why``, the dashboard's
overview and job page, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import uuid

from click.testing import CliRunner
from sample_jobs import Echo
from starlette.testclient import TestClient

import errands
from errands import EnqueueOptions, Limit
from errands.backends import Backend
from errands.cli import cli
from errands.dashboard import create_app
from errands.why import why
from test_dashboard import log_in

API = Limit("api", concurrency=1)
MAIL = Limit("mail", rate="2/s")


def _hold_the_api_key(backend: Backend) -> None:
    """One api job claimed (its key is full), two waiting behind it, one due later,
    and three mail jobs of which two were claimed (the rate's window is full)."""
    errands.enqueue_many([Echo("a"), Echo("b"), Echo("c")], options=EnqueueOptions(limits=[API]))
    Echo("later").run_in_worker(limits=[API], delay=3600)
    errands.enqueue_many([Echo(f"m{i}") for i in range(3)], options=EnqueueOptions(limits=[MAIL]))
    claimed = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=10)
    assert sorted(str(p.limits[0].key) for p in claimed) == ["api", "mail", "mail"]


def test_errands_limits_lists_each_key(backend: Backend) -> None:
    _hold_the_api_key(backend)
    shown = CliRunner().invoke(cli, ["limits", "--json"])
    assert shown.exit_code == 0, shown.output
    usage = {key["key"]: key for key in json.loads(shown.output)}
    assert usage["api"] == {
        "key": "api",
        "concurrency": 1,
        "rate": None,
        "running": 1,
        "waiting": 2,
        "scheduled": 1,
        "recent_starts": None,
        "full": True,
    }
    assert usage["mail"]["running"] == 2 and usage["mail"]["recent_starts"] == 2
    assert usage["mail"]["full"] is True and usage["mail"]["waiting"] == 1
    table = CliRunner().invoke(cli, ["limits"]).output
    assert "api" in table and "1 at once" in table and "2/s" in table and "full" in table


def test_errands_limits_says_when_no_job_has_limits(backend: Backend) -> None:
    Echo("plain").run_in_worker()
    shown = CliRunner().invoke(cli, ["limits"])
    assert shown.exit_code == 0
    assert "No pending or running job has limits." in shown.output


def test_why_names_the_limit_that_holds_a_job_back(backend: Backend) -> None:
    _hold_the_api_key(backend)
    # Claim order: the due ones first, so this is one that waits behind the full key.
    waiting = next(r for r in errands.requests() if r.limits == (API,))
    explanation = why(waiting.uuid)
    assert explanation is not None
    texts = {reason.code: reason.text for reason in explanation.reasons}
    assert "held back by its limit 'api' (1 at once)" in texts["limit_full"]
    assert "next" not in texts


def test_why_says_a_limit_allows_a_job(backend: Backend) -> None:
    request = Echo("free").run_in_worker(limits=[Limit("roomy", concurrency=5)])
    assert request is not None
    explanation = why(request.uuid)
    assert explanation is not None
    codes = {reason.code: reason.text for reason in explanation.reasons}
    assert "limit_full" not in codes
    assert codes["limit"] == "its limit 'roomy' (5 at once) allows it (0 running)"


def test_the_dashboard_shows_limits_on_the_overview_and_the_job_page(backend: Backend) -> None:
    _hold_the_api_key(backend)
    with TestClient(create_app(password="pw"), base_url="http://localhost") as client:
        assert log_in(client, "pw").status_code == 303
        overview = client.get("/").text
        assert "<h2>Limits</h2>" in overview and "1 at once" in overview
        waiting = next(r for r in errands.requests() if r.limits == (API,))
        page = client.get(f"/jobs/{waiting.uuid}").text
        assert "<dt>Limits</dt>" in page and "&#39;api&#39; (1 at once)" in page
        assert "held back by its limit" in page
