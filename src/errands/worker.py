"""The worker: claims jobs in batches, runs them in child processes, records outcomes.

One loop in the parent process owns the children and the jobs in hand. Each turn it:

1. waits for an outcome from a child, a child exit, a wake-up (notification,
   signal, finished database batch) or a deadline;
2. buffers outcomes; kills jobs past their timeout or flagged for cancellation;
3. hands waiting jobs to free child slots;
4. claims more jobs as soon as there is room for them, and starts the next
   database batch when one is due: start stamps and buffered outcomes written,
   cancellation flags read;
5. heartbeats, rescues dead workers' jobs and prunes old results when they are due.

Claims and database batches run on two background threads (``Claimer`` and
``DatabaseThread``), one of each at a time, so the children keep getting jobs
while the database works, and a claim never waits for a write. Every other
database call waits for both first: every step sees the effects of the steps
before it, as if all ran in turn.

Shutdown: the first SIGTERM/SIGINT stops claiming, puts back jobs not yet started,
and lets running jobs finish; a second one kills them and records them CANCELLED.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from errands import api, containment, registry, scheduler, telemetry
from errands import settings as settings_module
from errands.backends import Backend
from errands.batches import Batch, Claim, Claimer, DatabaseThread
from errands.containment import is_own_interrupt
from errands.errors import JobTimeout
from errands.execution import Assignment, failure, qualified_name
from errands.models import (
    ABORTED_STATUSES,
    JobProcess,
    JobResult,
    Outcome,
    Requeue,
    Status,
    WorkerInfo,
)
from errands.pacing import ClaimAhead
from errands.pool import SLOW_JOB, Child, Pool, Slot
from errands.settings import Settings

logger = logging.getLogger("errands")

FLUSH_INTERVAL = 0.02  # seconds an outcome may wait to be batched with others
FLUSH_SIZE = 500  # flush at once when this many outcomes wait
CANCEL_CHECK_INTERVAL = 1.0  # seconds between looks for cancellation requests
START_CHECK_INTERVAL = 0.05  # seconds between looks for jobs that began running
MAX_BACKOFF = 5.0  # seconds between attempts while the database is unreachable
MAX_BOUNCES = 3  # a job handed to this many children that died before it began fails

KillReason = Literal["timeout", "cancel"]


class ProcessDied(Exception):
    """The child process running a job exited without reporting an outcome."""


class Cancelled(Exception):
    """The job was cancelled by an operator or by a second shutdown signal."""


class Interrupted(Exception):
    """The job's process was killed to stop another job running in it.

    With ``worker_threads`` above one a child runs several jobs, and stopping one
    (timeout, cancellation) kills them all. The others are recorded LOST and
    enqueued again at the same attempt: the interruption uses up none of their retries.
    """


@dataclass
class Deadlines:
    heartbeat: float = 0.0
    maintenance: float = 0.0
    poll: float = 0.0
    cancel_check: float = 0.0
    start_check: float = 0.0
    stats: float = 0.0


# -- the worker ----------------------------------------------------------------------------


class Worker:
    """Runs jobs of ``queues`` (all queues when empty) until stopped."""

    def __init__(
        self,
        *,
        queues: Sequence[str] = (),
        config: Settings | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config or settings_module.current()
        # Registers jobs for hooks, retries, schedules; stored paths may import only inside these.
        registry.import_job_modules(self.config.import_modules)
        # Bad schedule entries stop the worker here, before it claims anything.
        self.schedule = scheduler.parse_entries(self.config.schedule, self.config.timezone)
        self.schedule_wakeups: list[float] = []  # monotonic times occurrences fall due
        self.queues = list(queues)
        self.backend = backend or api.backend()
        self.worker_id = uuid.uuid4()
        threads = self.config.worker_threads
        self.claim_ahead = ClaimAhead(
            fixed=self.config.worker_max_pending_per_process, threads=threads
        )
        self.pool = Pool(
            size=self.config.max_processes,
            environ=settings_module.to_environ(self.config),
            max_jobs_per_child=self.config.worker_max_jobs_per_process,
            threads=threads,
        )
        self.waiting: deque[JobProcess] = deque()
        self.outcomes: list[Outcome] = []
        self.unmarked_starts: dict[uuid.UUID, datetime.datetime] = {}
        self.unwritten_since: float | None = None  # the oldest buffered outcome or stamp
        self.cancelling: set[uuid.UUID] = set()  # flagged jobs being recalled from a child
        self.bounces: dict[uuid.UUID, int] = {}  # jobs whose child died before they began
        self.database = DatabaseThread(self._run_batch, on_done=self._nudge)
        self.claimer = Claimer(self._claim_jobs, on_done=self._nudge)
        self.deadlines = Deadlines()
        self.work_maybe_due = True
        self.stopping = False
        self.stopping_since: float | None = None
        self.aborting = False
        self.database_failures = 0
        self.database_retry_at = 0.0
        self.completed = 0
        self._last_stats = (time.monotonic(), 0)  # (when, completed) at the last stats line
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.pool.watch(self._wake_r)
        self._listener: Any = None

    @property
    def capacity(self) -> int:
        """Jobs in hand (running or waiting) at most (see ``errands.pacing``)."""
        return self.config.max_processes * self.claim_ahead.per_process

    # -- lifecycle ------------------------------------------------------------
    def run(self) -> int:
        """Run until shut down by a signal or ``stop()``; returns the process exit code."""
        self._install_signal_handlers()
        self.start()
        try:
            while not self.finished():
                self.turn()
        finally:
            self.shut_down()
        return 0

    def start(self) -> None:
        """Register the heartbeat, start listening and spawn the children."""
        self._register()
        self._guarded(self._start_schedules)
        if self.config.notifications:
            self._listener = self.backend.listen(on_wake=self.wake)
        self.pool.fill()
        telemetry.register_worker_gauges(self)
        now = time.monotonic()
        self.deadlines.heartbeat = now + self.config.heartbeat_interval
        self.deadlines.stats = now + (self.config.worker_stats_every or float("inf"))

    def finished(self) -> bool:
        """True once a stopping worker has nothing left running or unwritten."""
        if not self.stopping:
            return False
        return not (
            self.pool.busy()
            or self.outcomes
            or self.waiting
            or self.database.busy
            or self.claimer.busy
        )

    def wake(self) -> None:
        """Ask the loop to look for work now (safe from any thread or signal handler)."""
        self.work_maybe_due = True
        self._nudge()

    def _nudge(self) -> None:
        """End the loop's current wait (safe from any thread or signal handler)."""
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Begin a graceful shutdown; a second call aborts running jobs."""
        if self.stopping:
            self.aborting = True
        else:
            self.stopping_since = time.monotonic()
        self.stopping = True
        self.wake()

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    # -- one turn of the loop ------------------------------------------------
    def turn(self) -> None:
        """One pass of the loop (public so that tests and the demo can drive a worker)."""
        events = self.pool.wait(self._wait_timeout())
        if events.woken:
            self._drain_wake_pipe()
        self._apply_finished_batch()
        self._apply_finished_claim()
        for slot, outcome in events.finished:
            self._finished(slot, outcome)
        self._returned(events.recalled)
        for child in events.exited:
            self._child_exited(child)
        if self.stopping:
            self._guarded(self._release_waiting)
            self._abort_if_drain_timed_out()
        if self.aborting:
            self._abort_running()
        self._watch_children()
        self.pool.retire_exhausted()
        if not self.stopping:
            self.pool.fill()
        self._start_claim()  # first: the claim's round trip overlaps the dispatch
        self._dispatch()
        self._start_batch()
        self._maintain()

    def _guarded(self, operation: Callable[[], None]) -> None:
        """Run a database operation; on failure log it and back off instead of dying.

        The batch in flight is waited for first, so that the database has one
        caller at a time. Nothing is lost meanwhile: outcomes stay buffered,
        claimed jobs stay claimed, and both are written once the database answers again.
        """
        if time.monotonic() < self.database_retry_at:
            return
        self._settle()
        if time.monotonic() < self.database_retry_at:
            return  # the batch just failed
        try:
            operation()
        except BaseException as exc:  # a scheduled job's constructor may raise SystemExit
            if is_own_interrupt(exc):
                raise
            self._database_failed(operation.__name__, exc)
        else:
            self._database_answered(operation.__name__)

    def _database_failed(self, operation: str, exc: BaseException) -> None:
        self.database_failures += 1
        backoff = min(0.1 * 2**self.database_failures, MAX_BACKOFF)
        self.database_retry_at = time.monotonic() + backoff
        logger.error(
            "database operation failed; retrying",
            extra={"operation": operation, "retry_in": round(backoff, 2)},
            exc_info=exc,
        )

    def _database_answered(self, operation: str) -> None:
        if self.database_failures:
            logger.warning("database reachable again", extra={"operation": operation})
        self.database_failures = 0

    def _abort_if_drain_timed_out(self) -> None:
        limit = self.config.worker_drain_timeout
        if limit is None or self.stopping_since is None or self.aborting:
            return
        if time.monotonic() - self.stopping_since >= limit:
            logger.warning("drain timeout reached; terminating running jobs")
            self.aborting = True

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self.deadlines.heartbeat, self.deadlines.stats]
        if not self.stopping and not self.claimer.busy and self._room() > 0:
            # Without room (or with a claim on its way) there is nothing to poll for:
            # a slot freeing up, or the claim returning, wakes the loop.
            deadlines.append(max(self.deadlines.poll, self.database_retry_at))
            deadlines += self.schedule_wakeups[:1]
        if self.unwritten_since is not None and not self.database.busy:
            deadlines.append(max(self.unwritten_since + FLUSH_INTERVAL, self.database_retry_at))
        running = self.pool.busy()
        if running or self.waiting:
            deadlines.append(self.deadlines.cancel_check)
        if any(not slot.started for slot in running):
            deadlines.append(self.deadlines.start_check)
        deadlines += [self._timeout_deadline(slot) for slot in running if slot.job.timeout]
        deadlines += self._recall_deadlines()
        return max(min(deadlines) - now, 0.0)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- children --------------------------------------------------------------
    def _finished(self, slot: Slot, outcome: Outcome) -> None:
        self.unmarked_starts.pop(slot.job.uuid, None)
        self.bounces.pop(slot.job.uuid, None)
        if outcome.started_at is not None and self.claim_ahead.adaptive:
            self.claim_ahead.observe((outcome.ended_at - outcome.started_at).total_seconds())
        self._record(outcome)

    def _child_exited(self, child: Child) -> None:
        if child not in self.pool.children:
            return  # killed earlier in this turn; its jobs are accounted for
        finished, recalled = self.pool.receive(child)  # whatever it sent before exiting
        for slot, outcome in finished:
            self._finished(slot, outcome)
        self._returned(recalled)
        held = self.pool.remove(child)
        exitcode = child.process.exitcode
        for slot in reversed(held):
            if not slot.started and self._bounce(slot.job):
                continue  # it had not begun: another child runs it
            # A job that began was interrupted mid-run (LOST). One that never began
            # in several children fails (ERRORED): its children die before it starts.
            status = Status.LOST if slot.started else Status.ERRORED
            error = ProcessDied(f"job process {child.pid} exited with code {exitcode}")
            logger.error("job process died", extra=_job_fields(slot.job, exitcode=exitcode))
            self._record(self._failure(slot, error, status=status))

    def _bounce(self, job: JobProcess) -> bool:
        """Put a job a dead child had not begun back in line, unless it did so too often."""
        bounces = self.bounces[job.uuid] = self.bounces.get(job.uuid, 0) + 1
        if bounces >= MAX_BOUNCES:
            del self.bounces[job.uuid]
            return False
        self.waiting.appendleft(job)
        return True

    def _returned(self, slots: list[Slot]) -> None:
        """Jobs a child gave back (recalled before they began) go back to the line."""
        for slot in reversed(slots):
            if slot.job.uuid in self.cancelling:
                self.cancelling.discard(slot.job.uuid)
                self._record(self._cancelled(slot))
            else:
                self.waiting.appendleft(slot.job)

    def _failure(self, slot: Slot, exc: BaseException, *, status: Status) -> Outcome:
        self.unmarked_starts.pop(slot.job.uuid, None)
        return failure(
            Assignment.of(slot.job), exc, started_at=slot.started_at, job=None, status=status
        )

    def _dispatch(self) -> None:
        if self.waiting and not self.stopping:
            self.pool.dispatch(self.waiting)

    # -- claims and database batches ----------------------------------------------
    def _start_claim(self) -> None:
        """Claim more jobs now if there is room (and no claim is on its way already).

        A claim does not wait for the writes in flight: it runs on its own thread
        and connection, so that the time it takes to refill the slots is one claim's
        round trip, not that plus a write's.
        """
        now = time.monotonic()
        if self.claimer.busy or now < self.database_retry_at:
            return
        limit = self._claim_limit(now)
        if limit:
            self.deadlines.poll = now + self.config.poll_interval
            self.claimer.submit(limit)

    def _claim_jobs(self, limit: int) -> list[JobProcess]:
        return self.backend.claim(worker_id=self.worker_id, queues=self.queues, limit=limit)

    def _start_batch(self) -> None:
        """Hand the writes that are due to the database thread (if it is free)."""
        now = time.monotonic()
        if self.database.busy or now < self.database_retry_at:
            return
        batch = self._due_batch(now)
        if batch is not None:
            self.database.submit(batch)

    def _due_batch(self, now: float) -> Batch | None:
        check_cancel = now >= self.deadlines.cancel_check and bool(self.pool.busy() or self.waiting)
        unwritten = bool(self.outcomes or self.unmarked_starts)
        # Outcomes ride along with a cancellation check; on their own they wait to be batched.
        write = unwritten and (check_cancel or self._write_due(now))
        if not (check_cancel or write):
            return None
        if check_cancel:
            self.deadlines.cancel_check = now + CANCEL_CHECK_INTERVAL
        return self._take_batch(write=write, check_cancel=check_cancel)

    def _take_batch(self, *, write: bool, check_cancel: bool) -> Batch:
        """A batch that owns the buffered outcomes and stamps (``write``) until applied."""
        batch = Batch(
            started=list(self.unmarked_starts.items()) if write else [],
            outcomes=list(self.outcomes) if write else [],
            check_cancel=check_cancel,
            aborted_only=not self._every_result_wanted(),
        )
        if write:
            self.outcomes.clear()
            self.unmarked_starts.clear()
            self.unwritten_since = None
        return batch

    def _run_batch(self, batch: Batch) -> None:
        batch.run(self.backend, self.worker_id)

    def _write_due(self, now: float) -> bool:
        return (
            self.stopping
            or len(self.outcomes) >= FLUSH_SIZE
            or (self.unwritten_since is not None and now - self.unwritten_since >= FLUSH_INTERVAL)
        )

    def _claim_limit(self, now: float) -> int:
        """How many jobs to claim now (0: not now)."""
        if self.stopping:
            return 0
        if now >= self.deadlines.poll:
            self.work_maybe_due = True
        if self.schedule_wakeups and now >= self.schedule_wakeups[0]:
            self.work_maybe_due = True  # a scheduled occurrence is due
            self.schedule_wakeups = [t for t in self.schedule_wakeups if t > now]
        return self._room() if self.work_maybe_due else 0

    def _room(self) -> int:
        """How many jobs a claim may take now (0: none).

        With a long waiting line, claim in batches, once it is down to half of what
        may be held: the children keep working on the rest while the claim is on its
        way. A short line (it ends in the children's slots) is refilled as soon as a
        slot frees up, one claim at a time.
        """
        if len(self.waiting) > self.capacity // 2:
            return 0
        # Jobs that ended are no longer in hand, even before their outcomes are read.
        held = len(self.waiting) + len(self.pool.busy()) - self.pool.ended_unread()
        return max(self.capacity - held, 0)

    def _settle(self) -> None:
        """Wait for the claim and the batch in flight, and apply them."""
        claim = self.claimer.collect(wait=True)
        if claim is not None:
            self._apply_claim(claim)
        batch = self.database.collect(wait=True)
        if batch is not None:
            self._apply(batch)

    def _apply_finished_claim(self) -> None:
        claim = self.claimer.collect()
        if claim is not None:
            self._apply_claim(claim)

    def _apply_claim(self, claim: Claim) -> None:
        if claim.claimed is None:
            self._database_failed("claim", claim.error or RuntimeError("claim failed"))
            return
        self.waiting.extend(claim.claimed)
        # A full claim means more may be waiting; a short one means the queue is empty.
        self.work_maybe_due = len(claim.claimed) == claim.limit
        self._database_answered("claim")

    def _apply_finished_batch(self) -> None:
        batch = self.database.collect()
        if batch is not None:
            self._apply(batch)

    def _apply(self, batch: Batch) -> None:
        if not batch.marked:  # stamp them next time
            self.unmarked_starts = dict(batch.started) | self.unmarked_starts
        if batch.results is None:
            self._requeue_unwritten(batch.outcomes)
        else:
            self.completed += len(batch.outcomes)
            self._after_results(batch.results)
        if batch.cancel_flagged:
            self._cancel(batch.cancel_flagged)
        if batch.error is not None:
            self._database_failed("batch", batch.error)
        else:
            self._database_answered("batch")

    def _requeue_unwritten(self, outcomes: list[Outcome]) -> None:
        """Outcomes whose write failed go back to the front of the buffer.

        They are written on the next try; a repeat writes nothing twice, since
        completing a process that is already gone is skipped.
        """
        if outcomes:
            self.outcomes[:0] = outcomes
            self.unwritten_since = self.unwritten_since or time.monotonic()

    def _claim(self) -> None:
        """Claim now, on this thread (for tests: the loop claims in the background)."""
        self._settle()
        limit = self._claim_limit(time.monotonic())
        if limit:
            claim = Claim(limit=limit, claimed=self._claim_jobs(limit))
            self._apply_claim(claim)

    # -- outcomes ----------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        if self.unwritten_since is None:
            self.unwritten_since = time.monotonic()
        self.outcomes.append(outcome)

    def flush(self) -> None:
        """Write buffered outcomes (and start stamps of jobs still running) now."""
        self._settle()
        if self.outcomes or self.unmarked_starts:
            batch = self._take_batch(write=True, check_cancel=False)
            self._run_batch(batch)
            self._apply(batch)
            if batch.error is not None:
                raise batch.error

    def _every_result_wanted(self) -> bool:
        """Whether the written results are logged or measured, beyond the aborted
        ones' hooks (checked per batch: an application may install its meter
        provider after the worker started)."""
        return self.config.log_jobs or telemetry.results_measured()

    def _after_results(self, results: list[JobResult]) -> None:
        telemetry.record_results(results)
        aborted = [r for r in results if r.status in ABORTED_STATUSES]
        if aborted:
            self.run_aborted_hooks(aborted)
        if self.config.log_jobs:
            for result in results:
                logger.info("job finished", extra=_result_fields(result))

    # -- starts, timeouts and cancellation -------------------------------------------------
    def _watch_children(self) -> None:
        """Notice jobs that began (to stamp and time them), kill jobs past their
        timeout, and take back queued jobs from children that cannot start them soon.

        Children report a start through shared memory, without waking the parent,
        so the parent looks every ``START_CHECK_INTERVAL`` while a job is unseen.
        """
        now = time.monotonic()
        if now >= self.deadlines.start_check:
            self.deadlines.start_check = now + START_CHECK_INTERVAL
            for slot in self.pool.notice_starts():
                if slot.started_at is not None:
                    self.unmarked_starts[slot.job.uuid] = slot.started_at
                    self.unwritten_since = self.unwritten_since or now
        for child in list(self.pool.children):
            late = [s for s in child.jobs() if s.job.timeout and now >= self._timeout_deadline(s)]
            if late:
                self._kill(child, {slot.job.uuid: "timeout" for slot in late})
            elif child.queued() and (self.stopping or child.is_slow(now) or self._cancels(child)):
                self.pool.recall(child)

    def _cancels(self, child: Child) -> bool:
        return any(slot.job.uuid in self.cancelling for slot in child.queued())

    def _recall_deadlines(self) -> list[float]:
        """When children with queued jobs turn slow (their queue is then recalled)."""
        deadlines = []
        for child in self.pool.children:
            since = child.slow_since()
            if since is not None and not child.recalling and child.queued():
                deadlines.append(since + SLOW_JOB)
        return deadlines

    def _timeout_deadline(self, slot: Slot) -> float:
        """A job's time is counted from its start; one not seen started is looked at again."""
        if slot.started_monotonic is None or not slot.job.timeout:
            return self.deadlines.start_check
        return slot.started_monotonic + slot.job.timeout

    def _cancel(self, flagged: set[uuid.UUID]) -> None:
        for job in [j for j in self.waiting if j.uuid in flagged]:
            self.waiting.remove(job)
            self._record(self._cancelled(Slot(job=job, dispatched_monotonic=0.0)))
        for child in list(self.pool.children):
            child.notice_starts()
            targets: dict[uuid.UUID, KillReason]
            targets = {s.job.uuid: "cancel" for s in child.jobs() if s.job.uuid in flagged}
            begun = {u: r for u, r in targets.items() if self._begun(child, u)}
            if begun:
                self._kill(child, begun)
            elif targets:
                # Queued in the child, not begun: recalled, then cancelled (_returned).
                self.cancelling |= targets.keys()
                self.pool.recall(child)

    @staticmethod
    def _begun(child: Child, job_uuid: uuid.UUID) -> bool:
        return any(s.started for s in child.jobs() if s.job.uuid == job_uuid)

    def _cancelled(self, slot: Slot) -> Outcome:
        outcome = self._failure(slot, Cancelled("cancelled"), status=Status.CANCELLED)
        return dataclasses.replace(outcome, requeue=None)  # a cancelled job is not retried

    def _kill(self, child: Child, targets: dict[uuid.UUID, KillReason]) -> None:
        """Kill a child to stop the ``targets`` among its jobs.

        Jobs that ended before the kill keep their own outcome. The others it held
        (only with ``worker_threads`` above one) are not at fault: one that began
        is recorded LOST and enqueued again at the same attempt; one that had not
        begun goes back to the waiting line.
        """
        finished, held = self.pool.kill(child)
        for slot, outcome in finished:
            self._finished(slot, outcome)
        for slot in held:
            reason = targets.get(slot.job.uuid)
            if reason is not None:
                logger.warning("terminating job", extra=_job_fields(slot.job, reason=reason))
                self._record(self._stopped(slot, reason))
            elif slot.started:
                self._record(self._interrupted(slot, targets))
            else:
                self.waiting.appendleft(slot.job)

    def _stopped(self, slot: Slot, reason: KillReason) -> Outcome:
        if reason == "cancel":
            return self._cancelled(slot)
        error = JobTimeout(f"job exceeded its timeout of {slot.job.timeout} seconds")
        return self._failure(slot, error, status=Status.ERRORED)

    def _interrupted(self, slot: Slot, targets: dict[uuid.UUID, KillReason]) -> Outcome:
        stopped = ", ".join(f"{job} ({reason})" for job, reason in targets.items())
        error = Interrupted(f"its process was killed to stop job {stopped}")
        outcome = self._failure(slot, error, status=Status.LOST)
        again = Requeue(delay_seconds=0.0, retry_attempt=slot.job.retry_attempt)
        return dataclasses.replace(outcome, requeue=again)

    # -- shutdown -------------------------------------------------------------------
    def _release_waiting(self) -> None:
        if self.waiting:
            self.backend.release(process_uuids=[j.uuid for j in self.waiting])
            self.waiting.clear()

    def _abort_running(self) -> None:
        """Kill every child: running jobs end CANCELLED, jobs not begun go back."""
        for child in list(self.pool.children):
            child.notice_starts()
            targets: dict[uuid.UUID, KillReason]
            targets = {s.job.uuid: "cancel" for s in child.jobs() if s.started}
            if child.busy:
                self._kill(child, targets)

    def shut_down(self) -> None:
        try:
            self.stopping = True
            self._settle()
            self._release_waiting()
            if self.pool.busy():
                self._abort_running()
                self._release_waiting()
            self.flush()
            self.pool.close()
            self.backend.deregister_worker(worker_id=self.worker_id)
        finally:
            self.database.close()
            self.claimer.close()
            if self._listener is not None:
                self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- maintenance ------------------------------------------------------------------
    def _maintain(self) -> None:
        now = time.monotonic()
        if now >= self.deadlines.heartbeat:
            self.deadlines.heartbeat = now + self.config.heartbeat_interval
            self._guarded(self.beat)
        if now >= self.deadlines.maintenance and not self.stopping:
            # Jitter spreads the rescue and pruning work of many workers.
            jitter = random.uniform(0.5, 1.0)
            self.deadlines.maintenance = now + self.config.heartbeat_interval * jitter
            self._guarded(self.run_maintenance)
        if now >= self.deadlines.stats:
            self.deadlines.stats = now + (self.config.worker_stats_every or float("inf"))
            self.log_stats()

    def beat(self) -> None:
        """Refresh the heartbeat; re-register if a peer declared this worker dead.

        Jobs the peer turned LOST stay LOST: their late outcomes find no process row
        and are dropped by ``complete_many``, so one process still has one result.
        """
        if not self.backend.heartbeat(worker_id=self.worker_id):
            logger.warning("this worker was declared dead by a peer; registering again")
            self._register()

    def _register(self) -> None:
        self.backend.register_worker(
            worker=WorkerInfo(
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
            )
        )

    def _start_schedules(self) -> None:
        self._sync_schedules(starting=True)

    def _sync_schedules(self, *, starting: bool = False) -> None:
        # Enqueue occurrences two maintenance ticks ahead, so each one is a
        # delayed request well before it is due and starts on time.
        horizon = datetime.timedelta(seconds=max(2 * self.config.heartbeat_interval, 60))
        if not self.schedule and not starting:
            return
        database_now = self.backend.now()
        created = scheduler.sync(
            self.backend,
            self.schedule,
            horizon=horizon,
            starting=starting,
            now=database_now,
            history_seconds=self.config.results_retention,
        )
        if created:
            logger.debug("scheduled occurrences enqueued", extra={"count": created})
        # Wake up when each occurrence falls due (by the database clock, translated to
        # this process's monotonic clock), rather than at the next poll.
        monotonic_now = time.monotonic()
        self.schedule_wakeups = [
            monotonic_now + (moment - database_now).total_seconds()
            for moment in scheduler.upcoming_times(self.schedule, now=database_now, horizon=horizon)
        ]

    def run_maintenance(self) -> None:
        """Enqueue schedules, rescue dead workers' jobs, lose own orphans, prune results."""
        self._sync_schedules()
        lost = self.backend.rescue_stale_workers(timeout_seconds=self.config.heartbeat_timeout)
        lost += self._lose_orphans()
        telemetry.record_results(lost)
        if lost:
            logger.warning("rescued lost jobs", extra={"count": len(lost)})
            containment.each_result("retrying a lost job", api.retry_lost, lost)
            self.run_aborted_hooks(lost)
        self.backend.prune_results(older_than_seconds=self.config.results_retention)

    def run_aborted_hooks(self, results: list[JobResult]) -> None:
        """Run ``on_aborted`` for each result, heartbeating between hooks when a beat is
        due: a long list of slow hooks must not make this worker look dead."""
        for result in results:
            containment.each_result("on_aborted", api.dispatch_aborted_hooks, [result])
            if time.monotonic() >= self.deadlines.heartbeat:
                self.deadlines.heartbeat = time.monotonic() + self.config.heartbeat_interval
                try:
                    self.beat()
                except Exception:
                    logger.warning("heartbeat failed between on_aborted hooks", exc_info=True)

    def _lose_orphans(self) -> list[JobResult]:
        # No batch is in flight here (see _guarded): every claimed job is tracked.
        tracked = {j.uuid for j in self.waiting}
        tracked |= {slot.job.uuid for slot in self.pool.busy()}
        tracked |= {o.process_uuid for o in self.outcomes}
        mine = self.backend.processes_of_worker(worker_id=self.worker_id)
        orphans = [p.uuid for p in mine if p.uuid not in tracked]
        if not orphans:
            return []
        return self.backend.lose_processes(worker_id=self.worker_id, process_uuids=orphans)

    def log_stats(self) -> None:
        """Log this worker's state, its queues' depth and its throughput since the last line."""
        now = time.monotonic()
        since, completed_then = self._last_stats
        self._last_stats = (now, self.completed)
        elapsed = max(now - since, 1e-9)
        logger.info(
            "worker stats",
            extra={
                "processes": len(self.pool.children),
                "running": len(self.pool.busy()),
                "waiting": len(self.waiting),
                "completed": self.completed,
                "jobs_per_second": round((self.completed - completed_then) / elapsed, 1),
                "queues": self._queue_depths(),
            },
        )

    def _queue_depths(self) -> dict[str, dict[str, int]]:
        """Pending (due) and running jobs per served queue; empty if the database fails."""
        try:
            stats = self.backend.stats(heartbeat_timeout_seconds=self.config.heartbeat_timeout)
        except Exception:
            logger.debug("stats query failed", exc_info=True)
            return {}
        return {
            q.queue: {"pending": q.pending, "running": q.running}
            for q in stats.queues
            if not self.queues or q.queue in self.queues
        }


def _job_fields(job: JobProcess | None, **more: Any) -> dict[str, Any]:
    if job is None:
        return more
    return {
        "job_class": job.job_class,
        "job_uuid": str(job.uuid),
        "queue": job.queue,
        "priority": job.priority,
        "attempt": job.retry_attempt,
        "worker_id": str(job.worker_id),
        **more,
    }


def _result_fields(result: JobResult) -> dict[str, Any]:
    duration = (result.ended_at - result.started_at).total_seconds() if result.started_at else None
    return {
        "job_class": result.job_class,
        "job_uuid": str(result.uuid),
        "queue": result.queue,
        "status": str(result.status),
        "attempt": result.retry_attempt,
        "duration": duration,
    }


__all__ = ["Cancelled", "Interrupted", "ProcessDied", "Worker", "qualified_name"]
