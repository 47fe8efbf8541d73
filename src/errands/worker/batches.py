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
from collections.abc import Callable
from dataclasses import dataclass

from errands.backends import Backend
from errands.models import ABORTED_STATUSES, JobResult, Outcome, Progress, uuid_from_bytes
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
            self.results = (
                backend.complete_many(outcomes=routine, aborted_only=self.aborted_only)
                if routine
                else []
            )
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
    ) -> None:
        self.backend = backend
        self.worker_id = worker_id
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

    def record(self, outcome: Outcome, *, urgent: bool = False) -> None:
        """Buffer an outcome; an ``urgent`` one is due at once."""
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
