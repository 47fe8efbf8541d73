"""Enqueue transactions of the in-memory backend: staged until the block exits."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Sequence

from errands.backends.base import ConcurrencySlot, EnqueueTransaction
from errands.backends.store import SlotState
from errands.models import JobProcess, JobRequest, JobResult, NewRequest, Status
from errands.testing.memory_rows import claim_order, request_of, utcnow
from errands.testing.memory_tables import MemoryTables, OccurrenceKey
from errands.testing.memory_workflows import end_node_of_result, follow_retry
from errands.workflow_models import WorkflowPlan


class MemoryEnqueueTransaction(EnqueueTransaction):
    """Stages inserts; :meth:`commit` makes them visible when the block exits cleanly,
    so a block that raises leaves nothing behind (a rolled-back transaction)."""

    def __init__(self, tables: MemoryTables) -> None:
        self.tables = tables
        self.staged: list[JobRequest] = []
        self.retry_links: dict[uuid.UUID, uuid.UUID] = {}  # result -> its retry's request
        self.occurrences: dict[OccurrenceKey, uuid.UUID | None] = {}
        self.settled: set[uuid.UUID] = set()
        self.replaced: dict[uuid.UUID, JobRequest] = {}  # committed requests, replaced
        self.workflows: list[WorkflowPlan] = []
        #: Retries linked and nodes ended (by result uuid), in the order the SQL
        #: statements would have run: a node ended before its retry is linked stays ended.
        self.workflow_steps: list[tuple[str, uuid.UUID]] = []

    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        """Nothing to do: the backend's lock is held for the whole transaction."""

    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        jobs: list[JobRequest | JobProcess] = [
            *self.tables.requests.values(),
            *self.tables.processes.values(),
            *self.staged,
        ]
        used = {(job.job_class, job.concurrency_key) for job in jobs}
        return {slot for slot in slots if slot in used}

    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        committed = (self.replaced.get(r.uuid, r) for r in self.tables.requests.values())
        requests = [*committed, *self.staged]
        return [r for r in requests if (r.job_class, r.concurrency_key) == slot]

    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        processes = self.tables.processes.values()
        return [p for p in processes if (p.job_class, p.concurrency_key) == slot]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        now = utcnow()
        inserted = [request_of(new, now) for new in requests]
        self.staged.extend(inserted)
        return inserted

    def unique_slots(
        self, slots: Sequence[ConcurrencySlot], *, successes: bool
    ) -> dict[ConcurrencySlot, SlotState]:
        now = utcnow()
        states: dict[ConcurrencySlot, SlotState] = {}
        for slot in slots:
            pending = sorted(self.requests_for_slot(slot), key=claim_order)
            running = bool(self.processes_for_slot(slot))
            ended = [
                r.ended_at
                for r in (self.tables.results if successes else ())
                if (r.job_class, r.concurrency_key) == slot and r.status == Status.SUCCESSFUL
            ]
            age = (now - max(ended)).total_seconds() if ended else None
            if pending or running or age is not None:
                states[slot] = SlotState(pending[0].uuid if pending else None, running, age)
        return states

    def replace_request(
        self, target: uuid.UUID, new: NewRequest, *, move_due_time: bool
    ) -> JobRequest | None:
        staged = [i for i, r in enumerate(self.staged) if r.uuid == target]
        old = self.staged[staged[0]] if staged else self.tables.requests.get(target)
        if old is None:
            return None
        replaced = dataclasses.replace(
            request_of(dataclasses.replace(new, uuid=target), utcnow()),
            created_at=old.created_at,
            job_class=old.job_class,
            concurrency_key=old.concurrency_key,
        )
        if not move_due_time:
            replaced = dataclasses.replace(replaced, start_at=old.start_at)
        if staged:
            self.staged[staged[0]] = replaced
        else:
            self.replaced[target] = replaced
        return replaced

    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> bool:
        found = [r for r in self.tables.results if r.uuid == result_uuid]
        if not found or found[0].retry_request_uuid is not None:
            return False
        if result_uuid in self.retry_links:
            return False
        self.retry_links[result_uuid] = request_uuid
        self.workflow_steps.append(("follow", result_uuid))
        return True

    def settle_followup(self, *, result_uuid: uuid.UUID) -> bool:
        if result_uuid not in self.tables.owed or result_uuid in self.settled:
            return False
        self.settled.add(result_uuid)
        return True

    def insert_workflow(self, plan: WorkflowPlan) -> None:
        self.workflows.append(plan)

    def end_workflow_node(self, *, result_uuid: uuid.UUID) -> None:
        self.workflow_steps.append(("end", result_uuid))

    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        fresh = {o for o in occurrences if o not in self.tables.occurrences}
        self.occurrences.update(dict.fromkeys(fresh))
        return fresh

    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        self.occurrences[(key, run_at)] = request_uuid

    def commit(self) -> None:
        """Make the staged rows visible (the caller holds the backend's lock)."""
        tables = self.tables
        for key, request in self.replaced.items():
            if key in tables.requests:
                tables.requests[key] = request
        for request in self.staged:
            tables.requests[request.uuid] = request
        tables.history.extend(self.staged)
        tables.occurrences.update(self.occurrences)
        for result_uuid in self.settled:
            tables.owed.pop(result_uuid, None)
        now = utcnow()
        for plan in self.workflows:
            tables.workflows.insert(plan, now)
        if self.retry_links:
            tables.results = [self._linked(result) for result in tables.results]
        self._move_workflows(now)
        tables._notify()

    def _move_workflows(self, now: datetime.datetime) -> None:
        """What the workflow triggers do on ``link_retry`` and ``end_workflow_node``, in
        the order they were called (memory_workflows)."""
        results = {r.uuid: r for r in self.tables.results if r.uuid in self.retry_links}
        linked: set[uuid.UUID] = set()
        for step, result_uuid in self.workflow_steps:
            if step == "follow":
                linked.add(result_uuid)
                result = results[result_uuid]
                follow_retry(
                    self.tables,
                    request_uuid=result.request_uuid,
                    retry=self.retry_links[result_uuid],
                )
            elif result_uuid not in linked:
                # A retry linked after this call was not there yet when it ran.
                later = result_uuid in self.retry_links
                end_node_of_result(self.tables, result_uuid, now, retry_linked_later=later)

    def _linked(self, result: JobResult) -> JobResult:
        retry = self.retry_links.get(result.uuid)
        return result if retry is None else dataclasses.replace(result, retry_request_uuid=retry)
