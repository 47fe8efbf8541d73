"""The seam between errands and a database: a job's life, named by its transitions.

The jobs API and the worker talk only to :class:`Backend`; PostgreSQL and SQLite
implement it (``postgres.py`` and ``sqlite.py``, each with its SQL in a ``.sql``
file beside it). State machine of one job::

    enqueue -> JobRequest --claim--> JobProcess --complete--> JobResult
                  ^   ^                 |  |  \\--rescue (worker dead)--> JobResult(LOST)
                  |   '----release------'  '--cancel (pending)--> JobResult(CANCELLED)
                  '---- requeue (retry/defer, same transaction as the result)

Guarantees every implementation keeps:

* a request is claimed by at most one worker (claims never overlap);
* a process produces at most one result: completing or rescuing a process that
  no longer exists writes nothing (``complete_many`` skips it);
* due times and heartbeat staleness are judged by the database clock.
"""

from __future__ import annotations

import abc
import datetime
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
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
    PageSpec,
    QueueStats,
    Selection,
    Stats,
    Throughput,
    WorkerInfo,
)

ConcurrencySlot = tuple[str, str]  # (job_class, concurrency_key)

#: The tables holding errands' data, as the migrations create them (besides
#: ``errands_schema``, which records the schema version). Tests and the benchmark
#: empty these between runs.
TABLES = (
    "errands_request",
    "errands_process",
    "errands_result",
    "errands_worker",
    "errands_occurrence",
    "errands_paused_queue",
    "errands_secret",
    "errands_dashboard_session",
)


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
    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> None:
        """Record on a result which request retries it."""

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


class Listener(abc.ABC):
    """A running wake-up source; stop it with :meth:`close`."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Backend(abc.ABC):
    """A database that stores errands' requests, processes, results and workers."""

    #: "postgresql" or "sqlite"
    name: str
    url: str

    # -- schema -------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Create or upgrade the schema; return the versions applied. Safe to run concurrently."""

    @abc.abstractmethod
    def migration_sql(self) -> str:
        """The SQL ``migrate`` would run on an empty database, for external tools."""

    @abc.abstractmethod
    def schema_version(self) -> int | None:
        """The recorded schema version, or None when errands' tables do not exist."""

    @abc.abstractmethod
    def latest_schema_version(self) -> int:
        """The version this release of errands needs."""

    # -- enqueue ------------------------------------------------------------
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

    # -- worker lifecycle ----------------------------------------------------
    @abc.abstractmethod
    def register_worker(self, *, worker: WorkerInfo) -> None: ...

    @abc.abstractmethod
    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        """Refresh the worker's beat; False if its row is gone (it was declared dead)."""

    @abc.abstractmethod
    def deregister_worker(self, *, worker_id: uuid.UUID) -> None: ...

    @abc.abstractmethod
    def claim(self, *, worker_id: uuid.UUID, queues: Sequence[str], limit: int) -> list[JobProcess]:
        """Move up to ``limit`` due requests of ``queues`` to processes owned by the worker.

        One statement. Order: priority descending, then due time, then oldest first.
        An empty ``queues`` means every queue. Paused queues are never claimed from.
        """

    @abc.abstractmethod
    def mark_started(self, *, started: Sequence[tuple[uuid.UUID, datetime.datetime]]) -> None:
        """Stamp ``started_at`` on processes whose job began running."""

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
    def release(self, *, process_uuids: Sequence[uuid.UUID]) -> int:
        """Put claimed-but-not-started processes back as pending requests."""

    @abc.abstractmethod
    def rescue_stale_workers(self, *, timeout_seconds: float) -> list[JobResult]:
        """Convert the processes of workers silent for ``timeout_seconds`` to LOST results.

        Atomic per dead worker and exactly once among concurrent rescuers:
        the rescuer that deletes the heartbeat row converts that worker's processes.
        """

    @abc.abstractmethod
    def lose_processes(
        self, *, worker_id: uuid.UUID, process_uuids: Sequence[uuid.UUID]
    ) -> list[JobResult]:
        """Convert a live worker's orphaned processes (no job tracks them) to LOST results."""

    @abc.abstractmethod
    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]: ...

    @abc.abstractmethod
    def prune_results(self, *, older_than_seconds: float, batch_size: int = 1000) -> int:
        """Delete up to ``batch_size`` results older than the cutoff; return how many."""

    @abc.abstractmethod
    def listen(self, *, on_wake: Callable[[], None]) -> Listener:
        """Call ``on_wake`` (from a background thread) soon after new work may be due."""

    def listen_results(
        self, *, on_results: Callable[[frozenset[uuid.UUID] | None], None]
    ) -> Listener:
        """Call ``on_results`` (from a background thread) soon after results are written,
        with the request uuids of the new results, or None when unknown ("look again").

        Used by ``errands.wait_for_result``. The listener is subscribed when this
        returns. This default relays every wake-up of :meth:`listen` as None, which
        suits backends whose ``listen`` fires on any commit (SQLite).
        """
        return self.listen(on_wake=lambda: on_results(None))

    # -- schedules and queues --------------------------------------------------
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

    @abc.abstractmethod
    def paused_queues(self) -> list[str]: ...

    # -- inspecting and operating --------------------------------------------
    @abc.abstractmethod
    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        """Selected requests in the order workers claim them (priority, then due time)."""

    @abc.abstractmethod
    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        """Look a uuid up among requests, processes and results (request uuids of results too)."""

    @abc.abstractmethod
    def cancel_pending(self, *, uuid: uuid.UUID) -> JobResult | None:
        """Turn a pending request into a CANCELLED result; None if it is not pending."""

    @abc.abstractmethod
    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        """Flag a claimed process so its worker terminates it; False if no such process."""

    @abc.abstractmethod
    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        """Processes of this worker flagged for cancellation."""

    @abc.abstractmethod
    def purge(self, *, older_than_seconds: float | None = None) -> int:
        """Delete results (all, or those ended before the cutoff); return how many."""

    @abc.abstractmethod
    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        """Heartbeat rows, each marked stale when silent for ``timeout_seconds``."""

    @abc.abstractmethod
    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats: ...

    # -- pages, counts and bulk operations (the dashboard) ------------------------------
    @abc.abstractmethod
    def queue_stats(self) -> list[QueueStats]:
        """Per queue: pending, scheduled and running jobs (``stats`` without the history)."""

    @abc.abstractmethod
    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        """Selected requests due soonest first (``start_at``, then uuid), after ``page.after``."""

    @abc.abstractmethod
    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        """Selected processes claimed longest ago first (``created_at``, then uuid)."""

    @abc.abstractmethod
    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        """Selected results ended most recently first (``ended_at``, then uuid)."""

    @abc.abstractmethod
    def count(self, *, kind: Kind, selection: Selection) -> int:
        """How many rows of the table ``kind`` the selection covers."""

    @abc.abstractmethod
    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        """Results ended at or after ``since``, counted per status and time bucket.

        Buckets start at whole multiples of ``bucket_seconds`` since the Unix epoch;
        empty buckets are left out. Ordered by bucket, then status.
        """

    @abc.abstractmethod
    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        """The result whose retry or deferral enqueued this request, if any."""

    @abc.abstractmethod
    def cancel_pending_selected(self, *, selection: Selection, limit: int) -> list[JobResult]:
        """Turn up to ``limit`` selected pending requests into CANCELLED results, at once.

        Like :meth:`cancel_pending`, a request claimed meanwhile is left alone.
        """

    @abc.abstractmethod
    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        """Flag every selected process for its worker to terminate; return how many."""

    @abc.abstractmethod
    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        """Delete up to ``limit`` selected requests or results; return how many.

        Requests vanish without a result. Processes cannot be deleted (their worker
        still runs them): ``kind=Kind.PROCESS`` raises ValueError.
        """

    # -- the dashboard's secret and sessions ---------------------------------------------
    @abc.abstractmethod
    def shared_secret(self, *, name: str, candidate: str) -> str:
        """The secret stored as ``name``, storing ``candidate`` first if there is none.

        Race-free: processes asking at once all get the one value that was stored.
        """

    @abc.abstractmethod
    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        """Record a login valid for ``lifetime_seconds`` (database clock); forget expired ones."""

    @abc.abstractmethod
    def dashboard_session_active(self, *, session_id: str) -> bool:
        """True while the login was recorded, not ended and not expired."""

    @abc.abstractmethod
    def end_dashboard_session(self, *, session_id: str) -> None:
        """Forget a login (logging out): its cookie is refused from now on."""

    @abc.abstractmethod
    def now(self) -> datetime.datetime:
        """The database clock."""

    @abc.abstractmethod
    def close(self) -> None: ...


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Slices of ``items`` of at most ``size`` (batches kept under parameter limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def kept_results(results: list[JobResult], *, aborted_only: bool) -> list[JobResult]:
    """What ``complete_many`` returns of the results it wrote (see its ``aborted_only``)."""
    if not aborted_only:
        return results
    return [result for result in results if result.status in ABORTED_STATUSES]
