"""The worker's routine database work, done off its loop's thread.

Two lanes, each on its own thread and connection, so that neither waits for the
other (claims and writes touch different rows):

* a ``Batch`` is one round of writes: stamp the jobs that began, write outcomes,
  read cancellation flags. A ``DatabaseThread`` runs one batch at a time;
* a claim (``Claimer``) takes more jobs as soon as slots free up, whether or
  not a batch of writes is in flight.

The worker's loop keeps feeding its children meanwhile, and makes no other
database call while either lane is busy.
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from errands.backends import Backend
from errands.models import JobProcess, JobResult, Outcome


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

    def run(self, backend: Backend, worker_id: uuid.UUID) -> None:
        try:
            if self.started:
                backend.mark_started(started=self.started)
            self.marked = True
            self.results = (
                backend.complete_many(outcomes=self.outcomes, aborted_only=self.aborted_only)
                if self.outcomes
                else []
            )
            if self.check_cancel:
                self.cancel_flagged = set(backend.cancel_requested(worker_id=worker_id))
        except Exception as exc:
            self.error = exc


@dataclass
class Claim:
    """One claim of up to ``limit`` jobs: ``claimed`` once done, else ``error``."""

    limit: int
    claimed: list[JobProcess] | None = None
    error: Exception | None = None


class Claimer:
    """Runs one claim at a time on a thread of its own and calls ``on_done`` after each."""

    def __init__(
        self,
        claim: Callable[[int], list[JobProcess]],
        on_done: Callable[[], None],
    ) -> None:
        self._claim = claim
        self._on_done = on_done
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="errands-claim")
        self._in_flight: tuple[Claim, Future[None]] | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def submit(self, limit: int) -> None:
        if self._in_flight is not None:
            raise RuntimeError("a claim is already in flight")
        claim = Claim(limit=limit)
        future = self._executor.submit(self._run, claim)
        # Called once the future is done, so that the woken loop finds it done.
        future.add_done_callback(lambda _: self._on_done())
        self._in_flight = (claim, future)

    def collect(self, *, wait: bool = False) -> Claim | None:
        """The claim in flight once it is done (waiting for it if asked), else None."""
        if self._in_flight is None:
            return None
        claim, future = self._in_flight
        if not wait and not future.done():
            return None
        future.result()  # _run keeps every error in the claim
        self._in_flight = None
        return claim

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _run(self, claim: Claim) -> None:
        try:
            claim.claimed = self._claim(claim.limit)
        except Exception as exc:
            claim.error = exc


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
