"""Workflows on real worker processes, on PostgreSQL and SQLite: order, values passed
along, failure propagation, run_on_failure, cancellation."""

from __future__ import annotations

from pathlib import Path

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
