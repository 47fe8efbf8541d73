"""Reading workflows (errands.workflows): the same named statements in both dialects.

What moves a workflow (ending nodes, releasing and cancelling their dependents) is
not here: it lives in the database, in each dialect's workflow migration, so that
it happens in the transaction that writes a result, whoever writes it.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from errands import serialization
from errands.backends.sql.codec import Codec, Row, Session
from errands.workflow_models import (
    DependencyResult,
    NodeState,
    NodeStatus,
    PlannedNode,
    WorkflowStatus,
)


def node_rows(plan_nodes: Sequence[PlannedNode]) -> list[dict[str, Any]]:
    """Each node as the insert_workflow_nodes statement takes it (uuids as text)."""
    return [
        {
            "node": node.node,
            "name": node.name,
            "job_class": node.job_class,
            "run_on_failure": node.run_on_failure,
            "waiting": len(node.depends_on),
            "request_uuid": str(node.request_uuid),
        }
        for node in plan_nodes
    ]


def edge_rows(plan_nodes: Sequence[PlannedNode]) -> list[dict[str, int]]:
    """Each dependency as the insert_workflow_edges statement takes it."""
    return [
        {"parent": parent, "child": node.node, "position": position}
        for node in plan_nodes
        for position, parent in enumerate(node.depends_on)
    ]


class WorkflowReading:
    """``JobReader``'s workflow methods for a SQL backend (mixed into SqlBackend)."""

    codec: Codec

    if TYPE_CHECKING:  # supplied by SqlBackend and the dialect's backend

        def _reading(self) -> AbstractContextManager[Session]: ...

        def _transaction(self) -> AbstractContextManager[Session]: ...

        def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> Sequence[Row]: ...

    def workflow(self, *, uuid: uuid.UUID) -> WorkflowStatus | None:
        params = {"uuid": self.codec.uuid(uuid)}
        with self._reading() as session:
            found = session.rows("workflow", params)
            if not found:
                return None
            nodes = session.rows("workflow_nodes", params)
            edges = session.rows("workflow_edges", params)
        depends_on: dict[int, list[int]] = {}
        for edge in edges:
            depends_on.setdefault(edge["child"], []).append(edge["parent"])
        return WorkflowStatus(
            uuid=self.codec.uuid_of(found[0]["uuid"]),
            name=found[0]["name"],
            created_at=self.codec.moment(found[0]["created_at"]),
            nodes=tuple(self._node(row, depends_on.get(row["node"], [])) for row in nodes),
        )

    def _node(self, row: Row, depends_on: list[int]) -> NodeStatus:
        codec = self.codec
        return NodeStatus(
            node=row["node"],
            name=row["name"],
            job_class=row["job_class"],
            state=NodeState(row["state"]),
            depends_on=tuple(depends_on),
            run_on_failure=bool(row["run_on_failure"]),
            request_uuid=codec.uuid_of(row["request_uuid"]),
            result_uuid=_optional(codec, row["result_uuid"]),
            process_uuid=_optional(codec, row["process_uuid"]),
            started_at=_optional_moment(codec, row["started_at"]),
            ended_at=_optional_moment(codec, row["ended_at"]),
            status=row["status"] or "",
            error_type=row["error_type"],
            error=row["error"],
            attempt=int(row["retry_attempt"]) + 1,
        )

    def prune_workflows(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        params = {"older_than_seconds": float(older_than_seconds), "batch_size": batch_size}
        with self._transaction() as session:
            found = [str(row["uuid"]) for row in session.rows("ended_workflows", params)]
            if not found:
                return 0
            doomed = {"uuids": self.codec.texts(found)}
            session.run("delete_workflow_edges", doomed)
            session.run("delete_workflow_nodes", doomed)
            return session.run("delete_workflows", doomed)

    def workflow_of_request(self, *, request_uuid: uuid.UUID) -> uuid.UUID | None:
        rows = self._rows("workflow_of_request", {"request_uuid": self.codec.uuid(request_uuid)})
        return self.codec.uuid_of(rows[0]["workflow_uuid"]) if rows else None

    def recent_workflows(self, *, limit: int) -> list[tuple[uuid.UUID, str, datetime.datetime]]:
        return [
            (self.codec.uuid_of(row["uuid"]), row["name"], self.codec.moment(row["created_at"]))
            for row in self._rows("recent_workflows", {"limit": limit})
        ]

    def dependency_results(self, *, request_uuid: uuid.UUID) -> list[DependencyResult]:
        rows = self._rows("dependency_results", {"request_uuid": self.codec.uuid(request_uuid)})
        return [
            DependencyResult(
                position=row["position"],
                name=row["name"],
                status=row["status"],
                return_value=serialization.decode(self.codec.json_value(row["return_value"])),
            )
            for row in rows
        ]


def _optional(codec: Codec, value: Any) -> uuid.UUID | None:
    return None if value is None else codec.uuid_of(value)


def _optional_moment(codec: Codec, value: Any) -> datetime.datetime | None:
    return None if value is None else codec.moment(value)
