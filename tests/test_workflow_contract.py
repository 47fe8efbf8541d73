"""Workflows, on each backend, driven through the Backend seam (no worker processes).

The rule that moves a workflow lives in the SQL backends' triggers and in
``errands.testing.memory_workflows``; these tests hold all three to it. Each runs on
PostgreSQL, SQLite and the in-memory backend (``test_backend_contract``'s ``db_url``
and ``backend`` fixtures); jobs are enqueued with ``errands.Workflow`` on that very
backend, claimed with ``backend.claim`` and ended with ``backend.complete_many``.
"""

from __future__ import annotations

import datetime
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from sample_jobs import Echo, Noop

import errands
import test_backend_contract as contract
from errands import serialization
from errands.backends import Backend
from errands.backends.current import use_backend
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    PageSpec,
    Requeue,
    Selection,
    Status,
)
from errands.registry import job_class_path
from errands.workflow_models import (
    DEPENDENCY_FAILED_ERROR,
    DEPENDENCY_FAILED_TYPE,
    HELD_UNTIL,
    NodeState,
    PlannedNode,
    WorkflowPlan,
    WorkflowStatus,
)
from errands.workflows import EnqueuedWorkflow, Workflow, chain, group

# The contract module's fixtures: PostgreSQL, SQLite and the in-memory backend.
db_url = contract.db_url
backend = contract.backend

S = NodeState


@pytest.fixture(autouse=True)
def installed(backend: Backend) -> Iterator[Backend]:
    """errands' API (Workflow.enqueue, errands.workflow, cancel_workflow) uses the
    backend under test."""
    with use_backend(backend):
        yield backend


# -- helpers -------------------------------------------------------------------------


def status(backend: Backend, enqueued: EnqueuedWorkflow) -> WorkflowStatus:
    found = backend.workflow(uuid=enqueued.uuid)
    assert found is not None
    return found


def states(backend: Backend, enqueued: EnqueuedWorkflow) -> dict[str, NodeState]:
    return {node.name: node.state for node in status(backend, enqueued).nodes}


def request_of(backend: Backend, enqueued: EnqueuedWorkflow, name: str) -> uuid.UUID:
    """The request of the node's current attempt."""
    return status(backend, enqueued).node(name).request_uuid


def claim(backend: Backend, worker_id: uuid.UUID | None = None) -> list[JobProcess]:
    return contract.claim_all(backend, worker_id)


def claimed_names(
    backend: Backend, enqueued: EnqueuedWorkflow, processes: Sequence[JobProcess]
) -> set[str]:
    by_request = {node.request_uuid: node.name for node in status(backend, enqueued).nodes}
    return {by_request[p.request_uuid] for p in processes}


def finish(
    backend: Backend,
    process: JobProcess,
    result: Status = Status.SUCCESSFUL,
    *,
    value: Any = None,
    **fields: Any,
) -> JobResult:
    (written,) = backend.complete_many(
        outcomes=[
            contract.outcome(process, result, return_value=serialization.encode(value), **fields)
        ]
    )
    return written


def run_node(backend: Backend, enqueued: EnqueuedWorkflow, name: str, **how: Any) -> JobResult:
    """Claim the node's request (it must be due) and end it."""
    processes = claim(backend)
    mine = [p for p in processes if p.request_uuid == request_of(backend, enqueued, name)]
    assert mine, f"{name} is not claimable: claimed {claimed_names(backend, enqueued, processes)}"
    backend.release(process_uuids=[p.uuid for p in processes if p is not mine[0]])
    return finish(backend, mine[0], **how)


def held(backend: Backend, request_uuid: uuid.UUID) -> bool:
    found = backend.get(uuid=request_uuid)
    return isinstance(found, JobRequest) and found.start_at == HELD_UNTIL


def due_now(backend: Backend, request_uuid: uuid.UUID) -> bool:
    found = backend.get(uuid=request_uuid)
    return isinstance(found, JobRequest) and found.start_at <= backend.now()


def dependency_failed(backend: Backend, request_uuid: uuid.UUID) -> bool:
    """Whether the request became the trigger's CANCELLED result: never started."""
    found = backend.get(uuid=request_uuid)
    return (
        isinstance(found, JobResult)
        and found.status == Status.CANCELLED
        and found.error_type == DEPENDENCY_FAILED_TYPE
        and found.error == DEPENDENCY_FAILED_ERROR
        and found.started_at is None
        and found.start_at is None
        and found.worker_id is None
    )


def results_of(backend: Backend, request_uuid: uuid.UUID) -> list[JobResult]:
    return [
        r
        for r in backend.page_results(selection=Selection(uuid=request_uuid), page=PageSpec())
        if r.request_uuid == request_uuid
    ]


# -- chains ---------------------------------------------------------------------------


def test_a_chain_releases_each_job_only_after_the_previous_one_succeeded(
    backend: Backend,
) -> None:
    enqueued = chain(Echo(1), Echo(2), Echo(3), name="abc").enqueue()
    first, second, third = (r.uuid for r in enqueued.requests)
    assert not held(backend, first)
    assert held(backend, second) and held(backend, third)
    assert list(states(backend, enqueued).values()) == [S.PENDING, S.WAITING, S.WAITING]

    (process,) = claim(backend)  # the held ones are not claimable
    assert process.request_uuid == first
    assert held(backend, second)  # running is not ending
    finish(backend, process, value=1)
    assert list(states(backend, enqueued).values()) == [S.SUCCEEDED, S.PENDING, S.WAITING]
    assert due_now(backend, second) and held(backend, third)

    (process,) = claim(backend)
    assert process.request_uuid == second
    finish(backend, process, value=2)
    (process,) = claim(backend)
    assert process.request_uuid == third
    finish(backend, process, value=3)
    assert status(backend, enqueued).state == "succeeded"
    assert claim(backend) == []


# -- fan-out and fan-in ---------------------------------------------------------------


def test_a_fan_in_is_released_only_after_the_last_of_its_parents(backend: Backend) -> None:
    enqueued = chain(Echo("top"), group(*(Echo(i) for i in range(4))), Echo("bottom")).enqueue()
    names = [node.name for node in status(backend, enqueued).nodes]
    assert names == ["Echo", "Echo#2", "Echo#3", "Echo#4", "Echo#5", "Echo#6"]
    middles, bottom = names[1:5], names[5]
    assert status(backend, enqueued).node(bottom).depends_on == (1, 2, 3, 4)

    run_node(backend, enqueued, "Echo")
    processes = claim(backend)
    assert claimed_names(backend, enqueued, processes) == set(middles)  # all four released
    first_two, third, fourth = processes[:2], processes[2], processes[3]
    # Two parents ending in one statement count twice.
    backend.complete_many(outcomes=[contract.outcome(p) for p in first_two])
    assert states(backend, enqueued)[bottom] is S.WAITING
    finish(backend, third)
    assert states(backend, enqueued)[bottom] is S.WAITING
    assert held(backend, request_of(backend, enqueued, bottom))
    assert claim(backend) == [] or pytest.fail("the fan-in ran before its last parent ended")
    finish(backend, fourth)
    assert states(backend, enqueued)[bottom] is S.PENDING
    assert claimed_names(backend, enqueued, claim(backend)) == {bottom}


def test_a_fan_in_of_parents_ending_in_one_statement_is_released_once(backend: Backend) -> None:
    wf = Workflow("batch")
    parents = [wf.add(Echo(i), name=f"p{i}") for i in range(3)]
    wf.add(Echo("child"), after=parents, name="child")
    enqueued = wf.enqueue()
    processes = claim(backend)
    assert len(processes) == 3
    backend.complete_many(outcomes=[contract.outcome(p) for p in processes])
    assert states(backend, enqueued)["child"] is S.PENDING
    (process,) = claim(backend)
    assert process.request_uuid == request_of(backend, enqueued, "child")


# -- failures ------------------------------------------------------------------------


def test_a_failed_parent_cancels_its_waiting_descendants_but_not_run_on_failure(
    backend: Backend,
) -> None:
    wf = Workflow("fails")
    first = wf.add(Echo("first"), name="first")
    broken = wf.add(Echo("broken"), after=[first], name="broken")
    after = wf.add(Echo("after"), after=[broken], name="after")
    wf.add(Echo("later"), after=[after], name="later")
    wf.add(Echo("cleanup"), after=[broken, after], name="cleanup", run_on_failure=True)
    slow = wf.add(Echo("slow"), name="slow")
    wf.add(Echo("tidy"), after=[broken, slow], name="tidy", run_on_failure=True)
    enqueued = wf.enqueue()

    run_node(backend, enqueued, "first")
    run_node(backend, enqueued, "broken", result=Status.ERRORED, error_type="ValueError")
    found = states(backend, enqueued)
    assert found == {
        "first": S.SUCCEEDED,
        "broken": S.FAILED,
        "after": S.CANCELLED,
        "later": S.CANCELLED,  # transitively
        "cleanup": S.PENDING,  # both its parents ended: it runs anyway
        "slow": S.PENDING,
        "tidy": S.WAITING,  # runs anyway, but only once slow ended too
    }
    for name in ("after", "later"):
        request = request_of(backend, enqueued, name)
        assert dependency_failed(backend, request), backend.get(uuid=request)
        assert len(results_of(backend, request)) == 1
        node = status(backend, enqueued).node(name)
        assert node.status == Status.CANCELLED and node.error_type == DEPENDENCY_FAILED_TYPE
        assert node.result_uuid == results_of(backend, request)[0].uuid
    assert held(backend, request_of(backend, enqueued, "tidy"))
    assert due_now(backend, request_of(backend, enqueued, "cleanup"))

    cleanup = request_of(backend, enqueued, "cleanup")
    assert [(d.name, d.status) for d in backend.dependency_results(request_uuid=cleanup)] == [
        ("broken", Status.ERRORED),
        ("after", Status.CANCELLED),
    ]
    run_node(backend, enqueued, "slow")
    assert states(backend, enqueued)["tidy"] is S.PENDING
    run_node(backend, enqueued, "cleanup")
    run_node(backend, enqueued, "tidy")
    final = status(backend, enqueued)
    assert final.state == "failed"
    assert final.counts() == {"succeeded": 4, "failed": 1, "cancelled": 2}


def test_a_retry_keeps_the_node_pending_and_follows_the_retry(backend: Backend) -> None:
    enqueued = chain(Echo("flaky"), Echo("next")).enqueue()
    first = request_of(backend, enqueued, "Echo")
    failed = run_node(
        backend, enqueued, "Echo", result=Status.ERRORED, requeue=Requeue(0, retry_attempt=1)
    )
    assert failed.retry_request_uuid is not None
    node = status(backend, enqueued).node("Echo")
    assert node.state is S.PENDING
    assert node.request_uuid == failed.retry_request_uuid != first
    assert node.result_uuid is None
    assert node.attempt == 2
    assert held(backend, request_of(backend, enqueued, "Echo#2"))
    assert backend.workflow_of_request(request_uuid=failed.retry_request_uuid) == enqueued.uuid

    succeeded = run_node(backend, enqueued, "Echo", value="second time")
    node = status(backend, enqueued).node("Echo")
    assert node.state is S.SUCCEEDED
    assert node.result_uuid == succeeded.uuid
    assert node.attempt == 2
    assert states(backend, enqueued)["Echo#2"] is S.PENDING
    (dependency,) = backend.dependency_results(request_uuid=request_of(backend, enqueued, "Echo#2"))
    assert dependency.return_value == "second time"


def test_a_lost_result_leaves_the_node_to_its_follow_up(backend: Backend) -> None:
    ended = chain(Echo("lost"), Echo("after")).enqueue()
    retried = chain(Echo("lost again"), Echo("after")).enqueue()
    worker_id = contract.register(backend)
    processes = claim(backend, worker_id)
    assert len(processes) == 2
    lost = backend.lose_processes(worker_id=worker_id, process_uuids=[p.uuid for p in processes])
    assert {r.status for r in lost} == {Status.LOST}
    for enqueued in (ended, retried):
        assert states(backend, enqueued) == {"Echo": S.PENDING, "Echo#2": S.WAITING}
    by_request = {r.request_uuid: r for r in lost}
    lost_ended = by_request[ended.requests[0].uuid]
    lost_retried = by_request[retried.requests[0].uuid]

    # The follow-up without a retry ends the node, failed; its dependents move on.
    with backend.enqueue_transaction() as tx:
        tx.end_workflow_node(result_uuid=lost_ended.uuid)
    assert states(backend, ended) == {"Echo": S.FAILED, "Echo#2": S.CANCELLED}
    assert status(backend, ended).node("Echo").result_uuid == lost_ended.uuid
    assert dependency_failed(backend, ended.requests[1].uuid)

    # With a retry (linked in the same transaction) it follows the retry instead.
    with backend.enqueue_transaction() as tx:
        (retry,) = tx.insert_requests([contract.new(job_class=job_class_path(Echo))])
        assert tx.link_retry(result_uuid=lost_retried.uuid, request_uuid=retry.uuid)
        tx.end_workflow_node(result_uuid=lost_retried.uuid)
    node = status(backend, retried).node("Echo")
    assert (node.state, node.request_uuid) == (S.PENDING, retry.uuid)
    assert held(backend, retried.requests[1].uuid)
    # A result that did not end a node when written, but another result: nothing.
    with backend.enqueue_transaction() as tx:
        tx.end_workflow_node(result_uuid=lost_ended.uuid)
        tx.end_workflow_node(result_uuid=uuid.uuid4())
    assert states(backend, ended) == {"Echo": S.FAILED, "Echo#2": S.CANCELLED}


# -- cancelling ----------------------------------------------------------------------


def test_cancelling_a_held_job_cancels_it_and_its_dependents(backend: Backend) -> None:
    wf = Workflow("cancel one")
    a = wf.add(Echo("a"), name="a")
    b = wf.add(Echo("b"), after=[a], name="b")
    wf.add(Echo("c"), after=[b], name="c")
    wf.add(Echo("d"), after=[b], name="d", run_on_failure=True)
    enqueued = wf.enqueue()
    cancelled = backend.cancel_pending(uuid=request_of(backend, enqueued, "b"))
    assert cancelled is not None and cancelled.status == Status.CANCELLED
    assert cancelled.error_type != DEPENDENCY_FAILED_TYPE  # cancelled itself
    assert states(backend, enqueued) == {
        "a": S.PENDING,
        "b": S.CANCELLED,
        "c": S.CANCELLED,
        "d": S.PENDING,  # its only dependency ended: it runs anyway
    }
    assert dependency_failed(backend, request_of(backend, enqueued, "c"))
    assert claimed_names(backend, enqueued, claim(backend)) == {"a", "d"}


def test_cancelling_a_parent_and_its_child_together_cancels_each_once(backend: Backend) -> None:
    wf = Workflow("bulk")
    a = wf.add(Echo("a"), name="a")
    b = wf.add(Echo("b"), after=[a], name="b")
    wf.add(Noop(), after=[b], name="c", run_on_failure=True)
    enqueued = wf.enqueue()
    cancelled = backend.cancel_pending_selected(
        selection=Selection(job_class=job_class_path(Echo)), limit=100
    )
    assert len(cancelled) == 2
    assert states(backend, enqueued) == {"a": S.CANCELLED, "b": S.CANCELLED, "c": S.PENDING}
    for name in ("a", "b"):
        (result,) = results_of(backend, request_of(backend, enqueued, name))
        assert result.error_type != DEPENDENCY_FAILED_TYPE
    assert claimed_names(backend, enqueued, claim(backend)) == {"c"}


def test_cancel_workflow_cancels_what_has_not_ended_and_releases_nothing(
    backend: Backend,
) -> None:
    wf = Workflow("cancel all")
    a = wf.add(Echo("a"), name="a")
    b = wf.add(Echo("b"), after=[a], name="b")
    wf.add(Echo("c"), after=[b], name="c", run_on_failure=True)
    wf.add(Echo("d"), after=[a], name="d")
    done = wf.add(Echo("done"), name="done")
    wf.add(Echo("e"), after=[done], name="e", run_on_failure=True)
    enqueued = wf.enqueue()
    worker_id = uuid.uuid4()
    processes = claim(backend, worker_id)
    assert claimed_names(backend, enqueued, processes) == {"a", "done"}
    (running,) = [p for p in processes if p.request_uuid == request_of(backend, enqueued, "a")]
    (other,) = [p for p in processes if p is not running]
    finish(backend, other)  # done: ended before the cancel; e released
    (e_process,) = claim(backend, worker_id)
    finish(backend, e_process)

    touched = errands.cancel_workflow(enqueued.uuid)
    assert touched == 4  # b, c, d cancelled; a flagged to stop
    assert states(backend, enqueued) == {
        "a": S.PENDING,  # running: its worker stops it
        "b": S.CANCELLED,
        "c": S.CANCELLED,
        "d": S.CANCELLED,
        "done": S.SUCCEEDED,
        "e": S.SUCCEEDED,
    }
    assert backend.flagged_to_stop(worker_id=worker_id) == [running.uuid]
    c = request_of(backend, enqueued, "c")
    (c_result,) = results_of(backend, c)
    assert c_result.error_type != DEPENDENCY_FAILED_TYPE  # cancelled, never released
    assert backend.next_requests(selection=Selection(), limit=100) == []
    finish(backend, running, Status.CANCELLED)  # its worker stopped it
    assert status(backend, enqueued).state == "cancelled"
    assert claim(backend) == []


# -- reading -------------------------------------------------------------------------


def test_dependency_results_come_in_the_order_of_after(backend: Backend) -> None:
    wf = Workflow("values")
    x = wf.add(Echo("x"), name="x")
    y = wf.add(Echo("y"), name="y")
    z = wf.add(Echo("z"), name="z")
    wf.add(Echo("w"), after=[z, x, y], name="w")
    enqueued = wf.enqueue()
    w = request_of(backend, enqueued, "w")
    processes = {p.request_uuid: p for p in claim(backend)}
    finish(backend, processes[request_of(backend, enqueued, "y")], value={"y": [1]})
    before = backend.dependency_results(request_uuid=w)
    assert [(d.position, d.name, d.status, d.return_value) for d in before] == [
        (0, "z", "", None),
        (1, "x", "", None),
        (2, "y", Status.SUCCESSFUL, {"y": [1]}),
    ]
    finish(backend, processes[request_of(backend, enqueued, "x")], value="ex")
    finish(backend, processes[request_of(backend, enqueued, "z")], value=26)
    found = backend.dependency_results(request_uuid=w)
    assert [(d.position, d.name, d.return_value) for d in found] == [
        (0, "z", 26),
        (1, "x", "ex"),
        (2, "y", {"y": [1]}),
    ]
    assert backend.dependency_results(request_uuid=request_of(backend, enqueued, "x")) == []
    assert backend.dependency_results(request_uuid=uuid.uuid4()) == []


def test_workflow_reports_states_dependencies_attempts_and_results(backend: Backend) -> None:
    wf = Workflow("report")
    top = wf.add(Echo("top"), name="top", retries=2)
    wf.add(Echo("left"), after=[top], name="left")
    wf.add(Noop(), after=["top", "left"], name="bottom", run_on_failure=True)
    enqueued = wf.enqueue()
    found = status(backend, enqueued)
    assert (found.uuid, found.name, found.state) == (enqueued.uuid, "report", "running")
    assert [(n.node, n.name, n.depends_on, n.run_on_failure) for n in found.nodes] == [
        (0, "top", (), False),
        (1, "left", (0,), False),
        (2, "bottom", (0, 1), True),
    ]
    assert [n.job_class for n in found.nodes] == [job_class_path(Echo)] * 2 + [job_class_path(Noop)]
    assert [n.request_uuid for n in found.nodes] == [r.uuid for r in enqueued.requests]
    assert all(n.result_uuid is None and n.attempt == 1 for n in found.nodes)

    (process,) = claim(backend)
    running = status(backend, enqueued).node("top")
    assert running.process_uuid == process.uuid and running.running
    retry = finish(backend, process, Status.ERRORED, requeue=Requeue(0, retry_attempt=1))
    waiting = status(backend, enqueued).node("top")
    assert (waiting.process_uuid, waiting.attempt) == (None, 2)
    assert waiting.request_uuid == retry.retry_request_uuid
    (process,) = claim(backend)
    ended = finish(backend, process, value="top")
    top_node = status(backend, enqueued).node("top")
    assert (top_node.state, top_node.result_uuid, top_node.status) == (
        S.SUCCEEDED,
        ended.uuid,
        Status.SUCCESSFUL,
    )
    assert (top_node.attempt, top_node.ended_at) == (2, ended.ended_at)

    assert backend.workflow(uuid=uuid.uuid4()) is None
    assert backend.workflow_of_request(request_uuid=enqueued.requests[2].uuid) == enqueued.uuid
    assert backend.workflow_of_request(request_uuid=uuid.uuid4()) is None
    newer = chain(Noop(), name="newer").enqueue()
    recent = backend.recent_workflows(limit=2)
    assert [(u, name) for u, name, _ in recent] == [(newer.uuid, "newer"), (found.uuid, "report")]
    assert recent[1][2] == found.created_at
    assert errands.workflow(enqueued.uuid) == status(backend, enqueued)


# -- transactions --------------------------------------------------------------------


def plan_of(requests: Sequence[JobRequest]) -> WorkflowPlan:
    return WorkflowPlan(
        uuid=uuid.uuid4(),
        name="undone",
        nodes=tuple(
            PlannedNode(
                node=i,
                name=f"n{i}",
                job_class=r.job_class,
                request_uuid=r.uuid,
                depends_on=(i - 1,) if i else (),
            )
            for i, r in enumerate(requests)
        ),
    )


def assert_nothing_left(
    backend: Backend, workflow_uuid: uuid.UUID, requests: Sequence[Any]
) -> None:
    assert backend.workflow(uuid=workflow_uuid) is None
    for request in requests:
        assert backend.get(uuid=request.uuid) is None
        assert backend.workflow_of_request(request_uuid=request.uuid) is None
    assert backend.next_requests(selection=Selection(), limit=100) == []


def test_a_rolled_back_enqueue_leaves_no_workflow_node_or_request(backend: Backend) -> None:
    with pytest.raises(RuntimeError), backend.enqueue_transaction() as tx:
        inserted = tx.insert_requests([contract.new(), contract.new(start_at=HELD_UNTIL)])
        plan = plan_of(inserted)
        tx.insert_workflow(plan)
        raise RuntimeError("roll back")
    assert_nothing_left(backend, plan.uuid, inserted)


@pytest.mark.postgres_only
def test_a_workflow_in_a_rolled_back_callers_transaction_leaves_nothing(
    backend: Backend, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1")  # the caller's transaction is open
        enqueued = chain(Echo(1), Echo(2)).enqueue(connection=conn)
        assert backend.workflow(uuid=enqueued.uuid) is None  # not committed yet
        conn.rollback()
    assert_nothing_left(backend, enqueued.uuid, enqueued.requests)


@pytest.mark.sqlite_only
def test_a_workflow_in_a_rolled_back_sqlite_transaction_leaves_nothing(
    backend: Backend, db_url: str
) -> None:
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    try:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE audit (note TEXT)")
        enqueued = chain(Echo(1), Echo(2)).enqueue(connection=conn)  # joins as a savepoint
        assert conn.in_transaction
        conn.rollback()
    finally:
        conn.close()
    assert_nothing_left(backend, enqueued.uuid, enqueued.requests)


@pytest.mark.sql_only
def test_a_committed_callers_transaction_keeps_the_workflow(backend: Backend, db_url: str) -> None:
    conn: Any = (
        psycopg.connect(db_url)
        if db_url.startswith("postgresql")
        else sqlite3.connect(db_url.removeprefix("sqlite:///"))
    )
    try:
        enqueued = chain(Echo(1), Echo(2)).enqueue(connection=conn)
        conn.commit()
    finally:
        conn.close()
    assert states(backend, enqueued) == {"Echo": S.PENDING, "Echo#2": S.WAITING}
    assert held(backend, enqueued.requests[1].uuid)


# -- other writers of results --------------------------------------------------------


def test_a_held_job_that_expires_ends_cancelled_and_cancels_its_dependents(
    backend: Backend,
) -> None:
    wf = Workflow("expiry")
    a = wf.add(Echo("a"), name="a")
    b = wf.add(Echo("b"), after=[a], name="b", expires=datetime.timedelta(milliseconds=1))
    wf.add(Echo("c"), after=[b], name="c")
    wf.add(Echo("d"), after=[b], name="d", run_on_failure=True)
    enqueued = wf.enqueue()
    time.sleep(0.01)
    claimed = claim(backend)  # expires b first, as every claim does
    # d, released by the expiry, may be claimed by the same claim (PostgreSQL's
    # statement does not see it yet; SQLite's and the in-memory claim do).
    assert claimed_names(backend, enqueued, claimed) - {"d"} == {"a"}
    assert states(backend, enqueued) == {
        "a": S.PENDING,
        "b": S.CANCELLED,
        "c": S.CANCELLED,
        "d": S.PENDING,
    }
    (expired,) = results_of(backend, request_of(backend, enqueued, "b"))
    assert expired.error_type != DEPENDENCY_FAILED_TYPE
    assert dependency_failed(backend, request_of(backend, enqueued, "c"))


def test_a_deferral_keeps_the_node_pending_on_its_new_request(backend: Backend) -> None:
    enqueued = chain(Echo("deferred"), Echo("next")).enqueue()
    (process,) = claim(backend)
    deferral = contract.outcome(process, Status.DEFERRED, requeue=Requeue(0, retry_attempt=0))
    with backend.completing(outcome=deferral) as (result, tx):  # as write_deferral does
        assert result is not None
        (again,) = tx.insert_requests([contract.new(job_class=job_class_path(Echo))])
        assert tx.link_retry(result_uuid=result.uuid, request_uuid=again.uuid)
    node = status(backend, enqueued).node("Echo")
    assert (node.state, node.request_uuid) == (S.PENDING, again.uuid)
    assert held(backend, request_of(backend, enqueued, "Echo#2"))
    run_node(backend, enqueued, "Echo")
    assert states(backend, enqueued) == {"Echo": S.SUCCEEDED, "Echo#2": S.PENDING}


def test_a_rolled_back_completion_leaves_the_workflow_as_it_was(backend: Backend) -> None:
    enqueued = chain(Echo("a"), Echo("b")).enqueue()
    (process,) = claim(backend)
    with pytest.raises(RuntimeError), backend.completing(outcome=contract.outcome(process)):
        raise RuntimeError("roll back")
    assert states(backend, enqueued) == {"Echo": S.PENDING, "Echo#2": S.WAITING}
    assert held(backend, request_of(backend, enqueued, "Echo#2"))
    finish(backend, process)  # the process is back: it completes later
    assert states(backend, enqueued) == {"Echo": S.SUCCEEDED, "Echo#2": S.PENDING}


# -- pruning --------------------------------------------------------------------------


def test_prune_workflows_deletes_only_ended_ones_past_the_cutoff(backend: Backend) -> None:
    ended = chain(Echo(1), name="ended").enqueue()
    (process,) = claim(backend)
    finish(backend, process, value=1)
    running = chain(Echo(2), Echo(3), name="running").enqueue()
    time.sleep(0.05)
    assert backend.prune_workflows(older_than_seconds=3600) == 0  # none old enough
    assert backend.prune_workflows(older_than_seconds=0) == 1
    assert backend.workflow(uuid=ended.uuid) is None
    assert status(backend, running).state == "running"  # a job not ended keeps it
    assert backend.workflow_of_request(request_uuid=ended.requests[0].uuid) is None
    assert backend.recent_workflows(limit=10) == [
        (running.uuid, "running", status(backend, running).created_at)
    ]


def test_a_late_success_of_a_lost_job_ends_its_node_succeeded(backend: Backend) -> None:
    """The worker was cut off, its job rescued as LOST, and then its SUCCESSFUL outcome
    arrived after all: with no retry left to run (none owed yet, or the one owed
    withdrawn), the node succeeds and its dependent is released."""
    owed = chain(Echo("owed"), Echo("after")).enqueue()
    retried = chain(Echo("retried"), Echo("after")).enqueue()
    worker_id = contract.register(backend)
    processes = {p.request_uuid: p for p in claim(backend, worker_id)}
    lost = backend.lose_processes(
        worker_id=worker_id, process_uuids=[p.uuid for p in processes.values()]
    )
    lost_retried = next(r for r in lost if r.request_uuid == retried.requests[0].uuid)
    with backend.enqueue_transaction() as tx:  # its follow-up retries it
        assert tx.settle_followup(result_uuid=lost_retried.uuid)
        (retry,) = tx.insert_requests([contract.new(job_class=job_class_path(Echo))])
        assert tx.link_retry(result_uuid=lost_retried.uuid, request_uuid=retry.uuid)
    assert status(backend, retried).node("Echo").request_uuid == retry.uuid

    late = [contract.outcome(p, Status.SUCCESSFUL) for p in processes.values()]
    backend.complete_many(outcomes=late)
    for enqueued in (owed, retried):
        assert states(backend, enqueued) == {"Echo": S.SUCCEEDED, "Echo#2": S.PENDING}
        assert due_now(backend, enqueued.requests[1].uuid)
    assert backend.get(uuid=retry.uuid) is None  # the retry was withdrawn
