"""The worker's routine database work, done off its loop's thread.

A ``Batch`` is one round of it: stamp the jobs that began, write outcomes, read
cancellation flags and, meanwhile, claim more jobs. A ``DatabaseThread`` runs
one batch at a time, so the worker's loop keeps feeding its children while the
database works; the loop makes no other database call while a batch is in flight.
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from errands.backends import Backend
from errands.models import JobProcess, JobResult, Outcome


@dataclass
class Batch:
    """One round of the worker's routine database work: stamp the jobs that began,
    write outcomes, read cancellation flags and, meanwhile, claim up to
    ``claim_limit`` jobs. A failed step stops the steps after it (the claim runs on
    its own); ``error`` tells why, and the fields of the steps that did not happen
    stay None."""

    started: list[tuple[uuid.UUID, datetime.datetime]]
    outcomes: list[Outcome]
    claim_limit: int
    check_cancel: bool
    marked: bool = False
    results: list[JobResult] | None = None
    claimed: list[JobProcess] | None = None
    cancel_flagged: set[uuid.UUID] | None = None
    error: Exception | None = None

    def run(
        self,
        backend: Backend,
        worker_id: uuid.UUID,
        queues: Sequence[str],
        claim_on: Executor | None = None,
    ) -> None:
        """Run the steps; with ``claim_on``, the claim runs there, beside the writes
        (on another connection: claims and writes touch different rows)."""
        claim: Future[list[JobProcess]] | None = None
        if self.claim_limit and claim_on is not None:
            claim = claim_on.submit(
                backend.claim, worker_id=worker_id, queues=queues, limit=self.claim_limit
            )
        try:
            self._write(backend, worker_id)
            if self.claim_limit and claim is None:
                self.claimed = backend.claim(
                    worker_id=worker_id, queues=queues, limit=self.claim_limit
                )
        except Exception as exc:
            self.error = exc
        if claim is not None:
            try:
                self.claimed = claim.result()
            except Exception as exc:
                self.error = self.error or exc

    def _write(self, backend: Backend, worker_id: uuid.UUID) -> None:
        if self.started:
            backend.mark_started(started=self.started)
        self.marked = True
        self.results = backend.complete_many(outcomes=self.outcomes) if self.outcomes else []
        if self.check_cancel:
            self.cancel_flagged = set(backend.cancel_requested(worker_id=worker_id))


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
