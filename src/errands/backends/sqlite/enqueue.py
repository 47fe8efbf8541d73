"""Enqueueing on SQLite: the transaction that checks concurrency keys and inserts
requests (the write lock already serialises enqueues)."""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Sequence

from errands.backends.base import (
    ConcurrencySlot,
    EnqueueTransaction,
)
from errands.backends.sql.workflows import edge_rows, node_rows
from errands.backends.sqlite.codec import request_json, to_process, to_request, to_unix
from errands.backends.sqlite.connection import SqliteSession
from errands.backends.store import SlotState
from errands.models import (
    JobProcess,
    JobRequest,
    NewRequest,
)
from errands.workflow_models import WorkflowPlan

logger = logging.getLogger("errands")


# -- enqueueing ------------------------------------------------------------------------------


class SqliteEnqueueTransaction(EnqueueTransaction):
    """Enqueue queries inside one open write transaction (or savepoint)."""

    def __init__(self, session: SqliteSession) -> None:
        self._session = session

    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        # Nothing to do: the transaction already holds SQLite's single write lock
        # (BEGIN IMMEDIATE), so every enqueue is serialised with every other one.
        # When joining a caller's transaction that has not written yet, the first
        # insert upgrades it to a writer, and SQLite refuses (SQLITE_BUSY) the
        # upgrade if another writer committed since it read, so no slot is taken twice.
        return None

    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        if not slots:
            return set()
        rows = self._session.rows("slots_in_use", slots=json.dumps([list(s) for s in slots]))
        return {(row["job_class"], row["concurrency_key"]) for row in rows}

    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        rows = self._session.rows("requests_for_slot", job_class=slot[0], concurrency_key=slot[1])
        return [to_request(row) for row in rows]

    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        rows = self._session.rows("processes_for_slot", job_class=slot[0], concurrency_key=slot[1])
        return [to_process(row) for row in rows]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        # One statement for the whole batch: the rows travel as one JSON parameter,
        # so the bound-variable limit never applies and no chunking is needed.
        if not requests:
            return []
        payload = json.dumps([request_json(request) for request in requests])
        inserted = {
            row["uuid"]: row for row in self._session.rows("insert_requests", requests=payload)
        }
        # RETURNING gives rows in no guaranteed order: put them back in input order.
        return [to_request(inserted[str(request.uuid)]) for request in requests]

    def unique_slots(
        self, slots: Sequence[ConcurrencySlot], *, successes: bool
    ) -> dict[ConcurrencySlot, SlotState]:
        if not slots:
            return {}
        rows = self._session.rows(
            "unique_slots", slots=json.dumps([list(s) for s in slots]), successes=successes
        )
        return {
            (row["job_class"], row["concurrency_key"]): SlotState(
                pending=None if row["pending"] is None else uuid.UUID(row["pending"]),
                running=bool(row["running"]),
                success_age=row["success_age"],
            )
            for row in rows
        }

    def replace_request(
        self, target: uuid.UUID, new: NewRequest, *, move_due_time: bool
    ) -> JobRequest | None:
        params = {**request_json(new), "target": str(target), "move_due_time": move_due_time}
        rows = self._session.rows("replace_request", params)
        return to_request(rows[0]) if rows else None

    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> bool:
        linked = self._session.run(
            "link_retry", result_uuid=str(result_uuid), request_uuid=str(request_uuid)
        )
        return linked > 0

    def settle_followup(self, *, result_uuid: uuid.UUID) -> bool:
        return self._session.run("settle_followup", result_uuid=str(result_uuid)) > 0

    def insert_workflow(self, plan: WorkflowPlan) -> None:
        workflow_uuid = str(plan.uuid)
        self._session.run("insert_workflow", uuid=workflow_uuid, name=plan.name)
        nodes = json.dumps(node_rows(plan.nodes))
        self._session.run("insert_workflow_nodes", workflow_uuid=workflow_uuid, nodes=nodes)
        edges = edge_rows(plan.nodes)
        if edges:
            self._session.run(
                "insert_workflow_edges", workflow_uuid=workflow_uuid, edges=json.dumps(edges)
            )

    def end_workflow_node(self, *, result_uuid: uuid.UUID) -> None:
        self._session.run("end_workflow_node", result_uuid=str(result_uuid))

    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        if not occurrences:
            return set()
        wanted = {(key, to_unix(run_at)): (key, run_at) for key, run_at in occurrences}
        payload = json.dumps([list(pair) for pair in wanted])
        rows = self._session.rows("reserve_occurrences", occurrences=payload)
        return {wanted[(row["entry_key"], row["run_at"])] for row in rows}

    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        self._session.execute(
            "link_occurrence",
            entry_key=key,
            run_at=to_unix(run_at),
            request_uuid=str(request_uuid),
        )
