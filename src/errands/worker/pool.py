"""The worker's child processes, as the parent sees them.

Each job a child holds sits in one of its slots, so the parent always knows
exactly which jobs a child has, and so which jobs a dead child took with it.
What runs in the child is ``child``; the messages between the two, ``protocol``.

Only a "fast" child is given jobs beyond its runners to queue: once a job has
run for ``SLOW_JOB`` seconds, the parent takes back the jobs queued behind it (a
recall) and hands them to others.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import selectors
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from errands.models import JobProcess, Outcome
from errands.worker.child import child_main
from errands.worker.protocol import (
    PREFETCH,
    MessageReader,
    Wire,
    job_to_wire,
    outcome_from_wire,
    utc_from_timestamp,
    write_message,
)

SLOW_JOB = 0.05  # seconds: a job running this long makes its child slow

_spawn = multiprocessing.get_context("spawn")


# -- the parent's view of a child ----------------------------------------------------------


@dataclass(eq=False)
class Slot:
    """One job in a child's hands, as far as the parent knows."""

    job: JobProcess
    dispatched_monotonic: float
    started_at: datetime.datetime | None = None
    started_monotonic: float | None = None

    @property
    def started(self) -> bool:
        return self.started_at is not None


@dataclass(eq=False)
class Child:
    process: BaseProcess
    inbox: Connection  # the parent writes here
    outbox: Connection  # the parent reads here
    bell: Connection  # the child rings here when the outbox is worth reading
    reader: MessageReader
    started: Any  # shared array of doubles, one per slot
    ended: Any  # shared count of the jobs whose outcome the child has written
    ready: Any  # shared flag: set once the child imported the job modules
    slots: list[Slot | None]
    runners: int
    jobs_left: int | None
    recalling: bool = False
    watching_outbox: bool = False  # a message is arriving in parts
    outcomes_read: int = 0

    @property
    def unread(self) -> int:
        """Jobs that ended whose outcome the parent has not read yet (no wake-up told it)."""
        ended: int = self.ended.value
        return max(ended - self.outcomes_read, 0)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def busy(self) -> bool:
        return any(self.slots)

    def jobs(self) -> list[Slot]:
        return [slot for slot in self.slots if slot is not None]

    def queued(self) -> list[Slot]:
        return [slot for slot in self.slots if slot is not None and not slot.started]

    def slow_since(self) -> float | None:
        """When the earliest of its running jobs began (monotonic), if any."""
        begun = [s.started_monotonic for s in self.slots if s and s.started_monotonic]
        return min(begun, default=None)

    def is_slow(self, now: float) -> bool:
        since = self.slow_since()
        return since is not None and now - since >= SLOW_JOB

    def free_slots(self, now: float) -> list[int]:
        """Slots to fill now: a slow or recalled child gets no more than it can run."""
        if self.jobs_left == 0:
            return []
        held = sum(1 for slot in self.slots if slot is not None)
        room = self.runners if self.recalling or self.is_slow(now) else len(self.slots)
        free = [index for index, slot in enumerate(self.slots) if slot is None]
        count = max(min(room - held, len(free)), 0)
        if self.jobs_left is not None:
            count = min(count, self.jobs_left)
        return free[:count]

    def notice_starts(self) -> list[Slot]:
        """Slots whose job began since the parent last looked (from shared memory)."""
        noticed = []
        for index, slot in enumerate(self.slots):
            if slot is None or slot.started:
                continue
            began = self.started[index]
            if began:
                slot.started_at = utc_from_timestamp(began)
                slot.started_monotonic = time.monotonic() - max(time.time() - began, 0.0)
                noticed.append(slot)
        return noticed


@dataclass
class Events:
    """What one wait of the pool brought."""

    finished: list[tuple[Slot, Outcome]]
    recalled: list[Slot]
    exited: list[Child]
    woken: bool


class Pool:
    """``size`` child processes with ``threads`` runners each, refilled when a child
    exits or is killed. The parent's loop waits on all of them (and on the file
    descriptors it watches) through one selector."""

    def __init__(
        self,
        *,
        size: int,
        environ: Mapping[str, str],
        max_jobs_per_child: int | None,
        threads: int = 1,
        label_output: bool = False,
    ) -> None:
        self.size = size
        self.threads = threads
        self.label_output = label_output  # jobs' output lines start with the job (``output``)
        self.environ = dict(environ)
        self.max_jobs_per_child = max_jobs_per_child
        self.children: list[Child] = []
        self.spawned = 0
        self._selector = selectors.DefaultSelector()
        # Where the children's progress reports go (errands.progress): Recorder.report.
        self.on_progress: Callable[[list[Any]], None] | None = None

    def watch(self, fd: int) -> None:
        """Also end ``wait`` when ``fd`` becomes readable (the worker's wake-up pipe)."""
        self._selector.register(fd, selectors.EVENT_READ, ("wake", None))

    def fill(self) -> None:
        while len(self.children) < self.size:
            self.children.append(self._spawn())

    def _spawn(self) -> Child:
        child_inbox, inbox = _spawn.Pipe(duplex=False)
        outbox, child_outbox = _spawn.Pipe(duplex=False)
        bell, child_bell = _spawn.Pipe(duplex=False)
        slots = self.threads + PREFETCH
        started = _spawn.RawArray("d", slots)
        ended = _spawn.RawValue("q", 0)
        ready = _spawn.RawValue("b", 0)
        process = _spawn.Process(
            target=child_main,
            args=(
                child_inbox,
                child_outbox,
                child_bell,
                self.environ,
                self.max_jobs_per_child,
                started,
                ended,
                self.label_output,
                ready,
            ),
            name="errands-job",
            daemon=True,
        )
        process.start()
        for end in (child_inbox, child_outbox, child_bell):
            end.close()
        os.set_blocking(outbox.fileno(), False)
        os.set_blocking(bell.fileno(), False)
        self.spawned += 1
        child = Child(
            process=process,
            inbox=inbox,
            outbox=outbox,
            bell=bell,
            reader=MessageReader(outbox.fileno()),
            started=started,
            ended=ended,
            ready=ready,
            slots=[None] * slots,
            runners=self.threads,
            jobs_left=self.max_jobs_per_child,
        )
        self._selector.register(bell.fileno(), selectors.EVENT_READ, ("bell", child))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child))
        return child

    # -- jobs ---------------------------------------------------------------------------
    def busy(self) -> list[Slot]:
        """Every job in the children's hands, begun or queued."""
        return [slot for child in self.children for slot in child.jobs()]

    def ready_runners(self) -> int:
        """Runners of the children that are ready to start a job at once."""
        return sum(child.runners for child in self.children if child.ready.value)

    def ended_unread(self) -> int:
        """Jobs in the children's hands that ended already (their outcomes are on the way)."""
        return sum(child.unread for child in self.children)

    def dispatch(self, waiting: deque[JobProcess]) -> int:
        """Hand jobs from the front of ``waiting`` to free slots; returns how many.

        Slots are filled round-robin over the children, so that a few jobs spread
        over the processes rather than queueing in one. Each child gets its share
        in one message.
        """
        now = time.monotonic()
        free = {child: child.free_slots(now) for child in self.children}
        batches: dict[Child, list[tuple[int, Wire]]] = {}
        while waiting and any(free.values()):
            for child, indexes in free.items():
                if indexes and waiting:
                    assigned = self._occupy(child, indexes.pop(0), waiting.popleft())
                    batches.setdefault(child, []).append(assigned)
        sent = 0
        for child, batch in batches.items():
            try:
                write_message(child.inbox.fileno(), ("assign", batch))
                sent += len(batch)
            except OSError:  # the child is gone (its exit is handled on its own)
                self._take_back(child, batch, waiting)
        return sent

    def _occupy(self, child: Child, index: int, job: JobProcess) -> tuple[int, Wire]:
        child.slots[index] = Slot(job=job, dispatched_monotonic=time.monotonic())
        child.started[index] = 0.0  # before the send: the child sets it after receiving
        if child.jobs_left is not None:
            child.jobs_left -= 1
        return index, job_to_wire(job)

    @staticmethod
    def _take_back(child: Child, batch: list[tuple[int, Wire]], waiting: deque[JobProcess]) -> None:
        """Jobs that never reached the child go back to the front of the line."""
        for index, _ in reversed(batch):
            slot = child.slots[index]
            child.slots[index] = None
            if slot is not None:
                waiting.appendleft(slot.job)
        if child.jobs_left is not None:
            child.jobs_left += len(batch)

    def notice_starts(self) -> list[Slot]:
        return [slot for child in self.children for slot in child.notice_starts()]

    def recall(self, child: Child) -> None:
        """Ask the child to give back the jobs it has not begun (answered in ``wait``)."""
        if not child.recalling:
            with contextlib.suppress(OSError):  # the child is gone: its exit says the rest
                write_message(child.inbox.fileno(), ("recall",))
                child.recalling = True

    # -- waiting and reading --------------------------------------------------------------
    def wait(self, timeout: float) -> Events:
        events = Events(finished=[], recalled=[], exited=[], woken=False)
        for key, _ in self._selector.select(max(timeout, 0.0)):
            kind, child = key.data
            if kind == "wake":
                events.woken = True
            elif kind in ("bell", "outbox"):
                if kind == "bell":
                    _drain(child.bell.fileno())
                finished, recalled = self.receive(child)
                events.finished += finished
                events.recalled += recalled
                self._watch_outbox(child)
            elif child not in events.exited:
                events.exited.append(child)
        return events

    def receive(self, child: Child) -> tuple[list[tuple[Slot, Outcome]], list[Slot]]:
        """Outcomes and recalled jobs the child has sent; each frees its slot."""
        finished: list[tuple[Slot, Outcome]] = []
        recalled: list[Slot] = []
        for message in child.reader.read():
            outcomes, given_back = message[0], message[1]
            if len(message) > 2 and self.on_progress is not None:
                self.on_progress(message[2])  # progress reports (errands.progress)
            child.outcomes_read += len(outcomes)
            for index, wire in outcomes:
                slot = self._free(child, index)
                if slot is not None:
                    finished.append((slot, outcome_from_wire(slot.job.uuid, wire)))
            if given_back is not None:
                recalled += [s for s in (self._free(child, i) for i in given_back) if s]
                child.recalling = False
        return finished, recalled

    def _watch_outbox(self, child: Child) -> None:
        """Wake on the outbox itself while a message arrives in parts (it may be larger
        than the pipe holds: the child rang before writing it, and blocks until it is read)."""
        if child.reader.partial != child.watching_outbox:
            fd = child.outbox.fileno()
            if child.watching_outbox:
                self._selector.unregister(fd)
            else:
                self._selector.register(fd, selectors.EVENT_READ, ("outbox", child))
            child.watching_outbox = not child.watching_outbox

    @staticmethod
    def _free(child: Child, index: int) -> Slot | None:
        slot = child.slots[index]
        child.slots[index] = None
        return slot

    # -- children ending ---------------------------------------------------------------------
    def remove(self, child: Child) -> list[Slot]:
        """Forget an exited child (reaped, so ``fill`` replaces it); returns the jobs it
        still held. Call ``receive`` first for the outcomes it sent before exiting."""
        child.process.join(timeout=1)
        child.notice_starts()  # the shared memory outlives the process
        if child in self.children:
            self.children.remove(child)
            self._selector.unregister(child.bell.fileno())
            self._selector.unregister(child.process.sentinel)
            if child.watching_outbox:
                self._selector.unregister(child.outbox.fileno())
                child.watching_outbox = False
        for pipe in (child.inbox, child.outbox, child.bell):
            pipe.close()
        held = child.jobs()
        child.slots = [None] * len(child.slots)
        return held

    def kill(self, child: Child) -> tuple[list[tuple[Slot, Outcome]], list[Slot]]:
        """Kill the child: (outcomes it sent before dying, jobs it still held)."""
        if child.process.is_alive():
            child.process.kill()
        child.process.join(timeout=5)
        finished, recalled = self.receive(child)
        return finished, recalled + self.remove(child)

    def retire_exhausted(self) -> None:
        """Children that reached max jobs per child exit by themselves once idle."""
        for child in list(self.children):
            if child.jobs_left == 0 and not child.busy:
                child.process.join(timeout=5)
                self.remove(child)

    def close(self, *, kill: bool = False) -> None:
        for child in list(self.children):
            if kill:
                self.kill(child)
                continue
            with contextlib.suppress(OSError):  # already gone
                write_message(child.inbox.fileno(), None)
        deadline = time.monotonic() + 5
        for child in list(self.children):
            child.process.join(timeout=max(deadline - time.monotonic(), 0))
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            self.remove(child)
        self._selector.close()


def _drain(fd: int) -> None:
    """Empty a bell pipe (its bytes only say "read the outbox")."""
    with contextlib.suppress(OSError):  # BlockingIOError: empty now
        while os.read(fd, 4096):
            pass
