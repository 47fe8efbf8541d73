"""Workflows on real worker processes, on PostgreSQL and SQLite: order, values passed
along, failure propagation, run_on_failure, cancellation."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import psycopg
import pytest
from flow_jobs import read_trail
from workflow_jobs import Flaky, Step

import errands
from conftest import SpawnWorker, wait_for
from errands import NodeState

pytestmark = pytest.mark.slow

JOBS = {"import_modules": ("sample_jobs", "flow_jobs", "workflow_jobs")}


def _ended(uuid: object) -> errands.WorkflowStatus:
    def done() -> bool:
        found = errands.workflow(uuid)  # type: ignore[arg-type]
        return found is not None and found.state != "running"

    wait_for(done, timeout=60)
    found = errands.workflow(uuid)  # type: ignore[arg-type]
    assert found is not None
    return found


def test_a_diamond_runs_in_order_and_passes_values(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = str(tmp_path / "trail")
    wf = errands.Workflow("diamond")
    top = wf.add(Step(trail, "top", 0.05), name="top")
    left = wf.add(Step(trail, "left", 0.05), after=[top], name="left")
    right = wf.add(Step(trail, "right", 0.1), after=[top], name="right")
    wf.add(Step(trail, "bottom"), after=[left, right], name="bottom")
    enqueued = wf.enqueue()
    spawn_worker(worker_threads=4, **JOBS).wait_registered()
    status = _ended(enqueued.uuid)
    assert status.state == "succeeded", status
    runs = {run.token: run for run in read_trail(Path(trail))}
    assert runs["left"].start >= runs["top"].end  # type: ignore[operator]
    assert runs["right"].start >= runs["top"].end  # type: ignore[operator]
    assert runs["bottom"].start >= max(runs["left"].end, runs["right"].end)  # type: ignore[type-var]
    bottom = errands.get(status.node("bottom").result_uuid)  # type: ignore[arg-type]
    assert bottom.return_value == ["bottom", ["left", ["top"]], ["right", ["top"]]]  # type: ignore[union-attr]


def test_a_failure_cancels_dependents_but_not_run_on_failure(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = str(tmp_path / "trail")
    wf = errands.Workflow("fails")
    first = wf.add(Step(trail, "first"), name="first")
    broken = wf.add(Step(trail, "broken", fail=True), after=[first], name="broken")
    after = wf.add(Step(trail, "after"), after=[broken], name="after")
    wf.add(Step(trail, "later"), after=[after], name="later")
    wf.add(Step(trail, "cleanup"), after=[broken, after], name="cleanup", run_on_failure=True)
    flaky = wf.add(Flaky(trail, "flaky"), name="flaky", retries=1)
    wf.add(Step(trail, "after_flaky"), after=[flaky], name="after_flaky")
    enqueued = wf.enqueue()
    spawn_worker(worker_threads=2, **JOBS).wait_registered()
    status = _ended(enqueued.uuid)
    states = {node.name: node.state for node in status.nodes}
    assert states == {
        "first": NodeState.SUCCEEDED,
        "broken": NodeState.FAILED,
        "after": NodeState.CANCELLED,
        "later": NodeState.CANCELLED,
        "cleanup": NodeState.SUCCEEDED,
        "flaky": NodeState.SUCCEEDED,
        "after_flaky": NodeState.SUCCEEDED,
    }
    assert status.node("after").error_type == "errands.DependencyFailed"
    tokens = {run.token for run in read_trail(Path(trail))}
    assert "after" not in tokens and "later" not in tokens
    assert status.node("flaky").attempt == 2


def test_a_fan_out_and_fan_in_from_the_shorthands(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = str(tmp_path / "trail")
    wide = errands.group(*(Step(trail, f"part{i}", 0.01) for i in range(20)))
    enqueued = errands.chain(Step(trail, "head"), wide, Step(trail, "tail")).enqueue()
    spawn_worker(worker_threads=4, **JOBS).wait_registered()
    status = _ended(enqueued.uuid)
    assert status.state == "succeeded"
    runs = {run.token: run for run in read_trail(Path(trail))}
    parts = [runs[f"part{i}"] for i in range(20)]
    assert min(part.start for part in parts) >= runs["head"].end  # type: ignore[operator]
    assert runs["tail"].start >= max(part.end for part in parts)  # type: ignore[type-var]
    # Several ran at once: the fan-out is not serialised.
    assert min(part.end for part in parts) < max(part.start for part in parts)  # type: ignore[operator]
    tail = errands.get(status.node("Step#22").result_uuid)  # type: ignore[arg-type]
    assert tail.return_value == ["tail", *(["part" + str(i), ["head"]] for i in range(20))]  # type: ignore[union-attr]


def test_cancelling_a_workflow_mid_way(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = str(tmp_path / "trail")
    wf = errands.Workflow("cancelled")
    slow = wf.add(Step(trail, "slow", 30), name="slow")
    quick = wf.add(Step(trail, "quick"), name="quick")
    wf.add(Step(trail, "next"), after=[slow, quick], name="next")
    wf.add(Step(trail, "notify"), after=["next"], name="notify", run_on_failure=True)
    enqueued = wf.enqueue()
    spawn_worker(worker_threads=2, **JOBS).wait_registered()
    wait_for(lambda: enqueued.status().node("quick").state is NodeState.SUCCEEDED, timeout=30)
    wait_for(lambda: enqueued.status().node("slow").running, timeout=30)
    assert enqueued.cancel() == 3  # slow stopped; next and notify cancelled
    status = _ended(enqueued.uuid)
    states = {node.name: node.state for node in status.nodes}
    assert states == {
        "slow": NodeState.CANCELLED,
        "quick": NodeState.SUCCEEDED,
        "next": NodeState.CANCELLED,
        "notify": NodeState.CANCELLED,
    }
    assert status.state == "cancelled"
    tokens = [run.token for run in read_trail(Path(trail))]
    assert sorted(tokens) == ["quick", "slow"]  # next and notify never ran


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_worker_killed_while_it_completes_a_dependency(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """The completion's transaction is cut off at the release (its process killed,
    its server session ended): the dependency is rescued as LOST and retried, and
    the dependent is released once, after the retry."""
    trail = str(tmp_path / "trail")
    wf = errands.Workflow("killed")
    first = wf.add(Step(trail, "first"), name="first", retries=2)
    wf.add(Step(trail, "second"), after=[first], name="second")
    enqueued = wf.enqueue()
    with (
        psycopg.connect(db_url, autocommit=True) as blocker,
        psycopg.connect(db_url, autocommit=True) as watcher,
    ):
        with blocker.transaction():
            # The completion's trigger waits on this lock, inside its transaction.
            blocker.execute("LOCK TABLE errands_workflow_node IN EXCLUSIVE MODE")
            doomed = spawn_worker(database_timeout=60, **JOBS)
            wait_for(lambda: _completion_waiting(watcher), timeout=30)
            doomed.signal_group(signal.SIGKILL)
            # Its server session too: a session waiting on a lock would otherwise
            # go on, and commit, after its client died.
            watcher.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        survivor = spawn_worker(heartbeat_timeout=2, **JOBS)
        survivor.wait_registered()
        status = _ended(enqueued.uuid)
    assert status.state == "succeeded", status
    assert status.node("first").attempt == 2
    # The trail line by line: read_trail keeps one run per token.
    lines = [line.split() for line in Path(trail).read_text().splitlines()]
    assert [(kind, token) for kind, token, _ in lines] == [
        ("start", "first"),
        ("end", "first"),
        ("start", "first"),
        ("end", "first"),
        ("start", "second"),
        ("end", "second"),
    ]
    statuses = sorted(r.status for r in errands.results(job_class="workflow_jobs.Step"))
    assert statuses == ["LOST", "SUCCESSFUL", "SUCCESSFUL"]


def _completion_waiting(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    # From a connection outside any transaction: pg_stat_activity is read once per
    # transaction. The only statement of the worker's that touches the locked table
    # is the completion's trigger.
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()
    return bool(row and row[0])


def test_a_worker_killed_mid_workflow_loses_nothing_and_releases_once(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """SIGKILL of a worker while it runs and completes a fan-out's jobs (on SQLite, a
    completion cut off rolls back with its release): the lost jobs are retried, every
    job succeeds once, and the fan-in runs once, after all of them."""
    trail = str(tmp_path / "trail")
    wide = errands.group(*(Step(trail, f"part{i}", 0.02) for i in range(60)))
    workflow = errands.chain(Step(trail, "head"), wide, Step(trail, "tail"))
    for step in workflow._steps:
        step.options = dataclasses.replace(step.options, retries=3)
    enqueued = workflow.enqueue()
    doomed = spawn_worker(worker_threads=4, **JOBS)
    wait_for(lambda: len(read_trail(Path(trail))) >= 20, timeout=60)
    doomed.signal_group(signal.SIGKILL)
    spawn_worker(worker_threads=4, heartbeat_timeout=2, **JOBS).wait_registered()
    status = _ended(enqueued.uuid)
    assert status.state == "succeeded", status.counts()
    results = errands.results(limit=1000)
    assert any(r.status == "LOST" for r in results)  # the kill cut jobs off
    assert len([r for r in results if r.status == "SUCCESSFUL"]) == 62  # each job once
    lines = [line.split() for line in Path(trail).read_text().splitlines()]
    assert [token for kind, token, _ in lines if kind == "start"].count("tail") == 1
    tail_start = next(float(at) for kind, token, at in lines if (kind, token) == ("start", "tail"))
    last_part_end = max(float(at) for kind, token, at in lines if kind == "end" and token != "tail")
    assert tail_start >= last_part_end
