"""The worker: claims jobs in batches, runs them in child processes, records outcomes.

One loop in the parent process owns the database. Each turn it:

1. waits for a child message, a child exit, a wake-up (notification, signal) or a deadline;
2. turns child messages into started stamps and outcomes (buffered);
3. kills jobs past their timeout or flagged for cancellation;
4. hands waiting jobs to idle children and claims more when there is room;
5. flushes buffered outcomes in one transaction (every few tens of milliseconds);
6. heartbeats, rescues dead workers' jobs and prunes old results when they are due.

Shutdown: the first SIGTERM/SIGINT stops claiming, puts back jobs not yet started,
and lets running jobs finish; a second one kills them and records them CANCELLED.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
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
from typing import Any

from errands import api, scheduler, telemetry
from errands import settings as settings_module
from errands.backends import Backend
from errands.errors import JobTimeout
from errands.execution import Assignment, failure, qualified_name
from errands.models import ABORTED_STATUSES, JobProcess, JobResult, Outcome, Status, WorkerInfo
from errands.pool import DONE, STARTED, Child, Pool
from errands.settings import Settings

logger = logging.getLogger("errands")

FLUSH_INTERVAL = 0.02  # seconds an outcome may wait to be batched with others
FLUSH_SIZE = 500  # flush at once when this many outcomes wait
CANCEL_CHECK_INTERVAL = 1.0  # seconds between looks for cancellation requests
MAX_BACKOFF = 5.0  # seconds between attempts while the database is unreachable


class ProcessDied(Exception):
    """The child process running a job exited without reporting an outcome."""


class Cancelled(Exception):
    """The job was cancelled by an operator or by a second shutdown signal."""


@dataclass
class Deadlines:
    heartbeat: float = 0.0
    maintenance: float = 0.0
    poll: float = 0.0
    cancel_check: float = 0.0
    stats: float = 0.0


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
        for module in self.config.import_modules:
            importlib.import_module(module)  # registers jobs for hooks, retries, schedules
        # Bad schedule entries stop the worker here, before it claims anything.
        self.schedule = scheduler.parse_entries(self.config.schedule, self.config.timezone)
        self.queues = list(queues)
        self.backend = backend or api.backend()
        self.worker_id = uuid.uuid4()
        self.capacity = self.config.max_processes * self.config.worker_max_pending_per_process
        self.pool = Pool(
            size=self.config.max_processes,
            environ=settings_module.to_environ(self.config),
            max_jobs_per_child=self.config.worker_max_jobs_per_process,
        )
        self.waiting: deque[JobProcess] = deque()
        self.outcomes: list[Outcome] = []
        self.outcomes_since: float | None = None
        self.unmarked_starts: dict[uuid.UUID, Any] = {}
        self.aborted_pending: list[JobResult] = []
        self.deadlines = Deadlines()
        self.work_maybe_due = True
        self.stopping = False
        self.stopping_since: float | None = None
        self.aborting = False
        self.database_failures = 0
        self.database_retry_at = 0.0
        self.completed = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._listener: Any = None

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
        return not self.pool.busy() and not self.outcomes and not self.waiting

    def wake(self) -> None:
        """Ask the loop to look for work now (safe from any thread or signal handler)."""
        self.work_maybe_due = True
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
        ready = self.pool.wait(self._wait_timeout(), [self._wake_r])
        if self._wake_r in ready:
            self._drain_wake_pipe()
        self._read_children(ready)
        if self.stopping:
            self._guarded(self._release_waiting)
            self._abort_if_drain_timed_out()
        if self.aborting:
            self._abort_running()
        self._enforce_timeouts()
        self._guarded(self._check_cancellations)
        self.pool.retire_exhausted()
        if not self.stopping:
            self.pool.fill()
        self._dispatch()
        self._guarded(self._claim)
        self._dispatch()
        self._guarded(self._flush_if_due)
        self._maintain()

    def _guarded(self, operation: Callable[[], None]) -> None:
        """Run a database operation; on failure log it and back off instead of dying.

        Nothing is lost meanwhile: outcomes stay buffered, claimed jobs stay claimed,
        and both are written once the database answers again.
        """
        now = time.monotonic()
        if now < self.database_retry_at:
            return
        try:
            operation()
        except Exception:
            self.database_failures += 1
            backoff = min(0.1 * 2**self.database_failures, MAX_BACKOFF)
            self.database_retry_at = now + backoff
            logger.exception(
                "database operation failed; retrying",
                extra={"operation": operation.__name__, "retry_in": round(backoff, 2)},
            )
        else:
            if self.database_failures:
                logger.warning("database reachable again", extra={"operation": operation.__name__})
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
        if not self.stopping:
            deadlines.append(self.deadlines.poll)
        if self.outcomes_since is not None:
            deadlines.append(max(self.outcomes_since + FLUSH_INTERVAL, self.database_retry_at))
        if self.pool.busy():
            deadlines.append(self.deadlines.cancel_check)
            deadlines += self._timeout_deadlines()
        return max(min(deadlines) - now, 0.0)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- children --------------------------------------------------------------
    def _read_children(self, ready: list[Any]) -> None:
        for obj in ready:
            child = self.pool.child_of_conn(obj)
            if child is not None:
                self._receive(child)
        for obj in ready:
            child = self.pool.child_of_sentinel(obj)
            if child is not None:
                self._child_exited(child)

    def _receive(self, child: Child) -> None:
        try:
            while child.conn.poll():
                self._handle_message(child, child.conn.recv())
        except (EOFError, OSError):
            pass  # the child exited; its sentinel reports that

    def _handle_message(self, child: Child, message: tuple[Any, ...]) -> None:
        if message[0] == STARTED:
            child.started_at = message[2]
            child.started_monotonic = time.monotonic()
            self.unmarked_starts[message[1]] = message[2]
        elif message[0] == DONE:
            outcome: Outcome = message[1]
            self.unmarked_starts.pop(outcome.process_uuid, None)
            child.job = None
            self._record(outcome)

    def _child_exited(self, child: Child) -> None:
        self._receive(child)  # whatever it sent before exiting
        job = child.job
        self.pool.remove(child)
        if job is None:
            return  # retired after its last job, or idle
        exitcode = child.process.exitcode
        error = ProcessDied(f"job process {child.pid} exited with code {exitcode}")
        # A job that started was interrupted mid-run (LOST); one that never started
        # failed while the child was setting it up (ERRORED).
        status = Status.LOST if child.started_at is not None else Status.ERRORED
        logger.error("job process died", extra=_job_fields(job, exitcode=exitcode))
        self._record(self._failure(job, child, error, status=status))

    def _failure(
        self, job: JobProcess, child: Child | None, exc: BaseException, *, status: Status
    ) -> Outcome:
        started_at = child.started_at if child else None
        self.unmarked_starts.pop(job.uuid, None)
        return failure(_assignment(job), exc, started_at=started_at, job=None, status=status)

    def _dispatch(self) -> None:
        for child in self.pool.idle():
            if not self.waiting or self.stopping:
                return
            self.pool.dispatch(child, self.waiting.popleft())

    # -- claiming ----------------------------------------------------------------
    def _claim(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        if now >= self.deadlines.poll:
            self.work_maybe_due = True
        in_hand = len(self.waiting) + len(self.pool.busy())
        free = self.capacity - in_hand
        # Claim in batches: only once the waiting line is shorter than the pool.
        if not self.work_maybe_due or free <= 0 or len(self.waiting) >= self.pool.size:
            return
        claimed = self.backend.claim(worker_id=self.worker_id, queues=self.queues, limit=free)
        self.waiting.extend(claimed)
        self.deadlines.poll = now + self.config.poll_interval
        # A full batch means more may be waiting; a short one means the queue is empty.
        self.work_maybe_due = len(claimed) == free

    # -- outcomes ----------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        if not self.outcomes:
            self.outcomes_since = time.monotonic()
        self.outcomes.append(outcome)

    def _flush_if_due(self) -> None:
        if not self.outcomes and not self.unmarked_starts:
            return
        due = (
            self.stopping
            or len(self.outcomes) >= FLUSH_SIZE
            or (
                self.outcomes_since is not None
                and time.monotonic() - self.outcomes_since >= FLUSH_INTERVAL
            )
        )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered outcomes (and start stamps of jobs still running) in one go."""
        # Buffers are cleared only after the write succeeded: if the database fails,
        # the same outcomes are written on the next try (a repeat writes nothing twice,
        # since completing a process that is already gone is skipped).
        if self.unmarked_starts:
            started = list(self.unmarked_starts.items())
            self.backend.mark_started(started=started)
            for process_uuid, _ in started:
                self.unmarked_starts.pop(process_uuid, None)
        if not self.outcomes:
            return
        outcomes = list(self.outcomes)
        results = self.backend.complete_many(outcomes=outcomes)
        del self.outcomes[: len(outcomes)]
        self.outcomes_since = time.monotonic() if self.outcomes else None
        self.completed += len(outcomes)
        self._after_results(results)

    def _after_results(self, results: list[JobResult]) -> None:
        telemetry.record_results(results)
        aborted = [r for r in results if r.status in ABORTED_STATUSES]
        if aborted:
            api.dispatch_aborted_hooks(aborted)
        if self.config.log_jobs:
            for result in results:
                logger.info("job finished", extra=_result_fields(result))

    # -- timeouts and cancellation -------------------------------------------------
    def _timeout_deadlines(self) -> list[float]:
        return [
            child.started_monotonic + child.job.timeout
            for child in self.pool.busy()
            if child.job and child.job.timeout and child.started_monotonic is not None
        ]

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for child in self.pool.busy():
            job = child.job
            if job is None or not job.timeout or child.started_monotonic is None:
                continue
            if now - child.started_monotonic >= job.timeout:
                error = JobTimeout(f"job exceeded its timeout of {job.timeout} seconds")
                self._kill(child, self._failure(job, child, error, status=Status.ERRORED))

    def _check_cancellations(self) -> None:
        now = time.monotonic()
        if now < self.deadlines.cancel_check or not (self.pool.busy() or self.waiting):
            return
        self.deadlines.cancel_check = now + CANCEL_CHECK_INTERVAL
        flagged = set(self.backend.cancel_requested(worker_id=self.worker_id))
        if flagged:
            self._cancel(flagged)

    def _cancel(self, flagged: set[uuid.UUID]) -> None:
        for job in [j for j in self.waiting if j.uuid in flagged]:
            self.waiting.remove(job)
            self._record(self._cancelled(job, None))
        for child in self.pool.busy():
            if child.job and child.job.uuid in flagged:
                self._kill(child, self._cancelled(child.job, child))

    def _cancelled(self, job: JobProcess, child: Child | None) -> Outcome:
        outcome = self._failure(job, child, Cancelled("cancelled"), status=Status.CANCELLED)
        return Outcome(  # a cancelled job is not retried
            process_uuid=outcome.process_uuid,
            status=Status.CANCELLED,
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
            error_type=outcome.error_type,
            error=outcome.error,
        )

    def _kill(self, child: Child, outcome: Outcome) -> None:
        logger.warning("terminating job", extra=_job_fields(child.job, reason=outcome.error_type))
        child.job = None
        self.pool.kill(child)
        self._record(outcome)

    # -- shutdown -------------------------------------------------------------------
    def _release_waiting(self) -> None:
        if self.waiting:
            self.backend.release(process_uuids=[j.uuid for j in self.waiting])
            self.waiting.clear()

    def _abort_running(self) -> None:
        for child in self.pool.busy():
            if child.job is not None:
                self._kill(child, self._cancelled(child.job, child))

    def shut_down(self) -> None:
        try:
            self.stopping = True
            self._release_waiting()
            if self.pool.busy():
                self._abort_running()
            self.flush()
            self.pool.close()
            self.backend.deregister_worker(worker_id=self.worker_id)
        finally:
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
        created = scheduler.sync(
            self.backend,
            self.schedule,
            horizon=horizon,
            starting=starting,
            history_seconds=self.config.results_retention,
        )
        if created:
            logger.debug("scheduled occurrences enqueued", extra={"count": created})

    def run_maintenance(self) -> None:
        """Enqueue schedules, rescue dead workers' jobs, lose own orphans, prune results."""
        self._sync_schedules()
        lost = self.backend.rescue_stale_workers(timeout_seconds=self.config.heartbeat_timeout)
        lost += self._lose_orphans()
        if lost:
            logger.warning("rescued lost jobs", extra={"count": len(lost)})
            api.retry_lost(lost)
            api.dispatch_aborted_hooks(lost)
        self.backend.prune_results(older_than_seconds=self.config.results_retention)

    def _lose_orphans(self) -> list[JobResult]:
        tracked = {j.uuid for j in self.waiting}
        tracked |= {c.job.uuid for c in self.pool.busy() if c.job}
        tracked |= {o.process_uuid for o in self.outcomes}
        mine = self.backend.processes_of_worker(worker_id=self.worker_id)
        orphans = [p.uuid for p in mine if p.uuid not in tracked]
        if not orphans:
            return []
        return self.backend.lose_processes(worker_id=self.worker_id, process_uuids=orphans)

    def log_stats(self) -> None:
        logger.info(
            "worker stats",
            extra={
                "processes": len(self.pool.children),
                "running": len(self.pool.busy()),
                "waiting": len(self.waiting),
                "completed": self.completed,
            },
        )


def _assignment(job: JobProcess) -> Assignment:
    return Assignment.of(job)


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


__all__ = ["Cancelled", "ProcessDied", "Worker", "qualified_name"]
