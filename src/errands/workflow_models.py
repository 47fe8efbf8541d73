"""What a workflow is made of, as the backends store and return it (errands.workflows).

A workflow is a set of jobs (nodes) and the dependencies between them. Each node is
an ordinary request: one without dependencies is due as any job is; one with
dependencies is held, due at :data:`HELD_UNTIL`, until the database releases it in
the transaction that records its last dependency's result (the rule lives in the
backends' migrations: ``0011_workflows.sql`` for PostgreSQL, ``0010_workflows.sql``
for SQLite, and ``errands.testing.memory_workflows``).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

#: The due time of a job that waits for its dependencies: no claim takes it.
HELD_UNTIL = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)

#: The error type and message of a job cancelled because a dependency did not succeed.
DEPENDENCY_FAILED_TYPE = "errands.DependencyFailed"
DEPENDENCY_FAILED_ERROR = "a job it depends on did not succeed"


def is_held(start_at: datetime.datetime | None) -> bool:
    """Whether a request due at ``start_at`` waits for the jobs it depends on."""
    return start_at is not None and start_at >= HELD_UNTIL - datetime.timedelta(days=1)


class NodeState(enum.StrEnum):
    """Where a workflow's job stands."""

    WAITING = "waiting"  # some of its dependencies have not ended
    PENDING = "pending"  # released: requested, running, or retrying
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled, or a dependency did not succeed

    @property
    def ended(self) -> bool:
        return self in (NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED)


@dataclass(frozen=True, slots=True)
class PlannedNode:
    """One job of a workflow being enqueued: its request and its dependencies."""

    node: int
    name: str
    job_class: str
    request_uuid: UUID
    #: the nodes it waits for, in the order given (JobContext.dependencies' order)
    depends_on: tuple[int, ...]
    run_on_failure: bool = False


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    """A workflow as ``EnqueueTransaction.insert_workflow`` writes it."""

    uuid: UUID
    name: str
    nodes: tuple[PlannedNode, ...]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One job of a stored workflow, as ``JobReader.workflow`` reads it."""

    node: int
    name: str
    job_class: str
    state: NodeState
    depends_on: tuple[int, ...]
    run_on_failure: bool
    #: the request of its current attempt (or its last, once it ended)
    request_uuid: UUID
    #: its final result, once it ended
    result_uuid: UUID | None
    #: the process a worker holds it as now (claimed or running); None otherwise
    process_uuid: UUID | None = None
    started_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    #: the final result's status, error type and error (empty before it ended)
    status: str = ""
    error_type: str = ""
    error: str = ""
    attempt: int = 1

    @property
    def running(self) -> bool:
        """Whether a worker holds it now (claimed or running)."""
        return self.process_uuid is not None


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A stored workflow and every one of its jobs, in the order they were added."""

    uuid: UUID
    name: str
    created_at: datetime.datetime
    nodes: tuple[NodeStatus, ...]

    @property
    def state(self) -> str:
        """``running`` until every job ended; then ``succeeded`` if all succeeded,
        else ``failed`` (``cancelled`` when the jobs that did not succeed were all
        cancelled)."""
        states = [node.state for node in self.nodes]
        if not all(state.ended for state in states):
            return "running"
        if all(state is NodeState.SUCCEEDED for state in states):
            return "succeeded"
        if NodeState.FAILED in states:
            return "failed"
        return "cancelled"

    def counts(self) -> dict[str, int]:
        """How many of its jobs are in each state (states without any left out)."""
        found: dict[str, int] = {}
        for node in self.nodes:
            found[node.state.value] = found.get(node.state.value, 0) + 1
        return found

    def node(self, key: int | str) -> NodeStatus:
        """A job by its position or its name."""
        for node in self.nodes:
            if node.node == key or node.name == key:
                return node
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class DependencyResult:
    """A finished dependency of a running job: what ``JobContext.dependencies`` shows."""

    position: int  # in the job's list of dependencies
    name: str
    status: str
    return_value: Any


class Dependencies(Mapping[str, Any]):
    """The return values of the jobs a workflow job depends on (``self.context.dependencies``).

    By name (``dependencies["fetch"]``) or by position in the job's ``after`` list
    (``dependencies[0]``); iterating gives the names in that order. A dependency that
    did not succeed (a job marked ``run_on_failure``) has the value None; its status
    is in :meth:`result`. Empty for a job outside any workflow.
    """

    def __init__(self, results: Sequence[DependencyResult] = ()) -> None:
        self._results = sorted(results, key=lambda found: found.position)
        self._by_name = {found.name: found for found in self._results}

    def result(self, key: int | str) -> DependencyResult:
        """The dependency itself (name, status, return value), by position or name."""
        if isinstance(key, int):
            try:
                return self._results[key]
            except IndexError:
                raise KeyError(key) from None
        return self._by_name[key]

    def __getitem__(self, key: int | str) -> Any:
        return self.result(key).return_value

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return (
            f"Dependencies({ {name: found.return_value for name, found in self._by_name.items()} })"
        )
