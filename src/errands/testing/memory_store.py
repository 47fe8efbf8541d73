"""The writing half of the in-memory backend: every transition of a job's life.

Each method does under the backend's lock what the SQL backends do in one
transaction (see ``backends/sqlite.py`` and ``sqlite.sql``), with the same
rows: a process that no longer exists is skipped, a claimed request is never
cancelled, a rescued worker is rescued once. Endings come from
:mod:`errands.lifecycle`; rows are built in :mod:`errands.testing.memory_rows`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from errands import expiry, lifecycle
from errands.backends.base import EnqueueTransaction, JobStore, kept_results
from errands.backends.sql.backend import LATE_MARK, late_outcome_note
from errands.backends.store import Claimed, ClaimRoom
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    Occurrence,
    Outcome,
    Progress,
    Selection,
    Status,
    WorkerInfo,
)
from errands.testing.memory_enqueue import MemoryEnqueueTransaction
from errands.testing.memory_limited import limited_admission, plain_requests
from errands.testing.memory_rows import (
    cancelled_result,
    claim_order,
    completed_result,
    ended_result,
    process_of,
    released_request,
    requeued_request,
    utcnow,
)
from errands.testing.memory_selection import selected, sort_time
from errands.testing.memory_tables import MemoryTables
from errands.testing.memory_workflows import late_success, results_written


def _ago(now: datetime.datetime, seconds: float) -> datetime.datetime:
    return now - datetime.timedelta(seconds=seconds)


class MemoryStore(MemoryTables, JobStore):
    """Enqueue, claim, complete, release, cancel, stop, rescue and prune, in memory."""

    # -- enqueue ---------------------------------------------------------------------
    @contextlib.contextmanager
    def enqueue_transaction(self, *, connection: Any | None = None) -> Iterator[EnqueueTransaction]:
        """``connection`` is accepted and ignored: there is no caller's database to join."""
        with self.lock:
            tx = MemoryEnqueueTransaction(self)
            yield tx
            tx.commit()
        if tx.staged:
            self._enqueued(list(tx.staged))  # outside the lock: it may run the jobs

    def _enqueued(self, requests: list[JobRequest]) -> None:
        """Called after each committed enqueue with its requests (a hook)."""

    # -- claim, start, complete, release ---------------------------------------------
    def claim(
        self,
        *,
        worker_id: uuid.UUID,
        queues: Sequence[str],
        limit: int,
        room: ClaimRoom | None = None,
    ) -> Claimed:
        claimed = Claimed()
        if limit <= 0:
            return claimed
        room = room or ClaimRoom()
        queue_rooms = {queue: room.rooms.get(queue) for queue in queues}
        with self.lock:
            now = utcnow()
            claimed.expired = self._expire(now)  # first, as the SQL claims do
            due = sorted(
                (
                    r
                    for r in self.requests.values()
                    if r.start_at <= now
                    and r.queue not in self.paused
                    and (not queues or r.queue in queues)
                ),
                key=claim_order,
            )
            plain = plain_requests(due, limit, room, queue_rooms)
            if len(plain) < limit:
                # Limited jobs first: each holds a slot of its keys until it ends.
                limited, admission = limited_admission(
                    self,
                    due,
                    limit=limit - len(plain),
                    room=room,
                    queue_rooms=queue_rooms,
                    now=now,
                )
                plain[:0] = limited
                claimed.retry_in = admission.retry_in
                claimed.wants_idle = admission.wants_idle
            claimed.extend(self._to_process(r, worker_id, now=now) for r in plain)
            return claimed

    def _expire(self, now: datetime.datetime) -> tuple[str, ...]:
        """Expired requests (errands.expiry) become their CANCELLED "expired" results;
        their queues."""
        expired = list(expiry.expired_requests(self.requests.values(), now))
        for request in expired:
            del self.requests[request.uuid]
        # One batch, as one statement: a held job expiring with its parent ends once.
        self._write_results([cancelled_result(r, now, expiry.EXPIRED) for r in expired], now)
        return tuple(request.queue for request in expired)

    def _to_process(
        self,
        request: JobRequest,
        worker_id: uuid.UUID,
        *,
        now: datetime.datetime,
        started_at: datetime.datetime | None = None,
    ) -> JobProcess:
        del self.requests[request.uuid]
        process = process_of(request, worker_id, now=now, started_at=started_at)
        self.processes[process.uuid] = process
        return process

    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        with self.lock:
            for process_uuid, moment in started:
                process = self.processes.get(process_uuid)
                if process is not None and process.started_at is None:  # the first stamp counts
                    self.processes[process_uuid] = dataclasses.replace(process, started_at=moment)

    def record_progress(self, *, progress: Sequence[tuple[uuid.UUID, Progress]]) -> None:
        with self.lock:
            for process_uuid, (done, total, message) in progress:
                process = self.processes.get(process_uuid)
                if process is not None:
                    self.processes[process_uuid] = dataclasses.replace(
                        process, progress_done=done, progress_total=total, progress_message=message
                    )

    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        with self.lock:
            written = [
                self._complete(self.processes.pop(o.process_uuid), o)
                for o in outcomes
                if o.process_uuid in self.processes  # rescued or cancelled meanwhile: skipped
            ]
            # Kept on their LOST results, as SqlBackend.record_late_outcomes does.
            for outcome in outcomes:
                if not any(r.process_uuid == outcome.process_uuid for r in written):
                    self._keep_late(outcome)
            self._notify()
        return kept_results(written, aborted_only=aborted_only)

    @contextlib.contextmanager
    def completing(
        self, *, outcome: Outcome
    ) -> Iterator[tuple[JobResult | None, EnqueueTransaction]]:
        """The lock held for the whole block is the transaction: the process goes and
        its result (without the requeue) is written first; a block that raises puts
        both back and commits none of its enqueues."""
        with self.lock:
            # What the result may change (its workflow's releases and cancellations
            # too), to put back if the block raises.
            saved = (dict(self.requests), list(self.results), self.workflows.copy())
            process = self.processes.pop(outcome.process_uuid, None)
            written = (
                None
                if process is None
                else self._complete(process, dataclasses.replace(outcome, requeue=None))
            )
            tx = MemoryEnqueueTransaction(self)
            try:
                yield written, tx
            except BaseException:
                if process is not None:
                    self.requests, self.results, self.workflows = saved
                    self.processes[process.uuid] = process
                raise
            tx.commit()
        if tx.staged:
            self._enqueued(list(tx.staged))

    def _keep_late(self, outcome: Outcome) -> None:
        found = [
            r
            for r in self.results
            if r.process_uuid == outcome.process_uuid and r.status == Status.LOST
        ]
        if not found or LATE_MARK in found[0].error:
            return
        result = found[0]
        succeeded = outcome.status == Status.SUCCESSFUL
        unowed = succeeded and self.owed.pop(result.uuid, None) is not None
        retry = result.retry_request_uuid
        withdrawn = succeeded and retry is not None and self.requests.pop(retry, None) is not None
        note = late_outcome_note(outcome, retry=retry, withdrawn=withdrawn, unowed=unowed)
        kept = dataclasses.replace(
            result,
            error=f"{result.error}; {note}" if result.error else note,
            started_at=result.started_at or outcome.started_at,
            retry_request_uuid=None if withdrawn else retry,
        )
        self.results = [kept if r.uuid == result.uuid else r for r in self.results]
        if succeeded and (withdrawn or unowed):  # no attempt left to end its workflow job
            late_success(self, kept, retry, utcnow())

    def _complete(self, process: JobProcess, outcome: Outcome) -> JobResult:
        """Write the result, and its retry or deferral in the same step."""
        now = utcnow()
        retry = None
        if outcome.requeue is not None:
            retry = uuid.uuid4()
            due = now + datetime.timedelta(seconds=outcome.requeue.delay_seconds)
            attempt = outcome.requeue.retry_attempt
            request = requeued_request(process, uuid=retry, attempt=attempt, due=due, now=now)
            self.requests[retry] = request
        return self._write_result(completed_result(process, outcome, now=now, retry=retry))

    def _write_result(self, result: JobResult) -> JobResult:
        self._write_results([result], result.created_at)
        return result

    def _write_results(self, results: Sequence[JobResult], now: datetime.datetime) -> None:
        """Every result is written here, so that each moves its workflow as the SQL
        backends' triggers do (memory_workflows), in the same step."""
        self.results.extend(results)
        results_written(self, results, now)

    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        with self.lock:
            unstarted = [
                self.processes[key]
                for key in dict.fromkeys(process_uuids)
                if key in self.processes and self.processes[key].started_at is None
            ]
            for process in unstarted:
                del self.processes[process.uuid]
                self.requests[process.request_uuid] = released_request(process)
            if unstarted:
                self._notify()
            return len(unstarted)

    # -- cancel (pending requests) and stop (running processes) ----------------------
    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        with self.lock:
            request = self.requests.pop(uuid, None)
            if request is None:
                return None  # claimed (or ended) meanwhile: left to its worker
            result = self._write_result(cancelled_result(request, utcnow()))
            self._notify()
            return result

    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        """Soonest due first, as ``delete_selected_requests_returning`` picks them."""
        with self.lock:
            now = utcnow()
            chosen = self._selected_requests(selection, now)[: max(limit, 0)]
            for request in chosen:
                del self.requests[request.uuid]
            # One batch, as one statement: a held job cancelled with its parent ends
            # once, cancelled, rather than again as the parent's dependent.
            results = [cancelled_result(r, now) for r in chosen]
            self._write_results(results, now)
            if results:
                self._notify()
            return results

    def _selected_requests(self, selection: Selection, now: datetime.datetime) -> list[JobRequest]:
        chosen = [r for r in self.requests.values() if selected(r, selection, now)]
        return sorted(chosen, key=lambda r: (r.start_at, r.uuid))

    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        """Flag a process found by its own or its request's uuid.

        Only a worker claiming from this backend reads the flag: the jobs the
        testing helpers run in-process finish before anyone could flag them.
        """
        with self.lock:
            return self._flag(lambda p: uuid in (p.uuid, p.request_uuid)) > 0

    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        now = utcnow()
        with self.lock:
            return self._flag(lambda p: selected(p, selection, now))

    def _flag(self, chosen: Callable[[JobProcess], bool]) -> int:
        """Set ``cancel_requested`` on the chosen processes; how many (flagged before too,
        as an SQL UPDATE counts every row it matches)."""
        matched = [p for p in self.processes.values() if chosen(p)]
        for process in matched:
            self.processes[process.uuid] = dataclasses.replace(process, cancel_requested=True)
        return len(matched)

    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        with self.lock:
            return [
                p.uuid
                for p in self.processes.values()
                if p.worker_id == worker_id and p.cancel_requested
            ]

    # -- workers: heartbeat and rescue -----------------------------------------------
    def register_worker(self, *, worker: WorkerInfo) -> None:
        with self.lock:
            self.heartbeats.register(worker, utcnow())

    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        with self.lock:
            return self.heartbeats.beat(worker_id, utcnow())

    def deregister_worker(self, *, worker_id: uuid.UUID) -> None:
        with self.lock:
            self.heartbeats.remove(worker_id)

    def rescue_stale_workers(
        self, *, timeout_seconds: float, rescuer: uuid.UUID | None = None
    ) -> list[JobResult]:
        """LOST results for the processes of silent workers (their rows are taken
        first, under the lock: exactly once), then for processes claimed over the
        timeout ago by workers that have no row at all."""
        with self.lock:
            now = utcnow()
            lost: list[JobResult] = []
            for worker_id in self.heartbeats.take_stale(now, timeout_seconds, spare=rescuer):
                ending = lifecycle.lost_with_worker(worker_id, timeout_seconds)
                lost += self._lose(self._processes_of(worker_id), ending, now)
            claimed_before = _ago(now, timeout_seconds)
            for worker_id in self._workers_without_row(claimed_before):
                if worker_id == rescuer:
                    continue
                ending = lifecycle.lost_without_heartbeat_row(worker_id)
                old = [p for p in self._processes_of(worker_id) if p.created_at < claimed_before]
                lost += self._lose(old, ending, now)
            return lost

    def _processes_of(self, worker_id: uuid.UUID) -> list[JobProcess]:
        return [p for p in self.processes.values() if p.worker_id == worker_id]

    def _workers_without_row(self, claimed_before: datetime.datetime) -> list[uuid.UUID]:
        """Workers with processes claimed before the cutoff but no heartbeat row: a live
        worker whose row was taken registers again well within the timeout."""
        owners = {p.worker_id for p in self.processes.values() if p.created_at < claimed_before}
        return sorted(w for w in owners if w not in self.heartbeats.rows)

    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        listed = set(process_uuids)
        with self.lock:
            orphans = [p for p in self._processes_of(worker_id) if p.uuid in listed]
            return self._lose(orphans, lifecycle.orphaned(worker_id), utcnow())

    def _lose(
        self, processes: list[JobProcess], ending: lifecycle.Ending, now: datetime.datetime
    ) -> list[JobResult]:
        """Delete the processes and write their ``ending`` (no requeue: the rescuing
        worker decides retries)."""
        for process in processes:
            del self.processes[process.uuid]
        results = [ended_result(p, ending, now) for p in processes]
        self._write_results(results, now)  # LOST: no node ends (the follow-up decides)
        for result in results:  # owed its hooks and retry, as in the same transaction
            self.owed[result.uuid] = now
        if results:
            self._notify()
        return results

    # -- prune and delete ------------------------------------------------------------
    def prune_results(
        self,
        *,
        older_than_seconds: float,
        batch_size: int = 1000,
        status: str | None = None,
        job_class: str | None = None,
        except_classes: Sequence[str] = (),
    ) -> int:
        """Oldest first, at most ``batch_size``, as the SQL backends' bounded batches."""
        if job_class is not None and status is None:
            raise ValueError("prune_results(job_class=) needs a status")

        def doomed(r: JobResult) -> bool:
            if status is not None and r.status != status:
                return False
            if job_class is not None:
                return r.job_class == job_class
            return r.job_class not in except_classes

        with self.lock:
            cutoff = _ago(utcnow(), older_than_seconds)
            old = sorted(
                (r for r in self.results if r.ended_at < cutoff and doomed(r)), key=sort_time
            )
            return self._drop_results(old[: max(batch_size, 0)])

    def prune_workflows(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        with self.lock:
            return self.workflows.prune(_ago(utcnow(), older_than_seconds), batch_size)

    def purge(self, *, older_than_seconds: float | None = None) -> int:
        with self.lock:
            if older_than_seconds is None:
                return self._drop_results(self.results)
            cutoff = _ago(utcnow(), older_than_seconds)
            return self._drop_results([r for r in self.results if r.ended_at < cutoff])

    def _drop_results(self, doomed: Sequence[JobResult]) -> int:
        gone = {r.uuid for r in doomed}
        self.results = [r for r in self.results if r.uuid not in gone]
        for result_uuid in gone:  # nothing is owed on a result that is gone
            self.owed.pop(result_uuid, None)
        return len(gone)

    def followups(self, *, limit: int) -> list[JobResult]:
        with self.lock:
            by_uuid = {r.uuid: r for r in self.results}
            owed = [by_uuid[u] for u in self.owed if u in by_uuid]
        return owed[: max(limit, 0)]

    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        """Requests soonest due first, results oldest first (SQL leaves the order open)."""
        if kind is Kind.PROCESS:
            raise ValueError("processes cannot be deleted: cancel them instead")
        with self.lock:
            now = utcnow()
            if kind is Kind.REQUEST:
                doomed = self._selected_requests(selection, now)[: max(limit, 0)]
                for request in doomed:
                    del self.requests[request.uuid]
                return len(doomed)
            chosen = sorted((r for r in self.results if selected(r, selection, now)), key=sort_time)
            return self._drop_results(chosen[: max(limit, 0)])

    # -- schedules and pauses --------------------------------------------------------
    def last_occurrences(self) -> dict[str, Occurrence]:
        with self.lock:
            ordered = sorted(self.occurrences.items(), key=lambda item: item[0])
        # Later run times overwrite earlier ones: the latest of each entry remains.
        return {
            key: Occurrence(entry_key=key, run_at=run_at, request_uuid=request_uuid)
            for (key, run_at), request_uuid in ordered
        }

    def withdraw_occurrences(self, *, keep: Sequence[str], trim_before: datetime.datetime) -> int:
        kept = set(keep)
        with self.lock:
            forgotten = {o: r for o, r in self.occurrences.items() if o[0] not in kept}
            withdrawn = {r for r in forgotten.values() if r is not None and r in self.requests}
            for request_uuid in withdrawn:
                del self.requests[request_uuid]  # still pending: never runs now
            latest = {key: o.run_at for key, o in self.last_occurrences().items()}
            self.occurrences = {
                (key, run_at): request_uuid
                for (key, run_at), request_uuid in self.occurrences.items()
                if key in kept and (run_at >= trim_before or run_at >= latest[key])
            }
            return len(withdrawn)

    def pause_queue(self, *, queue: str) -> bool:
        with self.lock:
            paused = queue not in self.paused
            self.paused.add(queue)
            return paused

    def resume_queue(self, *, queue: str) -> bool:
        with self.lock:
            resumed = queue in self.paused
            self.paused.discard(queue)
            if resumed:
                self._notify()  # its requests may be claimed again
            return resumed
