"""The writing half of the backend seam: every transition of a job's life.

A request is enqueued, claimed (it becomes a process), started, and completed
(it becomes a result); a claimed process not yet started can be released; a
pending request can be cancelled and a running process flagged to stop; the
processes of a dead worker are rescued. What each ending writes (status, error
type, message, retry) is decided in :mod:`errands.lifecycle`, never here.
"""

from __future__ import annotations

import abc
import datetime
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from errands.models import (
    ABORTED_STATUSES,
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    NewRequest,
    Occurrence,
    Outcome,
    Progress,
    Selection,
    WorkerInfo,
)
from errands.workflow_models import WorkflowPlan

ConcurrencySlot = tuple[str, str]  # (job_class, concurrency_key)


@dataclass(frozen=True, slots=True)
class SlotState:
    """What holds a uniqueness slot (see errands.Unique): its first pending request in
    claim order, whether a process (claimed or running) holds it, and how many seconds
    ago its latest SUCCESSFUL result ended (None: none, or not asked for)."""

    pending: uuid.UUID | None
    running: bool
    success_age: float | None


@dataclass(frozen=True, slots=True)
class ClaimRoom:
    """What bounds a claim besides its ``limit`` (flow control; see errands.Limit)."""

    #: per queue, how many more of its jobs this worker may hold (``--queue NAME:N``)
    rooms: Mapping[str, int] = field(default_factory=dict)
    #: how many jobs with a rate limit it may take: those it can start at once
    #: (None: ``limit``); a job claimed ahead would start later than it was counted
    idle: int | None = None
    #: ``queue_limits``: at most N jobs of a queue claimed or running across all workers
    queue_limits: Mapping[str, int] = field(default_factory=dict)


class Claimed(list[JobProcess]):
    """The processes a claim took, in claim order, and when to look again for jobs
    that a rate limit held back."""

    #: seconds until a job held by a rate limit may be claimed (None: none is held
    #: by a rate; jobs held by a concurrency limit are woken by completions)
    retry_in: float | None = None
    #: jobs with a rate wait for an idle runner of this worker: claim again when one frees
    wants_idle: bool = False
    #: the queue of each request the claim ended as expired (errands.expiry)
    expired: tuple[str, ...] = ()
    #: the processes that are a workflow's jobs (errands.workflows): their results
    #: release the jobs after them, so the worker writes them at once
    in_workflows: frozenset[uuid.UUID] = frozenset()


class EnqueueTransaction(abc.ABC):
    """One open transaction in which jobs are checked and inserted.

    When the caller passed its own connection, this transaction is the caller's:
    the jobs exist if and only if the caller commits.
    """

    @abc.abstractmethod
    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        """Serialise enqueues of one (job class, concurrency key) until the transaction ends."""

    @abc.abstractmethod
    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        """Of ``slots``, those with a pending request or a claimed process (one round trip)."""

    @abc.abstractmethod
    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        """Pending requests of this job class and concurrency key."""

    @abc.abstractmethod
    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        """Claimed or running processes of this job class and concurrency key."""

    @abc.abstractmethod
    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        """Insert all requests in one round trip; return them in the same order."""

    @abc.abstractmethod
    def unique_slots(
        self, slots: Sequence[ConcurrencySlot], *, successes: bool
    ) -> dict[ConcurrencySlot, SlotState]:
        """The state of each slot that any job holds (one round trip; slots no job
        holds are left out). Results are looked at only with ``successes``."""

    @abc.abstractmethod
    def replace_request(
        self, target: uuid.UUID, new: NewRequest, *, move_due_time: bool
    ) -> JobRequest | None:
        """Give the pending request ``target`` the arguments and options of ``new``
        (same job class and concurrency key; it keeps its uuid and creation time), and,
        with ``move_due_time``, ``new``'s due time (computed as an insert would). None
        when ``target`` is no longer pending (claimed meanwhile): nothing changed."""

    @abc.abstractmethod
    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> bool:
        """Record on a result which request retries it; False (nothing recorded) when
        the result has a retry already: of two retries at once, one links."""

    @abc.abstractmethod
    def settle_followup(self, *, result_uuid: uuid.UUID) -> bool:
        """Take what a LOST result is owed (its hooks, its retry): True for the one
        transaction that takes it, False when another took it first. A retry enqueued
        in this transaction commits with the taking, so it is enqueued exactly once."""

    @abc.abstractmethod
    def insert_workflow(self, plan: WorkflowPlan) -> None:
        """Record a workflow, its jobs and their dependencies (errands.workflows); the
        jobs' requests are inserted by :meth:`insert_requests` in this transaction, those
        with dependencies due at ``HELD_UNTIL``."""

    @abc.abstractmethod
    def end_workflow_node(self, *, result_uuid: uuid.UUID) -> None:
        """A workflow job's result that no retry follows and that did not end its job
        when it was written (LOST: its follow-up enqueued no retry; DEFERRED: its
        re-enqueue was declined) ends it now, failed:
        its dependents move on. Nothing for any other result."""

    @abc.abstractmethod
    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        """Record (schedule entry key, run time) pairs; return those not recorded before.

        The pair is unique in the database, so among concurrent schedulers exactly
        one gets each occurrence back and enqueues it.
        """

    @abc.abstractmethod
    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        """Remember which request an occurrence enqueued."""


class JobStore(abc.ABC):
    """Enqueue, claim, start, complete, release, cancel, stop, rescue and prune jobs."""

    def bound_calls(self, *, seconds: float) -> None:
        """From now on, fail any call not answered within ``seconds`` instead of waiting
        on (a worker's: a connection cut off without a word must not hang it). A backend
        whose calls cannot hang that way (SQLite, memory) does nothing."""
        return None

    # -- enqueue ---------------------------------------------------------------
    @abc.abstractmethod
    def enqueue_transaction(
        self, *, connection: Any | None = None
    ) -> AbstractContextManager[EnqueueTransaction]:
        """Open a transaction for enqueueing (on ``connection`` when given).

        With ``connection=None`` the transaction commits when the block exits
        cleanly. With a caller's connection, errands joins the caller's open
        transaction (a savepoint) and never commits it.
        """

    def insert_requests(self, *, requests: Sequence[NewRequest]) -> list[JobRequest]:
        """Insert requests that need no check, committed when this returns.

        Backends may do it more cheaply than an enqueue transaction would
        (PostgreSQL: one statement, without BEGIN and COMMIT round trips).
        """
        with self.enqueue_transaction() as tx:
            return tx.insert_requests(requests)

    # -- claim, start, complete, release ---------------------------------------
    @abc.abstractmethod
    def claim(
        self,
        *,
        worker_id: uuid.UUID,
        queues: Sequence[str],
        limit: int,
        room: ClaimRoom | None = None,
    ) -> Claimed:
        """Move up to ``limit`` due requests of ``queues`` to processes owned by the worker.

        Order: priority descending, then due time, then oldest first. An empty
        ``queues`` means every queue. Paused queues are never claimed from. Jobs with
        limits, and jobs of queues ``room.queue_limits`` caps, are taken only as far
        as ``errands.backends.admission`` admits them; ``room.rooms`` caps the jobs
        taken per queue.
        """

    @abc.abstractmethod
    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        """Stamp ``started_at`` on processes whose job began running."""

    def record_progress(self, *, progress: Sequence[tuple[uuid.UUID, Progress]]) -> None:
        """Write the latest progress each running job reported (errands.progress): its
        process's progress_done, progress_total and progress_message. A backend
        without progress columns ignores it."""
        return None

    @abc.abstractmethod
    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        """Turn processes into results in one transaction, enqueueing requeues.

        Processes that no longer exist (rescued, cancelled) are skipped: the
        returned list holds only the results actually written. With
        ``aborted_only``, only those of them that are LOST or CANCELLED (whose
        ``on_aborted`` hooks must run): a worker that neither logs nor measures
        every result spares itself reading back the rest.
        """

    @abc.abstractmethod
    def completing(
        self, *, outcome: Outcome
    ) -> AbstractContextManager[tuple[JobResult | None, EnqueueTransaction]]:
        """Complete one process as :meth:`complete_many` does, but without its requeue,
        in a transaction left open for enqueueing: the process is gone, so its
        concurrency slot is free, when the block's enqueues ask ``should_enqueue`` (a
        deferral's re-enqueue). Everything commits when the block exits cleanly, nothing
        when it raises. The result is None when the process no longer exists."""

    @abc.abstractmethod
    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        """Put claimed-but-not-started processes back as pending requests."""

    # -- cancel (pending requests) and stop (running processes) ----------------
    @abc.abstractmethod
    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        """Turn a pending request into a CANCELLED result; None if it is not pending."""

    @abc.abstractmethod
    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        """Turn up to ``limit`` selected pending requests into CANCELLED results, at once.

        Like :meth:`cancel_pending`, a request claimed meanwhile is left alone.
        """

    @abc.abstractmethod
    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        """Flag a claimed process so its worker terminates it; False if no such process."""

    @abc.abstractmethod
    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        """Flag every selected process for its worker to terminate; return how many."""

    @abc.abstractmethod
    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        """Processes of this worker flagged for cancellation."""

    # -- workers: heartbeat and rescue -----------------------------------------
    @abc.abstractmethod
    def register_worker(self, *, worker: WorkerInfo) -> None: ...

    @abc.abstractmethod
    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        """Refresh the worker's beat; False if its row is gone (it was declared dead)."""

    @abc.abstractmethod
    def deregister_worker(self, *, worker_id: uuid.UUID) -> None: ...

    @abc.abstractmethod
    def rescue_stale_workers(
        self, *, timeout_seconds: float, rescuer: uuid.UUID | None = None
    ) -> list[JobResult]:
        """Convert the processes of workers silent for ``timeout_seconds`` to LOST results.

        Atomic per dead worker and exactly once among concurrent rescuers:
        the rescuer that deletes the heartbeat row converts that worker's processes.
        A worker passes its own id as ``rescuer``: it is never rescued by itself.
        """

    @abc.abstractmethod
    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        """Convert a live worker's orphaned processes (no job tracks them) to LOST results."""

    # -- prune and delete ------------------------------------------------------
    @abc.abstractmethod
    def followups(self, *, limit: int) -> list[JobResult]:
        """LOST results still owed their ``on_aborted`` hooks and, with attempts left,
        a retry, oldest first. The rescue records what is owed in the transaction that
        writes the result; any worker that can load the job's class settles it
        (:meth:`EnqueueTransaction.settle_followup`)."""

    @abc.abstractmethod
    def prune_results(
        self,
        *,
        older_than_seconds: float,
        batch_size: int = 1000,
        status: str | None = None,
        job_class: str | None = None,
        except_classes: Sequence[str] = (),
    ) -> int:
        """Delete up to ``batch_size`` results older than the cutoff; return how many.

        With ``status``: only results of that status, and none of ``except_classes``;
        with ``job_class`` (and ``status``): only that class's results of that status."""

    @abc.abstractmethod
    def prune_workflows(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        """Delete up to ``batch_size`` workflows made before the cutoff whose jobs all
        ended, with their nodes and edges (the jobs' results are pruned on their own);
        return how many."""

    @abc.abstractmethod
    def purge(self, *, older_than_seconds: float | None = None) -> int:
        """Delete results (all, or those ended before the cutoff); return how many."""

    @abc.abstractmethod
    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        """Delete up to ``limit`` selected requests or results; return how many.

        Requests vanish without a result. Processes cannot be deleted (their worker
        still runs them): ``kind=Kind.PROCESS`` raises ValueError.
        """

    # -- schedules and pauses --------------------------------------------------
    @abc.abstractmethod
    def last_occurrences(self) -> dict[str, Occurrence]:
        """The latest recorded occurrence of each schedule entry."""

    @abc.abstractmethod
    def withdraw_occurrences(self, *, keep: Sequence[str], trim_before: datetime.datetime) -> int:
        """Forget schedule entries not in ``keep``, deleting their still-pending requests
        (returns how many); trim other entries' occurrences due before ``trim_before``
        (the latest of each is kept)."""

    @abc.abstractmethod
    def pause_queue(self, *, queue: str) -> bool:
        """Stop every worker claiming from ``queue``; False if it was already paused."""

    @abc.abstractmethod
    def resume_queue(self, *, queue: str) -> bool:
        """Let workers claim from ``queue`` again; False if it was not paused."""


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Slices of ``items`` of at most ``size`` (batches kept under parameter limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def kept_results(results: list[JobResult], *, aborted_only: bool) -> list[JobResult]:
    """What ``complete_many`` returns of the results it wrote (see its ``aborted_only``)."""
    if not aborted_only:
        return results
    return [result for result in results if result.status in ABORTED_STATUSES]
