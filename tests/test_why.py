"""``errands why ID`` and the dashboard's Why panel (issue 19, item 12): why a job is
where it is, each scenario on real SQLite files and PostgreSQL (CliRunner in
process), and the panel over HTTP (Starlette's TestClient)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dashboard_rows import claim, enqueue, finish
from staleness import backdate_heartbeat
from starlette.testclient import TestClient

from errands import why
from errands.backends import Backend
from errands.cli import cli
from errands.dashboard import create_app
from errands.models import JobRequest, Requeue, Status, WorkerInfo

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state

PASSWORD = "correct horse battery staple"


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False)


def why_text(url: str, key: uuid.UUID | str) -> str:
    shown = invoke(url, "why", str(key))
    assert shown.exit_code == 0, shown.output
    return shown.stdout


def worker(backend: Backend, *queues: str) -> uuid.UUID:
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(
            worker_id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), queues=list(queues)
        )
    )
    return worker_id


def one(backend: Backend, **fields: Any) -> JobRequest:
    (request,) = enqueue(backend, **fields)
    return request


# -- a job not running yet ---------------------------------------------------------------


def test_a_job_due_later_says_until_when(db_url: str, backend: Backend) -> None:
    request = one(backend, delay=3600)
    text = why_text(db_url, request.uuid)
    assert "scheduled: due at" in text
    assert "not due until" in text and "(in 59 min" in text


def test_a_job_of_a_paused_queue_says_so(db_url: str, backend: Backend) -> None:
    request = one(backend, queue="mail")
    backend.pause_queue(queue="mail")
    text = why_text(db_url, request.uuid)
    assert "its queue 'mail' is paused" in text and "`errands resume mail`" in text


def test_a_job_with_no_live_worker_says_so(db_url: str, backend: Backend) -> None:
    request = one(backend)
    assert "no live worker is running" in why_text(db_url, request.uuid)


def test_a_job_with_only_stale_workers_counts_them(db_url: str, backend: Backend) -> None:
    request = one(backend)
    backdate_heartbeat(db_url, worker(backend), 3600)
    assert "no live worker is running (1 stale" in why_text(db_url, request.uuid)


def test_a_job_whose_queue_no_live_worker_serves(db_url: str, backend: Backend) -> None:
    request = one(backend, queue="mail")
    worker(backend, "default", "reports")
    text = why_text(db_url, request.uuid)
    assert "no live worker serves queue 'mail' (the 1 live worker serve: default, reports)" in text


def test_a_served_job_cannot_tell_whether_its_class_loads(db_url: str, backend: Backend) -> None:
    request = one(backend)
    worker(backend)  # every queue
    text = why_text(db_url, request.uuid)
    assert "1 live worker serve queue 'default'" in text
    assert "cannot tell whether they can load sample_jobs.Echo" in text
    assert "workers do not record their job classes" in text


def test_a_job_sharing_its_concurrency_key(db_url: str, backend: Backend) -> None:
    first = one(backend, concurrency_key="user-42")
    claim(backend, "default")
    request = one(backend, concurrency_key="user-42")
    text = why_text(db_url, request.uuid)
    assert "1 other job of its class share its concurrency key 'user-42'" in text
    assert "(1 claimed or running, 0 pending)" in text
    assert "they do not hold it back" in text
    assert str(first.uuid) not in text.split("\n")[0]


def test_a_job_alone_with_its_concurrency_key(db_url: str, backend: Backend) -> None:
    request = one(backend, concurrency_key="user-42")
    assert "no other job holds its concurrency key 'user-42'" in why_text(db_url, request.uuid)


def test_a_job_behind_jobs_of_higher_priority(db_url: str, backend: Backend) -> None:
    enqueue(backend, 3, priority=5)
    enqueue(backend, 2, queue="other", priority=9)  # another queue: not ahead of it
    request = one(backend, priority=0)
    worker(backend)
    text = why_text(db_url, request.uuid)
    assert "behind 3 due jobs of queue 'default' that workers claim first" in text


def test_the_next_job_of_its_queue_says_so(db_url: str, backend: Backend) -> None:
    request = one(backend, priority=5)
    one(backend, priority=0)
    worker(backend)
    assert "it is the next job a worker of queue 'default' claims" in why_text(db_url, request.uuid)


# -- running and finished jobs ----------------------------------------------------------


def test_a_running_job_names_its_worker_and_since_when(db_url: str, backend: Backend) -> None:
    one(backend)
    worker_id = worker(backend)
    (process,) = backend.claim(worker_id=worker_id, queues=[], limit=1)
    started = backend.now() - datetime.timedelta(seconds=90)
    backend.mark_started(started=[(process.uuid, started)])
    text = why_text(db_url, process.uuid)
    assert f"running on worker {socket.gethostname()} pid {os.getpid()} ({worker_id})" in text
    assert "since" in text and "(1 min 3" in text


def test_a_claimed_job_not_started_yet(db_url: str, backend: Backend) -> None:
    one(backend)
    (process,) = backend.claim(worker_id=worker(backend), queues=[], limit=1)
    text = why_text(db_url, process.uuid)
    assert "claimed by worker" in text and "not started yet" in text
    assert "starts it when a slot is free" in text


def test_a_running_job_of_a_silent_worker_will_be_rescued(db_url: str, backend: Backend) -> None:
    one(backend)
    worker_id = worker(backend)
    (process,) = backend.claim(worker_id=worker_id, queues=[], limit=1)
    backdate_heartbeat(db_url, worker_id, 3600)
    assert "will rescue the job as LOST" in why_text(db_url, process.uuid)


def test_a_finished_job_shows_its_attempt_chain(db_url: str, backend: Backend) -> None:
    one(backend, retries=2)
    (first,) = finish(
        backend,
        claim(backend, "default"),
        Status.ERRORED,
        error_type="ValueError",
        error="boom",
        requeue=Requeue(delay_seconds=0, retry_attempt=1),
    )
    (second,) = finish(backend, claim(backend, "default"))
    text = why_text(db_url, first.uuid)
    assert "finished ERRORED at" in text and "(attempt 1 of 3)" in text
    assert "ValueError: boom" in text
    assert "its latest attempt is 2 of 3: SUCCESSFUL" in text
    lines = text.split("Attempts:")[1].strip().splitlines()
    assert lines[0].split()[:2] == ["ATTEMPT", "STATE"]
    assert "1 of 3" in lines[1] and "ERRORED" in lines[1] and "<- this one" in lines[1]
    assert "2 of 3" in lines[2] and "SUCCESSFUL" in lines[2] and str(second.uuid) in lines[2]


def test_a_final_result_says_no_further_attempt(db_url: str, backend: Backend) -> None:
    one(backend)
    (result,) = finish(backend, claim(backend, "default"))
    text = why_text(db_url, result.uuid)
    assert "finished SUCCESSFUL" in text and "no further attempt was enqueued" in text


# -- the command itself ------------------------------------------------------------------


def test_why_json(db_url: str, backend: Backend) -> None:
    request = one(backend, queue="mail", delay=60)
    backend.pause_queue(queue="mail")
    shown = invoke(db_url, "why", str(request.uuid), "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["uuid"] == str(request.uuid) and data["kind"] == "request"
    assert data["state"] == "scheduled"
    assert [r["code"] for r in data["reasons"]] == ["not_due", "queue_paused", "no_worker"]
    assert data["attempts"] == [
        {
            "uuid": str(request.uuid),
            "kind": "request",
            "attempt": 1,
            "state": "pending",
            "ended_at": None,
            "error_type": "",
            "error": "",
            "this": True,
        }
    ]


def test_why_takes_a_short_id(db_url: str, backend: Backend) -> None:
    request = one(backend)
    assert str(request.uuid) in why_text(db_url, request.uuid.hex[:16])


def test_why_of_an_unknown_uuid(db_url: str) -> None:
    missing = invoke(db_url, "why", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "no job has uuid" in missing.stderr


def test_why_answers_from_the_api_layer(backend: Backend) -> None:
    request = one(backend, delay=60)
    explanation = why.why(request.uuid)
    assert explanation is not None
    assert [r.code for r in explanation.reasons] == ["not_due", "no_worker"]


# -- the dashboard -------------------------------------------------------------------------


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(password=PASSWORD), base_url="http://localhost") as client:
        page = client.get("/login").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        logged_in = client.post(
            "/login",
            data={"password": PASSWORD, "csrf_token": token, "next": "/"},
            follow_redirects=False,
        )
        assert logged_in.status_code == 303
        yield client


def test_the_job_page_says_why_a_job_waits(client: TestClient, backend: Backend) -> None:
    request = one(backend, queue="mail")
    backend.pause_queue(queue="mail")
    page = client.get(f"/jobs/{request.uuid}")
    assert page.status_code == 200
    panel = page.text.split('data-role="why"')[1].split("</section>")[0]
    assert "<h2>Why</h2>" in panel and "pending since" in panel
    assert 'data-reason="queue_paused"' in panel and "UTC" in panel
    assert "its queue &#39;mail&#39; is paused" in panel


def test_the_job_page_says_who_runs_a_job(client: TestClient, backend: Backend) -> None:
    one(backend)
    worker_id = worker(backend)
    (process,) = backend.claim(worker_id=worker_id, queues=[], limit=1)
    backend.mark_started(started=[(process.uuid, backend.now())])
    panel = client.get(f"/jobs/{process.uuid}").text.split('data-role="why"')[1]
    assert f"running on worker {socket.gethostname()} pid {os.getpid()} ({worker_id})" in panel
