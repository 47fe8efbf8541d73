"""An in-memory backend for tests: requests, processes and results in dictionaries.

It implements the parts of :class:`~errands.backends.base.Backend` that enqueueing,
inspecting and running jobs in-process need. Jobs run through
:func:`errands.worker.execution.execute`, exactly as in a worker's child, so ERRORED,
DEFERRED and retries behave the same; timeouts are not enforced (there is no
child process to kill). Operations that only a real worker performs (heartbeats,
rescues) raise ``NotImplementedError`` naming the mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from errands import lifecycle, settings
from errands.backends.base import (
    Backend,
    ConcurrencySlot,
    EnqueueTransaction,
    Listener,
    kept_results,
)
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    NewRequest,
    Occurrence,
    Outcome,
    PageSpec,
    QueueStats,
    Selection,
    Stats,
    Throughput,
    WorkerInfo,
)
from errands.testing.memory_selection import page_of, selected
from errands.worker import execution

#: The worker id stamped on processes run in-process by the test helpers.
TEST_WORKER_ID = uuid.UUID(int=0)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class RunawayJobs(RuntimeError):
    """Running captured jobs never emptied the queue (a job keeps enqueueing itself)."""


class MemoryEnqueueTransaction(EnqueueTransaction):
    """Stages inserts; they become visible when the transaction block exits cleanly."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.staged: list[JobRequest] = []
        self.retry_links: list[tuple[uuid.UUID, uuid.UUID]] = []
        self.occurrences: dict[tuple[str, datetime.datetime], uuid.UUID | None] = {}

    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        """Nothing to do: the backend's lock is held for the whole transaction."""

    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        jobs: list[JobRequest | JobProcess] = [
            *self.backend.requests.values(),
            *self.backend.processes.values(),
            *self.staged,
        ]
        used = {(job.job_class, job.concurrency_key) for job in jobs}
        return {slot for slot in slots if slot in used}

    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        requests = [*self.backend.requests.values(), *self.staged]
        return [r for r in requests if (r.job_class, r.concurrency_key) == slot]

    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        processes = self.backend.processes.values()
        return [p for p in processes if (p.job_class, p.concurrency_key) == slot]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        now = utcnow()
        inserted = [_request_of(new, now) for new in requests]
        self.staged.extend(inserted)
        return inserted

    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> None:
        self.retry_links.append((result_uuid, request_uuid))

    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        fresh = {o for o in occurrences if o not in self.backend.occurrences}
        self.occurrences.update(dict.fromkeys(fresh))
        return fresh

    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        self.occurrences[(key, run_at)] = request_uuid


def _request_of(new: NewRequest, now: datetime.datetime) -> JobRequest:
    start_at = new.start_at or now + datetime.timedelta(seconds=new.delay_seconds)
    return JobRequest(
        uuid=new.uuid,
        created_at=now,
        start_at=start_at,
        job_class=new.job_class,
        parameters=new.parameters,
        queue=new.queue,
        priority=new.priority,
        retries=new.retries,
        retry_attempt=new.retry_attempt,
        concurrency_key=new.concurrency_key,
        timeout=new.timeout,
        source=new.source,
        trace_id=new.trace_id,
        span_id=new.span_id,
    )


def _claim_order(request: JobRequest) -> tuple[int, datetime.datetime, datetime.datetime]:
    return (-request.priority, request.start_at, request.created_at)


class MemoryBackend(Backend):
    """errands' tables as dictionaries in this process (see the module docstring).

    ``mode`` names the helper that owns it ("capture" or "immediate") for messages.
    After each committed enqueue, ``on_enqueued`` is called with the new requests
    (immediate mode runs them there).
    """

    name = "memory"

    def __init__(
        self,
        *,
        mode: str,
        on_enqueued: Callable[[list[JobRequest]], None] | None = None,
    ) -> None:
        self.mode = mode
        self.url = f"memory://{mode}"
        self.on_enqueued = on_enqueued
        self.lock = threading.RLock()
        self.requests: dict[uuid.UUID, JobRequest] = {}
        self.processes: dict[uuid.UUID, JobProcess] = {}
        self.results: list[JobResult] = []
        #: Every request enqueued (not retries), in order, even after it ran.
        self.history: list[JobRequest] = []
        self.occurrences: dict[tuple[str, datetime.datetime], uuid.UUID | None] = {}
        self.paused: set[str] = set()
        self.secrets: dict[str, str] = {}
        self.dashboard_sessions: dict[str, datetime.datetime] = {}  # id -> expires at
        self._listeners: list[_MemoryListener] = []

    def _unsupported(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{what} is not available in errands.testing's {self.mode} mode (an in-memory "
            "backend); use the errands_database and errands_worker fixtures for a real "
            "database and worker"
        )

    # -- schema: nothing to create ---------------------------------------------------
    def migrate(self) -> list[int]:
        return []

    def migration_sql(self) -> str:
        raise self._unsupported("migration_sql()")

    def schema_version(self) -> int | None:
        return self.latest_schema_version()

    def latest_schema_version(self) -> int:
        return 0

    # -- enqueue -----------------------------------------------------------------------
    @contextlib.contextmanager
    def enqueue_transaction(self, *, connection: Any | None = None) -> Iterator[EnqueueTransaction]:
        """``connection`` is accepted and ignored: captured jobs are recorded at once."""
        with self.lock:
            tx = MemoryEnqueueTransaction(self)
            yield tx
            self._commit(tx)
        if tx.staged and self.on_enqueued is not None:
            self.on_enqueued(list(tx.staged))

    def _commit(self, tx: MemoryEnqueueTransaction) -> None:
        for request in tx.staged:
            self.requests[request.uuid] = request
        self.history.extend(tx.staged)
        self.occurrences.update(tx.occurrences)
        links = dict(tx.retry_links)
        self.results = [
            dataclasses.replace(r, retry_request_uuid=links[r.uuid]) if r.uuid in links else r
            for r in self.results
        ]
        self._notify()

    # -- running jobs in-process -------------------------------------------------------
    def run_next(self, *, include_delayed: bool) -> JobResult | None:
        """Claim the first request in claim order, run it here, store its result.

        None when nothing is pending (or, without ``include_delayed``, nothing is due).
        """
        process = self._claim_one(include_delayed=include_delayed)
        if process is None:
            return None
        assignment = execution.Assignment(
            process_uuid=process.uuid,
            job_class=process.job_class,
            parameters=process.parameters,
            retries=process.retries,
            retry_attempt=process.retry_attempt,
        )
        handler = execution.build_handler(settings.current().middleware)
        outcome = execution.execute(assignment, handler)
        results = self.complete_many(outcomes=[outcome])
        return results[0] if results else None

    def run_all(self, *, include_delayed: bool, max_jobs: int) -> list[JobResult]:
        """Run pending requests (and those they enqueue, and retries) until none is left."""
        results: list[JobResult] = []
        while (result := self.run_next(include_delayed=include_delayed)) is not None:
            results.append(result)
            if len(results) >= max_jobs and self.requests:
                raise RunawayJobs(
                    f"ran {len(results)} jobs and {len(self.requests)} are still pending "
                    f"(next: {next(iter(self.requests.values())).job_class}); does a job "
                    "enqueue itself, or defer forever? Raise max_jobs if this is expected"
                )
        return results

    def _claim_one(self, *, include_delayed: bool) -> JobProcess | None:
        with self.lock:
            now = utcnow()
            candidates = [
                r
                for r in self.requests.values()
                if r.queue not in self.paused and (include_delayed or r.start_at <= now)
            ]
            if not candidates:
                return None
            request = min(candidates, key=_claim_order)
            return self._to_process(request, TEST_WORKER_ID, started_at=now)

    def _to_process(
        self, request: JobRequest, worker_id: uuid.UUID, *, started_at: datetime.datetime | None
    ) -> JobProcess:
        del self.requests[request.uuid]
        shared = {f.name for f in dataclasses.fields(JobProcess)}
        fields = {
            f.name: getattr(request, f.name)
            for f in dataclasses.fields(JobRequest)
            if f.name in shared
        }
        fields.update(
            uuid=uuid.uuid4(),
            request_uuid=request.uuid,
            requested_at=request.created_at,
            created_at=utcnow(),
            started_at=started_at,
            worker_id=worker_id,
        )
        process = JobProcess(**fields)
        self.processes[process.uuid] = process
        return process

    # -- worker lifecycle ----------------------------------------------------------------
    def register_worker(self, *, worker: WorkerInfo) -> None:
        raise self._unsupported("a worker")

    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        raise self._unsupported("a worker")

    def deregister_worker(self, *, worker_id: uuid.UUID) -> None:
        raise self._unsupported("a worker")

    def claim(self, *, worker_id: uuid.UUID, queues: Sequence[str], limit: int) -> list[JobProcess]:
        with self.lock:
            now = utcnow()
            due = sorted(
                (
                    r
                    for r in self.requests.values()
                    if r.start_at <= now
                    and r.queue not in self.paused
                    and (not queues or r.queue in queues)
                ),
                key=_claim_order,
            )
            return [self._to_process(r, worker_id, started_at=None) for r in due[:limit]]

    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        with self.lock:
            for process_uuid, moment in started:
                process = self.processes.get(process_uuid)
                if process is not None and process.started_at is None:
                    self.processes[process_uuid] = dataclasses.replace(process, started_at=moment)

    def complete_many(
        self, *, outcomes: Sequence[Outcome], aborted_only: bool = False
    ) -> list[JobResult]:
        with self.lock:
            written = [
                self._complete(self.processes.pop(o.process_uuid), o)
                for o in outcomes
                if o.process_uuid in self.processes
            ]
            self._notify()
            return kept_results(written, aborted_only=aborted_only)

    def _complete(self, process: JobProcess, outcome: Outcome) -> JobResult:
        now = utcnow()
        retry_uuid = uuid.uuid4() if outcome.requeue is not None else None
        result = self._result_of(
            process,
            status=outcome.status,
            started_at=outcome.started_at or process.started_at,
            ended_at=outcome.ended_at,
            error_type=outcome.error_type,
            error=outcome.error,
            traceback=outcome.traceback,
            return_value=outcome.return_value,
            retry_request_uuid=retry_uuid,
        )
        if outcome.requeue is not None and retry_uuid is not None:
            delay = datetime.timedelta(seconds=outcome.requeue.delay_seconds)
            self.requests[retry_uuid] = dataclasses.replace(
                _as_request(process, now),
                uuid=retry_uuid,
                start_at=now + delay,
                retry_attempt=outcome.requeue.retry_attempt,
            )
        return result

    def _result_of(self, job: JobProcess, **columns: Any) -> JobResult:
        shared = {
            f.name: getattr(job, f.name)
            for f in dataclasses.fields(JobResult)
            if hasattr(job, f.name) and f.name not in columns
        }
        shared.update(uuid=uuid.uuid4(), process_uuid=job.uuid, created_at=utcnow())
        result = JobResult(**{**shared, **columns})
        self.results.append(result)
        return result

    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        raise self._unsupported("release()")

    def rescue_stale_workers(self, *, timeout_seconds: float) -> list[JobResult]:
        raise self._unsupported("rescuing workers")

    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        raise self._unsupported("lose_processes()")

    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]:
        with self.lock:
            return [p for p in self.processes.values() if p.worker_id == worker_id]

    def prune_results(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        return self.purge(older_than_seconds=older_than_seconds)

    def listen(self, *, on_wake: Callable[[], None]) -> Listener:
        listener = _MemoryListener(self, on_wake)
        with self.lock:
            self._listeners.append(listener)
        return listener

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener.on_wake()

    # -- schedules and queues ------------------------------------------------------------
    def last_occurrences(self) -> dict[str, Occurrence]:
        latest: dict[str, Occurrence] = {}
        for (key, run_at), request_uuid in sorted(self.occurrences.items(), key=lambda i: i[0]):
            latest[key] = Occurrence(entry_key=key, run_at=run_at, request_uuid=request_uuid)
        return latest

    def withdraw_occurrences(self, *, keep: Sequence[str], trim_before: datetime.datetime) -> int:
        raise self._unsupported("schedules")

    def pause_queue(self, *, queue: str) -> bool:
        with self.lock:
            paused = queue not in self.paused
            self.paused.add(queue)
            return paused

    def resume_queue(self, *, queue: str) -> bool:
        with self.lock:
            resumed = queue in self.paused
            self.paused.discard(queue)
            return resumed

    def paused_queues(self) -> list[str]:
        return sorted(self.paused)

    # -- inspecting and operating -----------------------------------------------------------
    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        now = utcnow()
        with self.lock:
            found = sorted(self.requests.values(), key=_claim_order)
        return [r for r in found if selected(r, selection, now)][:limit]

    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        with self.lock:
            if uuid in self.requests:
                return self.requests[uuid]
            for process in self.processes.values():
                if uuid in (process.uuid, process.request_uuid):
                    return process
            own = [r for r in self.results if uuid in (r.uuid, r.process_uuid)]
            of_request = [r for r in self.results if r.request_uuid == uuid]
            found = own or of_request
            return found[-1] if found else None

    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        with self.lock:
            request = self.requests.get(uuid)
            if request is None:
                return None
            process = self._to_process(request, TEST_WORKER_ID, started_at=None)
            del self.processes[process.uuid]
            result = self._result_of(
                process,
                status=lifecycle.CANCELLED_PENDING.status,
                started_at=None,
                ended_at=utcnow(),
                worker_id=None,
                error_type=lifecycle.CANCELLED_PENDING.error_type,
                error=lifecycle.CANCELLED_PENDING.error,
            )
            self._notify()
            return result

    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        return False  # processes run to completion in-process; nothing to interrupt

    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        return []

    def purge(self, *, older_than_seconds: float | None = None) -> int:
        with self.lock:
            if older_than_seconds is None:
                kept: list[JobResult] = []
            else:
                cutoff = utcnow() - datetime.timedelta(seconds=older_than_seconds)
                kept = [r for r in self.results if r.ended_at > cutoff]
            purged = len(self.results) - len(kept)
            self.results = kept
            return purged

    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        return []

    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats:
        with self.lock:
            now = utcnow()
            jobs: list[JobRequest | JobProcess] = [
                *self.requests.values(),
                *self.processes.values(),
            ]
            queues = sorted({job.queue for job in jobs})
            by_status: dict[str, int] = {}
            for result in self.results:
                by_status[str(result.status)] = by_status.get(str(result.status), 0) + 1
            return Stats(
                queues=[self._queue_stats(q, now) for q in queues],
                results_by_status=by_status,
                workers_active=0,
                workers_stale=0,
            )

    def queue_stats(self) -> list[QueueStats]:
        return self.stats(heartbeat_timeout_seconds=0).queues

    def _queue_stats(self, queue: str, now: datetime.datetime) -> QueueStats:
        requests = [r for r in self.requests.values() if r.queue == queue]
        due = [r for r in requests if r.start_at <= now]
        oldest = min((r.start_at for r in due), default=None)
        return QueueStats(
            queue=queue,
            pending=len(due),
            scheduled=len(requests) - len(due),
            running=sum(1 for p in self.processes.values() if p.queue == queue),
            oldest_pending_age=None if oldest is None else (now - oldest).total_seconds(),
        )

    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        with self.lock:
            return next((r for r in self.results if r.retry_request_uuid == request_uuid), None)

    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        with self.lock:
            return page_of(list(self.requests.values()), selection, page, utcnow())

    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        with self.lock:
            return page_of(list(self.processes.values()), selection, page, utcnow())

    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        with self.lock:
            return page_of(list(self.results), selection, page, utcnow())

    def count(self, *, kind: Kind, selection: Selection) -> int:
        now = utcnow()
        with self.lock:
            rows: list[JobRequest | JobProcess | JobResult]
            if kind is Kind.REQUEST:
                rows = [*self.requests.values()]
            elif kind is Kind.PROCESS:
                rows = [*self.processes.values()]
            else:
                rows = [*self.results]
        return sum(1 for row in rows if selected(row, selection, now))

    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        raise self._unsupported("throughput()")

    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        raise self._unsupported("cancel_pending_selected()")

    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        raise self._unsupported("flag_to_stop_selected()")

    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        raise self._unsupported("delete()")

    # -- the dashboard's secret and sessions ---------------------------------------------
    def shared_secret(self, *, name: str, candidate: str) -> str:
        with self.lock:
            return self.secrets.setdefault(name, candidate)

    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        now = utcnow()
        with self.lock:
            live = {k: at for k, at in self.dashboard_sessions.items() if at > now}
            live[session_id] = now + datetime.timedelta(seconds=lifetime_seconds)
            self.dashboard_sessions = live

    def dashboard_session_active(self, *, session_id: str) -> bool:
        with self.lock:
            expires = self.dashboard_sessions.get(session_id)
        return expires is not None and expires > utcnow()

    def end_dashboard_session(self, *, session_id: str) -> None:
        with self.lock:
            self.dashboard_sessions.pop(session_id, None)

    def now(self) -> datetime.datetime:
        return utcnow()

    def close(self) -> None:
        with self.lock:
            self._listeners.clear()


def _as_request(process: JobProcess, now: datetime.datetime) -> JobRequest:
    fields = {
        f.name: getattr(process, f.name)
        for f in dataclasses.fields(JobRequest)
        if f.name not in ("created_at", "start_at")
    }
    return JobRequest(**fields, created_at=now, start_at=now)


class _MemoryListener(Listener):
    """Calls ``on_wake`` synchronously whenever the backend's contents change."""

    def __init__(self, backend: MemoryBackend, on_wake: Callable[[], None]) -> None:
        self.backend = backend
        self.on_wake = on_wake

    def close(self) -> None:
        with self.backend.lock, contextlib.suppress(ValueError):
            self.backend._listeners.remove(self)
