"""Outcomes and start stamps, buffered in the parent and written in batches.

The parent owns the database: children report outcomes, and the parent writes
them many at a time. A ``Batch`` is one round of writes: stamp the jobs that
began, write outcomes, read cancellation flags. A ``DatabaseThread`` runs one
batch at a time on its own thread and connection, so that the loop keeps
feeding its children meanwhile, and a claim (``intake``) never waits for a
write. ``Recorder`` holds what is not written yet and decides when a batch is due:

* an outcome waits at most ``FLUSH_INTERVAL`` to be batched with others, or
  none once ``FLUSH_SIZE`` wait, or none when its job had limits (its end frees a
  slot of its keys that jobs held back on any worker are waiting for);
* cancellation flags are read every ``CANCEL_CHECK_INTERVAL`` while jobs are
  in hand, and buffered writes ride along.

A batch owns what it writes until it is applied; what a failed batch did not
write goes back to the front of the buffer, and is written on the next try (a
repeat writes nothing twice: completing a process that is gone is skipped).
Deferrals whose re-enqueue must ask the job's ``should_enqueue`` are written
after the other outcomes, each in its own transaction (``deferrals``).
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from errands.backends import Backend
from errands.models import (
    ABORTED_STATUSES,
    JobProcess,
    JobResult,
    Outcome,
    Progress,
    uuid_from_bytes,
)
from errands.worker.deferrals import is_deferral, split, write_deferral

FLUSH_INTERVAL = 0.02  # seconds an outcome may wait to be batched with others
FLUSH_SIZE = 500  # flush at once when this many outcomes wait
CANCEL_CHECK_INTERVAL = 1.0  # seconds between looks for cancellation requests


@dataclass
class Batch:
    """One round of the worker's routine writes: stamp the jobs that began, write
    outcomes, read cancellation flags. A failed step stops the steps after it;
    ``error`` tells why, and the fields of the steps that did not happen stay None."""

    started: list[tuple[uuid.UUID, datetime.datetime]]
    outcomes: list[Outcome]
    check_cancel: bool
    # Read back only the LOST and CANCELLED results (see Backend.complete_many).
    aborted_only: bool = False
    marked: bool = False
    results: list[JobResult] | None = None
    cancel_flagged: set[uuid.UUID] | None = None
    error: Exception | None = None
    # Outcomes not written yet once ``results`` is set (deferrals after a failed one).
    unwritten: list[Outcome] | None = None
    # The latest progress of running jobs (errands.progress), written with the stamps,
    # before the outcomes: a job's result gets its last report.
    progress: list[tuple[uuid.UUID, Progress]] | None = None
    #: the keys whose slots the outcomes free (the plain concurrency limits), each with
    #: its jobs' queues, and how many jobs the worker may take for them in the same
    #: transaction (PostgreSQL's complete_and_claim; postgres/handoff.py)
    freed: dict[str, set[str]] = field(default_factory=dict)
    room: int = 0
    queues: Sequence[str] = ()
    caps: dict[str, int] = field(default_factory=dict)
    #: the jobs so claimed, for the waiting line
    claimed: list[JobProcess] = field(default_factory=list)

    def run(self, backend: Backend, worker_id: uuid.UUID) -> None:
        try:
            if self.started:
                backend.mark_started(started=self.started)
            if self.progress:
                backend.record_progress(progress=self.progress)
            self.marked = True
            routine: list[Outcome] = self.outcomes
            deferrals: list[Outcome] = []
            if any(map(is_deferral, routine)):
                routine, deferrals = split(backend, worker_id, routine)
            self.results = self._complete(backend, worker_id, routine) if routine else []
            self.unwritten = deferrals
            while self.unwritten:
                result = write_deferral(backend, self.unwritten[0])
                del self.unwritten[0]
                if result is not None and not (
                    self.aborted_only and result.status not in ABORTED_STATUSES
                ):
                    self.results.append(result)
            if self.check_cancel:
                self.cancel_flagged = set(backend.flagged_to_stop(worker_id=worker_id))
        except Exception as exc:
            self.error = exc

    def _complete(
        self, backend: Backend, worker_id: uuid.UUID, outcomes: list[Outcome]
    ) -> list[JobResult]:
        """Write the outcomes; where the backend can, claim the freed slots' next jobs
        in the same transaction (a key's slots then turn over without a NOTIFY and a
        claim of their own)."""
        hand_on = getattr(backend, "complete_and_claim", None)
        if hand_on is None or not self.freed or self.room <= 0:
            return backend.complete_many(outcomes=outcomes, aborted_only=self.aborted_only)
        results, self.claimed = hand_on(
            outcomes=outcomes,
            aborted_only=self.aborted_only,
            worker_id=worker_id,
            queues=self.queues,
            room=self.room,
            keys=self.freed,
            caps=self.caps,
        )
        return list(results)


class DatabaseThread:
    """Runs one ``Batch`` at a time on a daemon thread and calls ``on_done`` after each."""

    def __init__(self, run: Callable[[Batch], None], on_done: Callable[[], None]) -> None:
        self._run = run
        self._on_done = on_done
        self._condition = threading.Condition()
        self._submitted: Batch | None = None  # waiting for the thread
        self._in_flight: Batch | None = None  # submitted and not yet collected
        self._done = False
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def submit(self, batch: Batch) -> None:
        with self._condition:
            if self._in_flight is not None:
                raise RuntimeError("a database batch is already in flight")
            self._in_flight = self._submitted = batch
            self._done = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="errands-database", daemon=True
                )
                self._thread.start()
            self._condition.notify_all()

    def collect(self, *, wait: bool = False) -> Batch | None:
        """The batch in flight once it is done (waiting for it if asked), else None."""
        with self._condition:
            while wait and self._in_flight is not None and not self._done:
                self._condition.wait()
            if self._in_flight is None or not self._done:
                return None
            batch, self._in_flight = self._in_flight, None
            return batch

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _serve(self) -> None:
        while True:
            with self._condition:
                while self._submitted is None and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                batch, self._submitted = self._submitted, None
            if batch is not None:
                self._run(batch)
            with self._condition:
                self._done = True
                self._condition.notify_all()
            self._on_done()


class Recorder:
    """What the worker has to write: outcomes and start stamps, until a batch
    run by the ``DatabaseThread`` takes them."""

    def __init__(
        self,
        backend: Backend,
        worker_id: uuid.UUID,
        *,
        aborted_only: Callable[[], bool],
        on_done: Callable[[], None],
        queues: Sequence[str] = (),
        room: Callable[[], int] = lambda: 0,
    ) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self.queues = queues
        #: how many jobs the worker may take now for the slots its outcomes free
        self.room = room
        self.freed: dict[str, set[str]] = {}
        self.caps: dict[str, int] = {}  # each freed key's concurrency limit
        # Whether to read back only the LOST and CANCELLED results: asked per batch
        # (an application may install its meter provider after the worker started).
        self.aborted_only = aborted_only
        self.outcomes: list[Outcome] = []
        self.unmarked_starts: dict[uuid.UUID, datetime.datetime] = {}
        self.progress: dict[uuid.UUID, Progress] = {}  # the latest per job (errands.progress)
        self.unwritten_since: float | None = None  # the oldest buffered outcome or stamp
        self.cancel_check_at = 0.0  # monotonic
        self.completed = 0  # outcomes written
        self.thread = DatabaseThread(self.run, on_done=on_done)

    @property
    def busy(self) -> bool:
        """Whether a batch is in flight."""
        return self.thread.busy

    @property
    def unwritten(self) -> bool:
        return bool(self.outcomes or self.unmarked_starts or self.progress)

    def record(
        self, outcome: Outcome, *, urgent: bool = False, freed: tuple[str, str, int] | None = None
    ) -> None:
        """Buffer an outcome; an ``urgent`` one is due at once. ``freed``: the key and
        queue of a job under one plain concurrency limit, and the limit, whose slot may be
        handed on."""
        if freed is not None:
            self.freed.setdefault(freed[0], set()).add(freed[1])
            self.caps[freed[0]] = freed[2]
        if urgent:
            self.unwritten_since = time.monotonic() - FLUSH_INTERVAL
        elif self.unwritten_since is None:
            self.unwritten_since = time.monotonic()
        self.outcomes.append(outcome)

    def stamp(self, job_uuid: uuid.UUID, started_at: datetime.datetime) -> None:
        """Mark a job started in the next batch."""
        self.unmarked_starts[job_uuid] = started_at
        self.unwritten_since = self.unwritten_since or time.monotonic()

    def report(self, reports: list[tuple[bytes, int, int | None, str | None]]) -> None:
        """Progress a child sent (process uuid bytes, done, total, message): the latest
        per job goes with the next batch (the child sends one per job every
        ``progress.INTERVAL`` at most)."""
        for key, done, total, message in reports:
            self.progress[uuid_from_bytes(key)] = (done, total, message)
        self.unwritten_since = self.unwritten_since or time.monotonic()

    def forget_start(self, job_uuid: uuid.UUID) -> None:
        """The job ended: its outcome carries its start, no stamp is needed."""
        self.unmarked_starts.pop(job_uuid, None)

    def write_deadline(self) -> float | None:
        """When the buffered writes are due (monotonic), if any wait and none is in flight."""
        if self.unwritten_since is None or self.thread.busy:
            return None
        return self.unwritten_since + FLUSH_INTERVAL

    def start(self, now: float, *, holding: Callable[[], bool], stopping: bool) -> None:
        """Hand the writes that are due to the database thread, if it is free.
        ``holding()``: whether jobs are in hand (then cancellation flags are read)."""
        if self.thread.busy:
            return
        check_cancel = now >= self.cancel_check_at and holding()
        # Outcomes ride along with a cancellation check; on their own they wait to be batched.
        write = self.unwritten and (check_cancel or self._write_due(now, stopping))
        if not (check_cancel or write):
            return
        if check_cancel:
            self.cancel_check_at = now + CANCEL_CHECK_INTERVAL
        self.thread.submit(self.take(write=write, check_cancel=check_cancel))

    def _write_due(self, now: float, stopping: bool) -> bool:
        return (
            stopping
            or len(self.outcomes) >= FLUSH_SIZE
            or (self.unwritten_since is not None and now - self.unwritten_since >= FLUSH_INTERVAL)
        )

    def take(self, *, write: bool, check_cancel: bool) -> Batch:
        """A batch that owns the buffered outcomes and stamps (``write``) until applied."""
        batch = Batch(
            started=list(self.unmarked_starts.items()) if write else [],
            outcomes=list(self.outcomes) if write else [],
            check_cancel=check_cancel,
            aborted_only=self.aborted_only(),
            progress=list(self.progress.items()) if write and self.progress else None,
        )
        if write and self.freed:
            batch.freed, self.freed = self.freed, {}
            batch.room, batch.queues, batch.caps = self.room(), self.queues, dict(self.caps)
        if write:
            self.outcomes.clear()
            self.unmarked_starts.clear()
            self.progress.clear()
            self.unwritten_since = None
        return batch

    def run(self, batch: Batch) -> None:
        batch.run(self.backend, self.worker_id)

    def collect(self, *, wait: bool = False) -> Batch | None:
        """The batch in flight once it is done (waiting for it if asked), else None."""
        return self.thread.collect(wait=wait)

    def settle(self, batch: Batch) -> None:
        """Count what the batch wrote; put back what it did not (it is written next time)."""
        if not batch.marked:  # stamp them next time
            self.unmarked_starts = dict(batch.started) | self.unmarked_starts
            if batch.progress:  # unless a newer report came meanwhile
                self.progress = dict(batch.progress) | self.progress
        if batch.results is None:
            self._requeue_unwritten(batch.outcomes)
            for key, queues in batch.freed.items():  # handed on when they are written
                self.freed.setdefault(key, set()).update(queues)
        else:
            unwritten = batch.unwritten or []
            self._requeue_unwritten(unwritten)
            self.completed += len(batch.outcomes) - len(unwritten)

    def _requeue_unwritten(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self.outcomes[:0] = outcomes
            self.unwritten_since = self.unwritten_since or time.monotonic()

    def close(self) -> None:
        self.thread.close()


def plain_slot(job: JobProcess) -> tuple[str, str, int] | None:
    """The key and queue of a job under one concurrency limit without a rate: its slot
    may be handed on to the key's next job as its outcome is written."""
    if len(job.limits) != 1:
        return None
    limit = job.limits[0]
    if limit.concurrency is None or limit.rate is not None:
        return None
    return str(limit.key), job.queue, limit.concurrency
