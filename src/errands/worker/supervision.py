"""Supervision: the jobs in the children's hands end, one way or another.

A job handed to a child ends with the outcome the child reports, or the parent
ends it:

* past its ``timeout`` (counted from its start): its child is killed, the job
  is ERRORED with ``JobTimeout`` (retried as any failure);
* flagged for cancellation: a job not begun is recalled from its child, one
  that began has its child killed; either way it is CANCELLED, never retried;
* its child died: a job that began is LOST (retried as any failure); one that
  had not begun is handed to another child, unless ``MAX_BOUNCES`` children
  died holding it, then it is ERRORED (children die before it starts);
* killed with a neighbour (``worker_threads`` above one: a kill stops every job
  of the child): one that began is LOST and enqueued again at the same attempt,
  one that had not begun goes back to the waiting line;
* at shutdown: the first signal puts back jobs not begun (released to the
  database); a second one, or ``worker_drain_timeout``, kills the children and
  records the jobs that began CANCELLED.

Each ending's status, error type, message and retry rule is stated in
``errands.lifecycle``; the parent records what it gives.

Children report a start through shared memory, without waking the parent, so
the parent looks every ``START_CHECK_INTERVAL`` while a job is unseen.
"""

from __future__ import annotations

import logging
import signal
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from errands import lifecycle
from errands.backends import Backend
from errands.formatting import attempt_number
from errands.models import JobProcess, Outcome
from errands.worker.batches import Recorder
from errands.worker.execution import Assignment, ended
from errands.worker.pool import SLOW_JOB, Child, Pool, Slot

logger = logging.getLogger("errands")

START_CHECK_INTERVAL = 0.05  # seconds between looks for jobs that began running
MAX_BOUNCES = 3  # a job handed to this many children that died before it began fails

KillReason = Literal["timeout", "cancel"]

# Their names are stored as results' error types (lifecycle.PROCESS_DIED ...): they
# keep the public path. The parent records the endings they name without raising them.
# Cancelled is the exception: every CANCELLED result has the plain error type
# ``Cancelled`` (lifecycle.CANCELLED), pending or running; the class stays importable.


class ProcessDied(Exception):
    """The child process running a job exited without reporting an outcome."""

    __module__ = "errands.worker"


class Cancelled(Exception):
    """The job was cancelled by an operator or by a second shutdown signal.

    Its results' error type is plain ``Cancelled`` (``errands.lifecycle.CANCELLED``),
    as for a job cancelled while pending, not this class's path.
    """

    __module__ = "errands.worker"


class Interrupted(Exception):
    """The job's process was killed to stop another job running in it.

    With ``worker_threads`` above one a child runs several jobs, and stopping one
    (timeout, cancellation) kills them all. The others are recorded LOST and
    enqueued again at the same attempt: the interruption uses up none of their retries.
    """

    __module__ = "errands.worker"


class Supervisor:
    """Ends the jobs of ``pool``'s children that the children do not end themselves.

    Outcomes the children sent before a kill or an exit go to ``on_finished``;
    outcomes the parent makes go to ``recorder``; jobs that go back in line go to
    the front of ``waiting``.
    """

    def __init__(
        self,
        *,
        pool: Pool,
        waiting: deque[JobProcess],
        recorder: Recorder,
        on_finished: Callable[[Slot, Outcome], None],
    ) -> None:
        self.pool = pool
        self.waiting = waiting
        self.recorder = recorder
        self.on_finished = on_finished
        pool.on_progress = recorder.report  # the children's progress reports
        self.cancelling: set[uuid.UUID] = set()  # flagged jobs being recalled from a child
        self.bounces: dict[uuid.UUID, int] = {}  # jobs whose child died before they began
        self.start_check_at = 0.0  # monotonic

    def forget(self, job_uuid: uuid.UUID) -> None:
        """The job ended in a child: no bounce counts against it any more."""
        self.bounces.pop(job_uuid, None)

    # -- watching --------------------------------------------------------------------
    def watch(self, now: float, *, stopping: bool) -> None:
        """Notice jobs that began (to stamp and time them), kill jobs past their
        timeout, and take back queued jobs from children that cannot start them soon."""
        if now >= self.start_check_at:
            self.start_check_at = now + START_CHECK_INTERVAL
            self.notice_starts()
        for child in list(self.pool.children):
            late = [s for s in child.jobs() if s.job.timeout and now >= self._timeout_at(s)]
            if late:
                self._kill(child, {slot.job.uuid: "timeout" for slot in late})
            elif child.queued() and (stopping or child.is_slow(now) or self._cancels(child)):
                self.pool.recall(child)

    def notice_starts(self) -> None:
        """Take note of the jobs that began since the last look (their start is stamped)."""
        for slot in self.pool.notice_starts():
            if slot.started_at is not None:
                self.recorder.stamp(slot.job.uuid, slot.started_at)

    def deadlines(self, running: list[Slot]) -> list[float]:
        """When ``watch`` has something to do for the jobs ``running`` (monotonic)."""
        deadlines = [self._timeout_at(slot) for slot in running if slot.job.timeout]
        if any(not slot.started for slot in running):
            deadlines.append(self.start_check_at)
        return deadlines + self._recall_deadlines()

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

    def _timeout_at(self, slot: Slot) -> float:
        """A job's time is counted from its start; one not seen started is looked at again."""
        if slot.started_monotonic is None or not slot.job.timeout:
            return self.start_check_at
        return slot.started_monotonic + slot.job.timeout

    # -- children exiting and giving back ----------------------------------------------
    def child_exited(self, child: Child) -> None:
        """Account for every job of a child that exited (see the module's docstring)."""
        if child not in self.pool.children:
            return  # killed earlier in this turn; its jobs are accounted for
        finished, recalled = self.pool.receive(child)  # whatever it sent before exiting
        for slot, outcome in finished:
            self.on_finished(slot, outcome)
        self.returned(recalled)
        held = self.pool.remove(child)
        exitcode = child.process.exitcode
        for slot in reversed(held):
            if not slot.started and self._bounce(slot.job):
                continue  # it had not begun: another child runs it
            ending = lifecycle.process_died(child.pid, exitcode, begun=slot.started)
            logger.error("job process died", extra=job_fields(slot.job, exitcode=exitcode))
            self.recorder.record(self._ended(slot, ending))

    def _bounce(self, job: JobProcess) -> bool:
        """Put a job a dead child had not begun back in line, unless it did so too often."""
        bounces = self.bounces[job.uuid] = self.bounces.get(job.uuid, 0) + 1
        if bounces >= MAX_BOUNCES:
            del self.bounces[job.uuid]
            return False
        self.waiting.appendleft(job)
        return True

    def returned(self, slots: list[Slot]) -> None:
        """Jobs a child gave back (recalled before they began) go back to the line,
        or end CANCELLED if they were recalled to be cancelled."""
        for slot in reversed(slots):
            if slot.job.uuid in self.cancelling:
                self.cancelling.discard(slot.job.uuid)
                self.recorder.record(self._cancelled(slot))
            else:
                self.waiting.appendleft(slot.job)

    # -- cancelling and killing -----------------------------------------------------------
    def cancel(self, flagged: set[uuid.UUID]) -> None:
        """End the ``flagged`` jobs this worker holds: waiting, queued in a child, or running."""
        for job in [j for j in self.waiting if j.uuid in flagged]:
            self.waiting.remove(job)
            self.recorder.record(self._cancelled(Slot(job=job, dispatched_monotonic=0.0)))
        for child in list(self.pool.children):
            child.notice_starts()
            targets: dict[uuid.UUID, KillReason]
            targets = {s.job.uuid: "cancel" for s in child.jobs() if s.job.uuid in flagged}
            begun = {u: r for u, r in targets.items() if _begun(child, u)}
            if begun:
                self._kill(child, begun)
            elif targets:
                # Queued in the child, not begun: recalled, then cancelled (``returned``).
                self.cancelling |= targets.keys()
                self.pool.recall(child)

    def abort_running(self) -> list[Slot]:
        """Kill every child: running jobs end CANCELLED, jobs not begun go back.
        Returns the jobs it cancelled."""
        cancelled = []
        for child in list(self.pool.children):
            child.notice_starts()
            targets: dict[uuid.UUID, KillReason]
            targets = {s.job.uuid: "cancel" for s in child.jobs() if s.started}
            if child.busy:
                cancelled += self._kill(child, targets)
        return cancelled

    def release_waiting(self, backend: Backend) -> None:
        """Give the jobs of the waiting line back to the database, for any worker to claim."""
        if self.waiting:
            backend.release(process_uuids=[j.uuid for j in self.waiting])
            self.waiting.clear()

    def _kill(self, child: Child, targets: dict[uuid.UUID, KillReason]) -> list[Slot]:
        """Kill a child to stop the ``targets`` among its jobs; returns those it stopped.

        Jobs that ended before the kill keep their own outcome. The others it held
        (only with ``worker_threads`` above one) are not at fault: one that began
        is recorded LOST and enqueued again at the same attempt; one that had not
        begun goes back to the waiting line.
        """
        finished, held = self.pool.kill(child)
        for slot, outcome in finished:
            self.on_finished(slot, outcome)
        stopped = []
        for slot in held:
            reason = targets.get(slot.job.uuid)
            if reason is not None:
                logger.warning("terminating job", extra=job_fields(slot.job, reason=reason))
                self.recorder.record(self._stopped(slot, reason))
                stopped.append(slot)
            elif slot.started:
                self.recorder.record(self._interrupted(slot, targets))
            else:
                self.waiting.appendleft(slot.job)
        return stopped

    # -- the outcomes the parent makes ----------------------------------------------------
    def _ended(self, slot: Slot, ending: lifecycle.Ending) -> Outcome:
        self.recorder.forget_start(slot.job.uuid)
        return ended(Assignment.of(slot.job), ending, started_at=slot.started_at)

    def _cancelled(self, slot: Slot) -> Outcome:
        return self._ended(slot, lifecycle.CANCELLED_RUNNING)  # never retried

    def _stopped(self, slot: Slot, reason: KillReason) -> Outcome:
        if reason == "cancel":
            return self._cancelled(slot)
        return self._ended(slot, lifecycle.timed_out(slot.job.timeout))

    def _interrupted(self, slot: Slot, targets: dict[uuid.UUID, KillReason]) -> Outcome:
        stopped = ", ".join(f"{job} ({reason})" for job, reason in targets.items())
        return self._ended(slot, lifecycle.interrupted(stopped))  # again at the same attempt


class ShutdownNotes:
    """What a stopping worker tells its operator, on the ``errands`` logger at INFO.

    The first signal says what happens to the jobs in hand ("shutting down (Ctrl-C):
    finishing 1 running job, 2 claimed jobs returned to the queue; Ctrl-C again
    cancels it"), then each time a running job ends, how many still run ("1 job
    still running", "all jobs finished, exiting"); the second signal (or the
    drain timeout) says which jobs it cancelled. ``signum`` is None for a
    ``Worker.stop()`` that no signal made.
    """

    def __init__(self, *, pool: Pool, waiting: deque[JobProcess], drain_timeout: float | None):
        self.pool = pool
        self.waiting = waiting
        self.drain_timeout = drain_timeout
        self.announced = False
        self.aborted = False
        self.running: int | None = None  # running jobs last told

    def _running(self) -> list[Slot]:
        return [slot for slot in self.pool.busy() if slot.started]

    def stopping(self, signum: int | None) -> None:
        """The first stop: what runs on, what goes back (call once job starts are noticed)."""
        if self.announced:
            return
        self.announced = True
        running = len(self._running())
        returned = len(self.waiting) + len(self.pool.busy()) - running
        what = [f"finishing {_jobs(running, 'running job')}"] if running else ["no job running"]
        if returned:
            what.append(f"{_jobs(returned, 'claimed job')} returned to the queue")
        if running:
            again: dict[int, str] = {
                signal.SIGINT: "Ctrl-C again",
                signal.SIGTERM: "a second SIGTERM",
            }
            how = "a second stop" if signum is None else again.get(signum, "a second signal")
            tail = f"{how} cancels {_them(running)}"
            if self.drain_timeout is not None:
                tail += f", as does the drain timeout in {self.drain_timeout:g} s"
        else:
            tail = "exiting"
        logger.info(f"shutting down{_by(signum)}: {', '.join(what)}; {tail}")
        self.running = running

    def progress(self) -> None:
        """After the first stop: tell how many jobs still run each time one ends."""
        if self.running is None or self.aborted:
            return
        running = len(self._running())
        if running < self.running:
            left = f"{_jobs(running, 'job')} still running" if running else None
            logger.info(left or "all jobs finished, exiting")
        self.running = running

    @staticmethod
    def again(signum: int | None) -> str:
        """What a second stop is called in the log."""
        return "stopped again" if signum is None else f"second signal{_by(signum)}"

    def cancelled(self, slots: list[Slot], cause: str) -> None:
        """``cause`` (see ``again``; "drain timeout") cancelled ``slots``: say which, once."""
        if self.aborted:
            return
        self.aborted = True
        if slots:
            names = ", ".join(f"{s.job.job_class} {str(s.job.uuid)[:8]}" for s in slots[:5])
            more = f" and {len(slots) - 5} more" if len(slots) > 5 else ""
            done = f"cancelled {_jobs(len(slots), 'running job')} ({names}{more})"
        else:
            done = "no job was running"
        level = logging.WARNING if cause == "drain timeout" else logging.INFO
        logger.log(level, f"{cause}: {done}; exiting")


def _jobs(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _them(count: int) -> str:
    return "it" if count == 1 else "them"


def _by(signum: int | None) -> str:
    """`` (Ctrl-C)``, `` (SIGTERM)``: the signal that stopped the worker, if one did."""
    if signum is None:
        return ""
    if signum == signal.SIGINT:
        return " (Ctrl-C)"
    try:
        return f" ({signal.Signals(signum).name})"
    except ValueError:
        return f" (signal {signum})"


def _begun(child: Child, job_uuid: uuid.UUID) -> bool:
    return any(s.started for s in child.jobs() if s.job.uuid == job_uuid)


def job_fields(job: JobProcess | None, **more: Any) -> dict[str, Any]:
    """A job's fields for a log record."""
    if job is None:
        return more
    return {
        "job_class": job.job_class,
        "job_uuid": str(job.uuid),
        "queue": job.queue,
        "priority": job.priority,
        "attempt": attempt_number(job),  # from 1, as every other surface
        "worker_id": str(job.worker_id),
        **more,
    }
