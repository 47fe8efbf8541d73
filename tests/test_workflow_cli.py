"""``errands workflow ID``, ``errands workflows`` and the held-job wording of ``errands
why``, ``requests`` and ``get``, on SQLite and PostgreSQL (CliRunner in process). Jobs
are claimed and finished through the backend directly (tests/support/dashboard_rows),
except in the one test that runs a real worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sample_jobs
from click.testing import CliRunner, Result
from dashboard_rows import claim, finish

import errands
from errands.backends import Backend
from errands.cli import cli
from errands.models import JobProcess, Requeue, Status
from errands.workflows import EnqueuedWorkflow

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


#: Workflow tables conftest's ``empty_postgres`` does not empty (they are not in
#: errands.backends.base.TABLES): emptied here after each test on PostgreSQL.
WORKFLOW_TABLES = "errands_workflow_edge, errands_workflow_node, errands_workflow"


@pytest.fixture(autouse=True)
def workflows_emptied(db_url: str) -> Iterator[None]:
    yield
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {WORKFLOW_TABLES}")


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False)


def shown(url: str, *args: str) -> str:
    result = invoke(url, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(url: str, *args: str) -> Any:
    return json.loads(shown(url, *args, "--json"))


def diamond(name: str = "diamond", queue: str = "default") -> EnqueuedWorkflow:
    """top, then left and right side by side, then bottom after both."""
    wf = errands.Workflow(name)
    top = wf.add(sample_jobs.Echo("top"), name="top", queue=queue)
    left = wf.add(sample_jobs.Echo("left"), after=[top], name="left", queue=queue)
    right = wf.add(sample_jobs.Echo("right"), after=[top], name="right", queue=queue)
    wf.add(sample_jobs.Echo("bottom"), after=[left, right], name="bottom", queue=queue)
    return wf.enqueue()


def half_done(backend: Backend) -> tuple[EnqueuedWorkflow, dict[str, JobProcess]]:
    """top succeeded; left claimed (running); right ERRORED; so bottom is cancelled."""
    enqueued = diamond()
    finish(backend, claim(backend, "default"))
    claimed = {p.request_uuid: p for p in claim(backend, "default")}
    status = enqueued.status()
    left = claimed[status.node("left").request_uuid]
    right = claimed[status.node("right").request_uuid]
    finish(backend, [right], Status.ERRORED, error_type="ValueError", error="right broke")
    return enqueued, {"left": left, "right": right}


def row_of(text: str, name: str) -> list[str]:
    """The table row of the job ``name`` (its cells split on runs of spaces)."""
    for line in text.splitlines():
        cells = [cell for cell in line.split("  ") if cell.strip()]
        if len(cells) > 1 and cells[1].strip() == name:
            return [cell.strip() for cell in cells]
    raise AssertionError(f"no row for {name!r} in:\n{text}")


# -- errands workflow ID ----------------------------------------------------------------------


def test_workflow_shows_each_job_its_state_dependencies_and_error(
    db_url: str, backend: Backend
) -> None:
    enqueued, _ = half_done(backend)
    text = shown(db_url, "workflow", str(enqueued.uuid))
    assert "workflow  diamond" in text
    assert f"uuid      {enqueued.uuid}" in text
    assert "state     running (1 succeeded, 1 running, 1 failed, 1 cancelled)" in text
    top, left, right, bottom = (row_of(text, name) for name in ("top", "left", "right", "bottom"))
    assert top[:5] == ["0", "top", "sample_jobs.Echo", "succeeded", "-"]
    assert top[-2:] == ["2.00s", "-"]  # dashboard_rows.finish: started 2 s before it ended
    assert left[:5] == ["1", "left", "sample_jobs.Echo", "running", "top"]
    assert right[3] == "failed" and right[-1] == "ValueError: right broke"
    assert bottom[3:5] == ["cancelled", "left,right"]
    assert bottom[-1].startswith("errands.DependencyFailed")


def test_workflow_json(db_url: str, backend: Backend) -> None:
    enqueued, processes = half_done(backend)
    data = as_json(db_url, "workflow", str(enqueued.uuid))
    assert data["uuid"] == str(enqueued.uuid) and data["name"] == "diamond"
    assert data["state"] == "running"
    assert data["counts"] == {"succeeded": 1, "pending": 1, "failed": 1, "cancelled": 1}
    nodes = {node["name"]: node for node in data["nodes"]}
    assert [node["node"] for node in data["nodes"]] == [0, 1, 2, 3]
    assert nodes["bottom"]["depends_on"] == [1, 2]
    assert nodes["bottom"]["depends_on_names"] == ["left", "right"]
    assert nodes["left"]["state"] == "pending" and nodes["left"]["running"] is True
    assert nodes["left"]["process_uuid"] == str(processes["left"].uuid)
    assert nodes["right"]["status"] == "ERRORED" and nodes["right"]["error"] == "right broke"
    assert nodes["top"]["duration"] == pytest.approx(2.0)
    assert nodes["bottom"]["error_type"] == "errands.DependencyFailed"


def test_a_workflow_is_found_by_prefix_or_by_any_of_its_jobs(db_url: str, backend: Backend) -> None:
    enqueued, processes = half_done(backend)
    diamond("another")  # a second workflow, so that finding the first means something
    status = enqueued.status()
    names = [
        enqueued.uuid.hex[:8],  # a prefix of the workflow's uuid
        str(enqueued.uuid)[:13],  # with its hyphen
        str(status.node("bottom").request_uuid),  # a job's request
        str(processes["left"].uuid),  # a running job's process
        str(status.node("top").result_uuid),  # a finished job's result
        str(status.node("right").result_uuid)[:24],  # a prefix of it
    ]
    for name in names:
        assert as_json(db_url, "workflow", name)["uuid"] == str(enqueued.uuid), name


def test_a_retried_job_finds_its_workflow_from_its_first_attempt(
    db_url: str, backend: Backend
) -> None:
    wf = errands.Workflow("retried")
    first = wf.add(sample_jobs.Echo("first"), name="first", retries=1)
    wf.add(sample_jobs.Echo("then"), after=[first], name="then")
    enqueued = wf.enqueue()
    (attempt,) = finish(
        backend,
        claim(backend, "default"),
        Status.ERRORED,
        error="once",
        requeue=Requeue(delay_seconds=0, retry_attempt=1),
    )
    assert attempt.retry_request_uuid is not None  # its retry is the node's request now
    assert enqueued.status().node("first").request_uuid == attempt.retry_request_uuid
    for name in (str(attempt.uuid), str(attempt.request_uuid)):
        assert as_json(db_url, "workflow", name)["uuid"] == str(enqueued.uuid)


def test_unknown_and_malformed_ids_are_errors(db_url: str) -> None:
    diamond()
    missing = uuid.uuid4()
    result = invoke(db_url, "workflow", str(missing))
    assert result.exit_code == 1
    assert f"Error: no workflow, nor a job of one, has uuid {missing}" in result.stderr
    result = invoke(db_url, "workflow", "abcdef0123")
    assert result.exit_code == 1
    assert "has a uuid starting with abcdef0123" in result.stderr
    for bad in ("not-a-uuid", "abc"):
        result = invoke(db_url, "workflow", bad)
        assert result.exit_code == 2, result.output
        assert "Invalid value for ID" in result.stderr


def test_cancel_cancels_every_job_not_ended(db_url: str, backend: Backend) -> None:
    enqueued = diamond()
    finish(backend, claim(backend, "default"))  # top succeeded; the rest pending or waiting
    result = invoke(db_url, "workflow", enqueued.uuid.hex[:10], "--cancel")
    assert result.exit_code == 0, result.output
    assert f"Cancelled or stopping 3 job(s) of workflow {enqueued.uuid}." in result.stdout
    assert "state     cancelled (1 succeeded, 3 cancelled)" in result.stdout
    status = enqueued.status()
    assert status.state == "cancelled"
    assert not errands.requests()  # nothing left to claim
    assert as_json(db_url, "workflow", str(enqueued.uuid))["counts"] == {
        "succeeded": 1,
        "cancelled": 3,
    }


def test_watch_of_an_ended_workflow_prints_it_once(db_url: str, backend: Backend) -> None:
    enqueued = diamond()
    enqueued.cancel()
    text = shown(db_url, "workflow", str(enqueued.uuid), "--watch", "--interval", "0.1")
    assert text.count("workflow  diamond") == 1
    assert "state     cancelled" in text


# -- errands workflows ------------------------------------------------------------------------


def test_workflows_lists_the_latest_with_their_states(db_url: str, backend: Backend) -> None:
    assert shown(db_url, "workflows").strip() == "No workflows."
    done = diamond("first")
    done.cancel()
    running = diamond("second")
    listed = as_json(db_url, "workflows")
    assert [w["uuid"] for w in listed] == [str(running.uuid), str(done.uuid)]
    assert listed[0]["state"] == "running" and listed[0]["jobs"] == 4
    assert listed[0]["counts"] == {"pending": 1, "waiting": 3}
    assert listed[1]["state"] == "cancelled"
    assert [w["name"] for w in as_json(db_url, "workflows", "--limit", "1")] == ["second"]
    text = shown(db_url, "workflows")
    assert text.splitlines()[0].split() == ["UUID", "NAME", "CREATED", "STATE", "JOBS", "COUNTS"]
    second = next(line for line in text.splitlines() if line.startswith(str(running.uuid)))
    assert "second" in second and "running" in second and "1 pending, 3 waiting" in second


def test_help_has_examples() -> None:
    for command in ("workflow", "workflows"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0
        assert "Examples:" in result.output and "--json" in result.output
    assert "--cancel" in CliRunner().invoke(cli, ["workflow", "--help"]).output


# -- a held job in why, requests and get ------------------------------------------------------


def test_a_held_job_says_it_waits_for_its_dependencies(db_url: str, backend: Backend) -> None:
    enqueued, _ = half_done(backend)
    wf = errands.Workflow("waits")
    fetch = wf.add(sample_jobs.Echo("fetch"), name="fetch", queue="other")
    wf.add(sample_jobs.Echo("parse"), after=[fetch], name="parse", queue="other")
    waiting = wf.enqueue()
    held = waiting.status().node("parse").request_uuid
    text = shown(db_url, "why", str(held))
    assert "9999" not in text
    assert "waiting for 1 of the 1 job it depends on in workflow 'waits'" in text
    assert "it waits for fetch (pending)" in text
    data = as_json(db_url, "why", str(held))
    assert data["state"] == "waiting"
    assert [r["code"] for r in data["reasons"]] == ["dependencies"]
    requests = shown(db_url, "requests", "--queue", "other")
    assert "after its dependencies" in requests and "9999" not in requests
    got = shown(db_url, "get", str(held))
    assert "after its dependencies" in got and "9999" not in got
    # --json keeps the stored value
    assert as_json(db_url, "get", str(held))["start_at"].startswith("9999-12-31")
    del enqueued


@pytest.mark.slow
def test_a_workflow_run_by_a_real_worker_ends_succeeded(db_url: str, run_worker: Any) -> None:
    enqueued = diamond()
    run_worker(lambda: enqueued.status().state != "running")
    data = as_json(db_url, "workflow", str(enqueued.uuid))
    assert data["state"] == "succeeded"
    assert data["counts"] == {"succeeded": 4}
    assert all(node["duration"] is not None for node in data["nodes"])
    text = shown(db_url, "workflow", enqueued.uuid.hex[:8])
    assert "state     succeeded (4 succeeded)" in text
