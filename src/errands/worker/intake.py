"""Intake: how many jobs the worker holds, and claiming them.

**Pacing**: how many jobs a worker holds per child process, claimed ahead,
waiting or running. Holding more jobs lets the children keep working while the
next claim is on its way (Little's law: the jobs in hand are the rate times how long each stays in
hand, and a claim's round trip is part of that). Holding too many makes jobs wait
in one worker while another is idle, and makes a newly enqueued urgent job wait
behind them. The right number depends on how long the jobs run, so by default
(``worker_max_pending_per_process`` unset, or "auto") the worker measures it: it
holds about ``AHEAD_SECONDS`` of work per process, never fewer than
``AUTO_FLOOR`` jobs (the reference design's fixed default, kept for long jobs)
and never more than ``AUTO_CEILING``. A number in the setting fixes the limit.

**Claiming.** ``Intake`` claims into the waiting line as many jobs as there is
room for, when there may be some (a wake-up, a poll timeout, a full claim, a
scheduled occurrence falling due), one claim at a time on a ``Claimer`` thread
with its own connection: the time it takes to refill the slots is one claim's
round trip, not that plus a write's.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from errands import telemetry
from errands.backends.store import ClaimRoom
from errands.models import JobProcess
from errands.worker.pool import Pool
from errands.worker.schedules import Schedules
from errands.worker.timing import Backoff

AHEAD_SECONDS = 0.05  # work a process holds at most, at the measured job length
AUTO_FLOOR = 10  # jobs per process, however long the jobs run
AUTO_CEILING = 200  # jobs per process, however short the jobs are
SMOOTHING = 0.05  # weight of each new job's run time in the running average
OVERHEAD_SECONDS = 0.0001  # a job's cost around its run() (pipes, parameters), at least


# -- pacing ----------------------------------------------------------------------------


class ClaimAhead:
    """The number of jobs a worker may hold per child process."""

    def __init__(self, *, fixed: int | None, threads: int) -> None:
        self.fixed = fixed
        self.threads = threads
        self.floor = max(fixed or AUTO_FLOOR, threads)
        self.ceiling = max(fixed or AUTO_CEILING, threads)
        self.average_seconds: float | None = None  # of a job's run, once one was seen
        self.per_process = self.floor

    @property
    def adaptive(self) -> bool:
        return self.fixed is None

    def observe(self, run_seconds: float) -> None:
        """Take one finished job's run time into account."""
        seconds = max(run_seconds, 0.0) + OVERHEAD_SECONDS
        average = self.average_seconds
        average = seconds if average is None else average + (seconds - average) * SMOOTHING
        self.average_seconds = average
        if self.fixed is None:
            wanted = int(self.threads * AHEAD_SECONDS / average)
            self.per_process = min(max(wanted, self.floor), self.ceiling)

    @property
    def refills_in_batches(self) -> bool:
        """Whether half of what a process holds lasts long enough (``AHEAD_SECONDS`` / 2,
        at the measured job length) for a refill to wait until that half is left: then
        one claim brings several jobs, instead of one claim (a round trip, a statement
        and a commit) per ended job. Short jobs refill at once, as the claims are large."""
        average = self.average_seconds
        if average is None:
            return False
        return average * self.per_process / 2 / self.threads >= AHEAD_SECONDS / 2

    def describe(self) -> str:
        if self.fixed is not None:
            return f"{self.per_process}"
        return f"auto, {self.floor} to {self.ceiling} by how long jobs run"


# -- per-queue caps ----------------------------------------------------------------------


def split_queue_caps(queues: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """``["mail:4", "default"]`` as the queue names and this worker's caps ({"mail": 4}:
    at most 4 jobs of mail in its hands at once)."""
    names: list[str] = []
    caps: dict[str, int] = {}
    for entry in queues:
        name, colon, number = entry.rpartition(":") if ":" in entry else (entry, "", "")
        if colon:
            if not number.strip().isdigit() or int(number) < 1 or not name:
                raise ValueError(
                    f"queue {entry!r}: expected NAME or NAME:N, N a whole number of at least 1"
                )
            caps[name] = int(number)
        if name not in names:
            names.append(name)
    return names, caps


# -- claiming ---------------------------------------------------------------------------


@dataclass
class Claim:
    """One claim of up to ``limit`` jobs: ``claimed`` once done, else ``error``."""

    limit: int
    room: ClaimRoom | None = None
    wakes: int = 0  # the intake's wake-ups when the claim was submitted
    claimed: list[JobProcess] | None = None
    error: Exception | None = None


class Claimer:
    """Runs one claim at a time on a thread of its own and calls ``on_done`` after each."""

    def __init__(
        self,
        claim: Callable[[int, ClaimRoom | None], list[JobProcess]],
        on_done: Callable[[], None],
    ) -> None:
        self._claim = claim
        self._on_done = on_done
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="errands-claim")
        self._in_flight: tuple[Claim, Future[None]] | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def submit(self, limit: int, room: ClaimRoom | None = None, *, wakes: int = 0) -> None:
        if self._in_flight is not None:
            raise RuntimeError("a claim is already in flight")
        claim = Claim(limit=limit, room=room, wakes=wakes)
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
            claim.claimed = self._claim(claim.limit, claim.room)
        except Exception as exc:
            claim.error = exc


class Intake:
    """Fills the worker's waiting line from the database.

    A claim is made only while there is room (``room``), and only when work may be
    due: after a wake-up, a full claim (more may wait), a poll timeout or a
    scheduled occurrence falling due; a short claim means the queues are empty
    until one of those. A failed claim claimed nothing, and is tried again once
    ``backoff`` allows.
    """

    def __init__(
        self,
        *,
        claim: Callable[[int, ClaimRoom | None], list[JobProcess]],
        on_done: Callable[[], None],
        waiting: deque[JobProcess],
        pool: Pool,
        pacing: ClaimAhead,
        poll_interval: float,
        schedules: Schedules,
        backoff: Backoff,
        queue_caps: Mapping[str, int] | None = None,
        queue_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.claimer = Claimer(claim, on_done=on_done)
        self.queue_caps = dict(queue_caps or {})
        self.queue_limits = dict(queue_limits or {})
        self.rate_retry_at: float | None = None  # monotonic: a rate lets held jobs in
        self.idle_wanted = False  # jobs with a rate wait for one of this worker's runners
        #: claimed workflow jobs (Claimed.in_workflows), until their outcome is recorded
        self.in_workflows: set[uuid.UUID] = set()
        self.waiting = waiting
        self.pool = pool
        self.pacing = pacing
        self.poll_interval = poll_interval
        self.schedules = schedules
        self.backoff = backoff
        self.work_maybe_due = True
        self.wakes = 0  # wake-ups so far (see woken)
        self.poll_at = 0.0  # monotonic: claim then even without a wake-up

    @property
    def capacity(self) -> int:
        """Jobs in hand (running or waiting) at most."""
        return self.pool.size * self.pacing.per_process

    def room(self) -> int:
        """How many jobs a claim may take now (0: none).

        With a long waiting line, claim in batches, once it is down to half of what
        may be held: the children keep working on the rest while the claim is on its
        way. A short line (it ends in the children's slots) is refilled as soon as a
        slot frees up, one claim at a time, unless jobs are long enough to refill in
        batches (``ClaimAhead.refills_in_batches``) and every runner has one: then once
        half of what may be held has ended.
        """
        if len(self.waiting) > self.capacity // 2:
            return 0
        # Jobs that ended are no longer in hand, even before their outcomes are read.
        held = len(self.waiting) + len(self.pool.busy()) - self.pool.ended_unread()
        if self.pacing.refills_in_batches and held > max(
            self.capacity // 2, self.pool.ready_runners()
        ):
            return 0  # every runner busy and more than half in hand: see refills_in_batches
        return max(self.capacity - held, 0)

    def limit(self, now: float) -> int:
        """How many jobs to claim now (0: not now)."""
        if now >= self.poll_at:
            self.work_maybe_due = True
        if self.rate_retry_at is not None and now >= self.rate_retry_at:
            self.rate_retry_at = None
            self.work_maybe_due = True
        if self.schedules.due(now):
            self.work_maybe_due = True
        return self.room() if self.work_maybe_due else 0

    def woken(self) -> None:
        """Work may be due (a notification, a signal): claim at the next turn. Counted,
        so that a claim on its way when it came, which may have missed that work, is
        followed by another however short it comes back (``apply``)."""
        self.wakes += 1
        self.work_maybe_due = True

    def start(self, now: float) -> None:
        """Claim in the background if there is room (and no claim is on its way already)."""
        if self.claimer.busy or self.backoff.waiting(now):
            return
        limit = self.limit(now)
        if limit:
            self.poll_at = now + self.poll_interval
            self.claimer.submit(limit, self.claim_room(), wakes=self.wakes)

    def runner_freed(self) -> None:
        """A job of this worker ended: claim again if rate-limited jobs wait for a runner."""
        if self.idle_wanted:
            self.work_maybe_due = True

    def claim_room(self) -> ClaimRoom:
        """What bounds the next claim besides its limit: the idle runners of ready
        children (jobs with a rate limit go only where they start at once: their start
        is counted at the claim), this worker's per-queue caps and queue_limits."""
        in_hand = [slot.job for slot in self.pool.busy()] + list(self.waiting)
        idle = max(self.pool.ready_runners() - len(in_hand), 0)
        rooms = {}
        for queue, cap in self.queue_caps.items():
            held = sum(1 for job in in_hand if job.queue == queue)
            rooms[queue] = max(cap - held, 0)
        return ClaimRoom(rooms=rooms, idle=idle, queue_limits=self.queue_limits)

    def collect(self, *, wait: bool = False) -> None:
        """Take in the claim in flight once it is done (waiting for it if asked)."""
        claim = self.claimer.collect(wait=wait)
        if claim is not None:
            self.apply(claim)

    def apply(self, claim: Claim) -> None:
        """Claimed jobs join the waiting line; a failure backs off."""
        if claim.claimed is None:
            self.backoff.failed("claim", claim.error or RuntimeError("claim failed"))
            return
        self.waiting.extend(claim.claimed)
        self.in_workflows |= getattr(claim.claimed, "in_workflows", frozenset())
        telemetry.record_expired(getattr(claim.claimed, "expired", ()))
        # A full claim means more may be waiting; a short one means the queue was empty
        # when it looked, unless a wake-up came since (a job committed after its snapshot).
        self.work_maybe_due = len(claim.claimed) == claim.limit or claim.wakes != self.wakes
        self.idle_wanted = getattr(claim.claimed, "wants_idle", False)
        retry_in = getattr(claim.claimed, "retry_in", None)
        if retry_in is not None:  # jobs a rate limit held: look again when it lets them in
            self.rate_retry_at = time.monotonic() + retry_in
        self.backoff.answered("claim")

    def next_look(self) -> list[float]:
        """When the loop should wake to claim without being woken (monotonic times).

        Without room (or with a claim on its way) there is nothing to poll for: a
        slot freeing up, or the claim returning, wakes the loop.
        """
        if self.claimer.busy or self.room() <= 0:
            return []
        rate = [] if self.rate_retry_at is None else [self.rate_retry_at]
        return [max(self.poll_at, self.backoff.retry_at), *rate, *self.schedules.wakeups[:1]]

    def close(self) -> None:
        self.claimer.close()
