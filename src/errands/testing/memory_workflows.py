"""Workflows in the in-memory backend: the rows, the rule that moves them, and reading.

The SQL backends keep the rule in triggers (``0011_workflows.sql`` for PostgreSQL,
``0010_workflows.sql`` for SQLite; the PostgreSQL one explains it in full) so that
every writer of results moves workflows. Here every writer of results goes through
:func:`results_written` (``MemoryStore._write_results``), under the backend's lock,
which is what the triggers' transaction is:

* a result no retry follows ends its node (SUCCESSFUL: succeeded; CANCELLED:
  cancelled; others: failed), unless it is LOST (its follow-up decides:
  :func:`end_node_of_result`) or DEFERRED (it is enqueued again); a result with a
  retry, or a retry linked later (:func:`follow_retry`), moves its node to the retry;
* the children of the nodes that ended count them; a waiting child whose last
  dependency ended is released (due now) if none failed or it runs anyway; a
  waiting child with a failed dependency, and every waiting descendant reached
  through such children, is cancelled at once: its request becomes a CANCELLED
  result, which ends its node in turn.

A batch of results is handled as one SQL statement is: all their nodes end before
any child is counted, so cancelling a parent and its child together (a bulk cancel,
an expiry) cancels each once.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol

from errands import lifecycle, serialization
from errands.models import JobProcess, JobRequest, JobResult, Status
from errands.testing.memory_rows import cancelled_result
from errands.workflow_models import (
    DEPENDENCY_FAILED_ERROR,
    DEPENDENCY_FAILED_TYPE,
    DependencyResult,
    NodeState,
    NodeStatus,
    WorkflowPlan,
    WorkflowStatus,
)

#: Results that leave their node as it is: a LOST one's follow-up retries it or ends
#: it; a DEFERRED one is enqueued again (its retry is linked in the same step).
NOT_ENDING = frozenset({Status.LOST, Status.DEFERRED})

#: How the trigger ends a held job whose dependency did not succeed.
DEPENDENCY_FAILED = lifecycle.Ending(
    Status.CANCELLED, DEPENDENCY_FAILED_TYPE, DEPENDENCY_FAILED_ERROR, lifecycle.Retry.NEVER
)

#: How a final result ends its node (any other status: failed).
ENDED_AS = {Status.SUCCESSFUL: NodeState.SUCCEEDED, Status.CANCELLED: NodeState.CANCELLED}


@dataclasses.dataclass(slots=True)
class MemoryNode:
    """One row of ``errands_workflow_node``, with its edges (``errands_workflow_edge``)."""

    workflow_uuid: uuid.UUID
    node: int
    name: str
    job_class: str
    run_on_failure: bool
    #: the parents, in the child's order (an edge's ``position`` is the index here)
    depends_on: tuple[int, ...]
    waiting: int
    state: NodeState
    request_uuid: uuid.UUID
    failed: int = 0
    result_uuid: uuid.UUID | None = None
    children: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class MemoryWorkflow:
    """One row of ``errands_workflow`` and its nodes, in the order they were added."""

    uuid: uuid.UUID
    name: str
    created_at: datetime.datetime
    nodes: list[MemoryNode]


class WorkflowRows:
    """The workflow tables: workflows by uuid, and each node by its current request
    (the unique index by which a result finds its node)."""

    def __init__(self) -> None:
        self.workflows: dict[uuid.UUID, MemoryWorkflow] = {}
        self.by_request: dict[uuid.UUID, MemoryNode] = {}

    def insert(self, plan: WorkflowPlan, now: datetime.datetime) -> None:
        """As ``insert_workflow``: a node with dependencies waits, one without is pending."""
        nodes = [
            MemoryNode(
                workflow_uuid=plan.uuid,
                node=planned.node,
                name=planned.name,
                job_class=planned.job_class,
                run_on_failure=planned.run_on_failure,
                depends_on=planned.depends_on,
                waiting=len(planned.depends_on),
                state=NodeState.WAITING if planned.depends_on else NodeState.PENDING,
                request_uuid=planned.request_uuid,
            )
            for planned in plan.nodes
        ]
        by_number = {node.node: node for node in nodes}
        for node in nodes:
            for parent in node.depends_on:
                by_number[parent].children.append(node.node)
        self.workflows[plan.uuid] = MemoryWorkflow(plan.uuid, plan.name, now, nodes)
        for node in nodes:
            self.by_request[node.request_uuid] = node

    def node(self, workflow_uuid: uuid.UUID, number: int) -> MemoryNode:
        return next(n for n in self.workflows[workflow_uuid].nodes if n.node == number)

    def move(self, node: MemoryNode, request_uuid: uuid.UUID) -> None:
        """The node follows its retry: found by the retry's request from now on."""
        self.by_request.pop(node.request_uuid, None)
        node.request_uuid = request_uuid
        self.by_request[request_uuid] = node

    def prune(self, cutoff: datetime.datetime, batch_size: int) -> int:
        """As ``prune_workflows``: the oldest workflows made before ``cutoff`` whose
        jobs all ended, at most ``batch_size``, go with their nodes."""
        ended = sorted(
            (
                workflow
                for workflow in self.workflows.values()
                if workflow.created_at < cutoff and all(node.state.ended for node in workflow.nodes)
            ),
            key=lambda workflow: workflow.created_at,
        )[: max(batch_size, 0)]
        for workflow in ended:
            del self.workflows[workflow.uuid]
            for node in workflow.nodes:
                if self.by_request.get(node.request_uuid) is node:
                    del self.by_request[node.request_uuid]
        return len(ended)

    def copy(self) -> WorkflowRows:
        """A deep copy, to put back when a transaction rolls back (``completing``)."""
        return copy.deepcopy(self)


class WorkflowTables(Protocol):
    """What the rule reads and writes of the backend's tables (``MemoryTables``)."""

    requests: dict[uuid.UUID, JobRequest]
    processes: dict[uuid.UUID, JobProcess]
    results: list[JobResult]
    workflows: WorkflowRows


# -- the rule (the triggers) ---------------------------------------------------------


def results_written(
    tables: WorkflowTables, results: Sequence[JobResult], now: datetime.datetime
) -> None:
    """``results`` were just appended to ``tables.results``: end or move their nodes,
    then count, release and cancel the dependents (errands_workflow_results)."""
    rows = tables.workflows
    if not rows.by_request:
        return  # no workflow at all: the common case costs nothing
    ended: list[MemoryNode] = []
    for result in results:
        node = rows.by_request.get(result.request_uuid)
        if node is None:
            continue
        if result.retry_request_uuid is not None:
            if node.state is NodeState.PENDING:
                rows.move(node, result.retry_request_uuid)
        elif result.status not in NOT_ENDING and node.state in _OPEN:
            node.state = ENDED_AS.get(result.status, NodeState.FAILED)
            node.result_uuid = result.uuid
            ended.append(node)
    _advance(tables, ended, now)


def follow_retry(tables: WorkflowTables, *, request_uuid: uuid.UUID, retry: uuid.UUID) -> None:
    """A retry linked to a result after it was written (a LOST job's follow-up, a
    deferral): a pending node moves to it (errands_result_retry_linked)."""
    node = tables.workflows.by_request.get(request_uuid)
    if node is not None and node.state is NodeState.PENDING:
        tables.workflows.move(node, retry)


def end_node_of_result(
    tables: WorkflowTables,
    result_uuid: uuid.UUID,
    now: datetime.datetime,
    *,
    retry_linked_later: bool = False,
) -> None:
    """``end_workflow_node``: a result without a retry ends its still pending node as
    failed (a LOST job its follow-up did not retry); nothing for any other result.
    ``retry_linked_later``: its retry was linked after this call in the transaction
    (the memory transaction links at commit), so it had none at the time."""
    result = next((r for r in tables.results if r.uuid == result_uuid), None)
    if result is None or (result.retry_request_uuid is not None and not retry_linked_later):
        return
    node = tables.workflows.by_request.get(result.request_uuid)
    if node is None or node.state is not NodeState.PENDING:
        return
    node.state = NodeState.FAILED
    node.result_uuid = result.uuid
    _advance(tables, [node], now)


def late_success(
    tables: WorkflowTables, result: JobResult, retry: uuid.UUID | None, now: datetime.datetime
) -> None:
    """``late_success_ends_workflow_node``: a LOST job whose own SUCCESSFUL outcome came
    late, with no retry left to run (withdrawn, or none owed), ends its pending node as
    succeeded: the node of the LOST result's request, or of its withdrawn retry."""
    for request_uuid in (result.request_uuid, retry):
        node = None if request_uuid is None else tables.workflows.by_request.get(request_uuid)
        if node is not None and node.state is NodeState.PENDING:
            node.state = NodeState.SUCCEEDED
            node.result_uuid = result.uuid
            _advance(tables, [node], now)
            return


_OPEN = (NodeState.WAITING, NodeState.PENDING)


def _advance(tables: WorkflowTables, ended: Sequence[MemoryNode], now: datetime.datetime) -> None:
    """errands_workflow_advance: the children of the ``ended`` nodes count them; those
    whose dependencies all ended are released, the doomed ones cancelled."""
    if not ended:
        return
    rows = tables.workflows
    hit: dict[tuple[uuid.UUID, int], MemoryNode] = {}
    for parent in ended:
        for number in parent.children:
            child = rows.node(parent.workflow_uuid, number)
            # Counted whatever the child's state, as the UPDATE of the counts is.
            child.waiting -= 1
            child.failed += parent.state is not NodeState.SUCCEEDED
            hit[(child.workflow_uuid, child.node)] = child
    children = [hit[key] for key in sorted(hit)]  # the trigger's order of locks
    for child in children:
        if (
            child.state is NodeState.WAITING
            and child.waiting == 0
            and (child.failed == 0 or child.run_on_failure)
        ):
            child.state = NodeState.PENDING
            request = tables.requests.get(child.request_uuid)
            if request is not None:  # due now: the next claim may take it
                tables.requests[request.uuid] = dataclasses.replace(request, start_at=now)
    doomed = _doomed(
        rows,
        [c for c in children if c.state is NodeState.WAITING and c.failed and not c.run_on_failure],
    )
    cancelled = []
    for node in doomed:
        request = tables.requests.pop(node.request_uuid, None)
        if request is not None:  # a held request deleted meanwhile leaves its node as is
            cancelled.append(dependency_failed_result(request, now))
    if cancelled:
        # Their results end their nodes in turn (and count in run_on_failure children).
        tables.results.extend(cancelled)
        results_written(tables, cancelled, now)


def _doomed(rows: WorkflowRows, first: Iterable[MemoryNode]) -> list[MemoryNode]:
    """``first`` and the waiting descendants reached through them that do not run
    anyway (the trigger's recursive ``doomed``), each once, in the order reached."""
    found: dict[tuple[uuid.UUID, int], MemoryNode] = {}
    todo = list(first)
    while todo:
        node = todo.pop(0)
        key = (node.workflow_uuid, node.node)
        if key in found:
            continue
        found[key] = node
        for number in node.children:
            child = rows.node(node.workflow_uuid, number)
            if child.state is NodeState.WAITING and not child.run_on_failure:
                todo.append(child)
    return list(found.values())


def dependency_failed_result(request: JobRequest, now: datetime.datetime) -> JobResult:
    """The CANCELLED result of a held job whose dependency did not succeed, as the
    trigger writes it: a pending request's cancellation, without a due time."""
    return dataclasses.replace(cancelled_result(request, now, DEPENDENCY_FAILED), start_at=None)


# -- reading (the workflow queries) ----------------------------------------------------


def workflow_status(tables: WorkflowTables, workflow_uuid: uuid.UUID) -> WorkflowStatus | None:
    """``JobReader.workflow``: each node with its final result, or the process that
    runs it now, as the ``workflow_nodes`` query joins them."""
    found = tables.workflows.workflows.get(workflow_uuid)
    if found is None:
        return None
    results = {r.uuid: r for r in tables.results}
    return WorkflowStatus(
        uuid=found.uuid,
        name=found.name,
        created_at=found.created_at,
        nodes=tuple(_node_status(tables, node, results) for node in found.nodes),
    )


def _node_status(
    tables: WorkflowTables, node: MemoryNode, results: dict[uuid.UUID, JobResult]
) -> NodeStatus:
    result = None if node.result_uuid is None else results.get(node.result_uuid)
    process = None
    if node.result_uuid is None:
        process = next(
            (p for p in tables.processes.values() if p.request_uuid == node.request_uuid), None
        )
    request = tables.requests.get(node.request_uuid)
    attempts = [row.retry_attempt for row in (result, process, request) if row is not None]
    return NodeStatus(
        node=node.node,
        name=node.name,
        job_class=node.job_class,
        state=node.state,
        depends_on=node.depends_on,
        run_on_failure=node.run_on_failure,
        request_uuid=node.request_uuid,
        result_uuid=node.result_uuid,
        process_uuid=None if process is None else process.uuid,
        started_at=(result.started_at if result else None)
        or (process.started_at if process else None),
        ended_at=result.ended_at if result else None,
        status=result.status if result else "",
        error_type=result.error_type if result else "",
        error=result.error if result else "",
        attempt=(attempts[0] if attempts else 0) + 1,
    )


def workflow_of_request(tables: WorkflowTables, request_uuid: uuid.UUID) -> uuid.UUID | None:
    """The workflow of the node whose current request is ``request_uuid``."""
    node = tables.workflows.by_request.get(request_uuid)
    return None if node is None else node.workflow_uuid


def recent_workflows(
    tables: WorkflowTables, limit: int
) -> list[tuple[uuid.UUID, str, datetime.datetime]]:
    """Newest first, then by uuid, as ``recent_workflows`` orders them."""
    ordered = sorted(
        tables.workflows.workflows.values(),
        key=lambda w: (-w.created_at.timestamp(), w.uuid),
    )
    return [(w.uuid, w.name, w.created_at) for w in ordered[: max(limit, 0)]]


def dependency_results(tables: WorkflowTables, request_uuid: uuid.UUID) -> list[DependencyResult]:
    """The parents of the node of ``request_uuid`` with their final results, in the
    child's order; a parent without one (or whose result was pruned) has status ""."""
    node = tables.workflows.by_request.get(request_uuid)
    if node is None:
        return []
    results = {r.uuid: r for r in tables.results}
    found = []
    for position, number in enumerate(node.depends_on):
        parent = tables.workflows.node(node.workflow_uuid, number)
        result = None if parent.result_uuid is None else results.get(parent.result_uuid)
        found.append(
            DependencyResult(
                position=position,
                name=parent.name,
                status=result.status if result else "",
                return_value=serialization.decode(result.return_value) if result else None,
            )
        )
    return found
