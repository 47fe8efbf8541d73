"""The worker's child processes, and the protocol between the parent and them.

A child is a spawned Python process that imports the job modules, then runs the
jobs its parent assigns it, each in one of its ``worker_threads`` slots: with one
slot (the default) a child runs one job at a time on its main thread; with more,
each slot is a thread, and ``async def run()`` jobs run on one event loop shared
by the child's slots. A slot holds at most one job, so the parent always knows
exactly which jobs a child has in hand, and so which jobs a dead child took with it.

The protocol, chosen to cost as little as possible per job (plain tuples pickle
in about a microsecond, dataclasses in tens):

* parent -> child: a list of ``(slot, assignment fields)``, or ``None``: finish
  the jobs in hand, then exit;
* child -> parent: ``(slot, outcome fields)`` when a job has ended;
* shared memory: ``started[slot]`` is the wall-clock time at which the slot's
  current job began, or 0.0 before that. The parent resets it before it assigns
  the slot, the child sets it before the job's code runs; the pipe orders the
  two. Reading it costs the parent no message and no wake-up per job, yet it
  tells the parent, even after the child died, which of its jobs had begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import inspect
import logging
import multiprocessing
import os
import pickle
import selectors
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from errands import settings
from errands.execution import Assignment, Handler, execute, import_string
from errands.jobs import Job
from errands.models import JobProcess, Outcome, Requeue, Status

logger = logging.getLogger("errands")

_spawn = multiprocessing.get_context("spawn")
_PICKLE = pickle.HIGHEST_PROTOCOL
_STATUSES = {status.value: status for status in Status}

Wire = tuple[Any, ...]


# -- the wire format -------------------------------------------------------------------


def assignment_to_wire(assignment: Assignment) -> Wire:
    """Every field of the assignment, uuids as their 16 bytes (no other field is bytes)."""
    return tuple(
        value.bytes if isinstance(value, uuid.UUID) else value
        for value in (getattr(assignment, f.name) for f in _ASSIGNMENT_FIELDS)
    )


def assignment_from_wire(wire: Wire) -> Assignment:
    values: list[Any] = [uuid.UUID(bytes=v) if isinstance(v, bytes) else v for v in wire]
    return Assignment(*values)


_ASSIGNMENT_FIELDS = fields(Assignment)


def outcome_to_wire(outcome: Outcome) -> Wire:
    """The outcome without its process uuid (the parent knows it from the slot)."""
    requeue = outcome.requeue
    return (
        outcome.status.value,
        outcome.started_at.timestamp() if outcome.started_at else None,
        outcome.ended_at.timestamp(),
        outcome.error_type,
        outcome.error,
        outcome.traceback,
        outcome.return_value,
        (requeue.delay_seconds, requeue.retry_attempt) if requeue else None,
    )


def outcome_from_wire(process_uuid: uuid.UUID, wire: Wire) -> Outcome:
    status, started, ended, error_type, error, traceback, return_value, requeue = wire
    return Outcome(
        process_uuid=process_uuid,
        status=_STATUSES[status],
        started_at=None if started is None else _utc_from_timestamp(started),
        ended_at=_utc_from_timestamp(ended),
        error_type=error_type,
        error=error,
        traceback=traceback,
        return_value=return_value,
        requeue=None if requeue is None else Requeue(*requeue),
    )


def _utc_from_timestamp(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


# -- the child ---------------------------------------------------------------------------


def child_main(
    conn: Connection, environ: Mapping[str, str], max_jobs: int | None, started: Any
) -> None:
    """Entry point of a child process."""
    # The parent decides about shutdown: a Ctrl-C on the terminal reaches the whole
    # process group, and the child must finish its jobs unless the parent kills them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(environ)
    settings.reset()
    current = settings.current()
    for module in current.import_modules:
        importlib.import_module(module)
    runner = ChildRunner(conn, started, current.middleware, threads=current.worker_threads)
    runner.serve(max_jobs)


class ChildRunner:
    """Receives assignments, runs each in its slot, sends each outcome back."""

    def __init__(
        self, conn: Connection, started: Any, middleware: Iterable[str], *, threads: int
    ) -> None:
        self.conn = conn
        self.started = started
        self.loop = SharedEventLoop()
        self.handler = build_handler(middleware, innermost=self.loop.run_job)
        self.send_lock = threading.Lock()
        self.executor = ThreadPoolExecutor(threads, "errands-slot") if threads > 1 else None

    def serve(self, max_jobs: int | None) -> None:
        received = 0
        try:
            while max_jobs is None or received < max_jobs:
                try:
                    message = pickle.loads(self.conn.recv_bytes())
                except (EOFError, OSError):
                    return  # the parent is gone
                if message is None:
                    return
                for slot, wire in message:
                    received += 1
                    self._start(slot, wire)
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)  # jobs in hand finish first

    def _start(self, slot: int, wire: Wire) -> None:
        if self.executor is None:
            self._run(slot, wire)
        else:
            self.executor.submit(self._run, slot, wire)

    def _run(self, slot: int, wire: Wire) -> None:
        assignment = assignment_from_wire(wire)
        self.started[slot] = time.time()
        outcome = execute(assignment, self.handler)
        message = pickle.dumps((slot, outcome_to_wire(outcome)), _PICKLE)
        with self.send_lock, contextlib.suppress(OSError):  # OSError: the parent is gone
            self.conn.send_bytes(message)


def build_handler(middleware: Iterable[str], *, innermost: Handler) -> Handler:
    """``innermost`` wrapped by each middleware, the first listed outermost
    (the contract of ``execution.build_handler``, with this child's way to run a job)."""
    handler = innermost
    for path in reversed(list(middleware)):
        handler = import_string(path)(handler)
    return handler


class SharedEventLoop:
    """One event loop per child, on its own thread, for ``async def run()`` jobs.

    A slot that runs a coroutine job waits for it here, so the child's async jobs
    (up to one per slot) run concurrently on one loop, and loop-bound resources
    (HTTP sessions, connection pools) can outlive a single job.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run_job(self, job: Job) -> Any:
        value = job.run()
        if inspect.isawaitable(value):
            return asyncio.run_coroutine_threadsafe(_awaited(value), self._started()).result()
        return value

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="errands-event-loop", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop


async def _awaited(value: Any) -> Any:
    return await value


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
    conn: Connection
    started: Any  # shared array of doubles, one per slot
    slots: list[Slot | None]
    jobs_left: int | None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def busy(self) -> bool:
        return any(self.slots)

    def jobs(self) -> list[Slot]:
        return [slot for slot in self.slots if slot is not None]

    def free_slots(self) -> list[int]:
        if self.jobs_left == 0:
            return []
        free = [index for index, slot in enumerate(self.slots) if slot is None]
        return free if self.jobs_left is None else free[: self.jobs_left]

    def notice_starts(self) -> list[Slot]:
        """Slots whose job began since the parent last looked (from shared memory)."""
        noticed = []
        for index, slot in enumerate(self.slots):
            if slot is None or slot.started:
                continue
            began = self.started[index]
            if began:
                slot.started_at = _utc_from_timestamp(began)
                slot.started_monotonic = time.monotonic() - max(time.time() - began, 0.0)
                noticed.append(slot)
        return noticed


@dataclass
class Events:
    """What one wait of the pool brought."""

    finished: list[tuple[Slot, Outcome]]
    exited: list[Child]
    woken: bool


class Pool:
    """A fixed number of child processes with ``threads`` slots each, refilled when a
    child exits or is killed. The parent's loop waits on all of them (and on the
    extra file descriptors it watches) through one selector."""

    def __init__(
        self,
        *,
        size: int,
        environ: Mapping[str, str],
        max_jobs_per_child: int | None,
        threads: int = 1,
    ) -> None:
        self.size = size
        self.threads = threads
        self.environ = dict(environ)
        self.max_jobs_per_child = max_jobs_per_child
        self.children: list[Child] = []
        self.spawned = 0
        self._selector = selectors.DefaultSelector()

    @property
    def slots(self) -> int:
        return self.size * self.threads

    def watch(self, fd: int) -> None:
        """Also end ``wait`` when ``fd`` becomes readable (the worker's wake-up pipe)."""
        self._selector.register(fd, selectors.EVENT_READ, ("wake", None))

    def fill(self) -> None:
        while len(self.children) < self.size:
            self.children.append(self._spawn())

    def _spawn(self) -> Child:
        parent_conn, child_conn = _spawn.Pipe()
        started = _spawn.RawArray("d", self.threads)
        process = _spawn.Process(
            target=child_main,
            args=(child_conn, self.environ, self.max_jobs_per_child, started),
            name="errands-job",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self.spawned += 1
        child = Child(
            process=process,
            conn=parent_conn,
            started=started,
            slots=[None] * self.threads,
            jobs_left=self.max_jobs_per_child,
        )
        self._selector.register(parent_conn.fileno(), selectors.EVENT_READ, ("conn", child))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child))
        return child

    # -- jobs ---------------------------------------------------------------------------
    def busy(self) -> list[Slot]:
        """Every job in the children's hands."""
        return [slot for child in self.children for slot in child.jobs()]

    def free_slots(self) -> int:
        return sum(len(child.free_slots()) for child in self.children)

    def dispatch(self, waiting: deque[JobProcess]) -> int:
        """Hand jobs from the front of ``waiting`` to free slots; returns how many.

        Slots are filled round-robin over the children, so that a few jobs spread
        over the processes rather than queueing for the threads of one. Each child
        gets its share in one message.
        """
        free = {child: child.free_slots() for child in self.children}
        batches: dict[Child, list[tuple[int, Wire]]] = {}
        while waiting and any(free.values()):
            for child, indexes in free.items():
                if indexes and waiting:
                    assigned = self._occupy(child, indexes.pop(0), waiting.popleft())
                    batches.setdefault(child, []).append(assigned)
        sent = 0
        for child, batch in batches.items():
            try:
                child.conn.send_bytes(pickle.dumps(batch, _PICKLE))
                sent += len(batch)
            except OSError:  # the child is gone (its exit is handled on its own)
                self._take_back(child, batch, waiting)
        return sent

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

    def _occupy(self, child: Child, index: int, job: JobProcess) -> tuple[int, Wire]:
        child.slots[index] = Slot(job=job, dispatched_monotonic=time.monotonic())
        child.started[index] = 0.0  # before the send: the child sets it after receiving
        if child.jobs_left is not None:
            child.jobs_left -= 1
        return index, assignment_to_wire(Assignment.of(job))

    def notice_starts(self) -> list[Slot]:
        return [slot for child in self.children for slot in child.notice_starts()]

    # -- waiting and reading --------------------------------------------------------------
    def wait(self, timeout: float) -> Events:
        events = Events(finished=[], exited=[], woken=False)
        for key, _ in self._selector.select(max(timeout, 0.0)):
            kind, child = key.data
            if kind == "wake":
                events.woken = True
            elif kind == "conn":
                events.finished += self.receive(child)
            elif child not in events.exited:
                events.exited.append(child)
        return events

    def receive(self, child: Child) -> list[tuple[Slot, Outcome]]:
        """Outcomes the child has sent; each frees its slot."""
        finished = []
        try:
            while child.conn.poll():
                index, wire = pickle.loads(child.conn.recv_bytes())
                slot = child.slots[index]
                child.slots[index] = None
                if slot is not None:
                    finished.append((slot, outcome_from_wire(slot.job.uuid, wire)))
        except (EOFError, OSError):
            pass  # the child exited; its sentinel reports that
        return finished

    # -- children ending ---------------------------------------------------------------------
    def remove(self, child: Child) -> list[Slot]:
        """Forget an exited child (reaped, so ``fill`` replaces it); returns the jobs it
        still held. Call ``receive`` first for the outcomes it sent before exiting."""
        child.process.join(timeout=1)
        child.notice_starts()  # the shared memory outlives the process
        if child in self.children:
            self.children.remove(child)
            self._selector.unregister(child.conn.fileno())
            self._selector.unregister(child.process.sentinel)
        child.conn.close()
        held = child.jobs()
        child.slots = [None] * len(child.slots)
        return held

    def kill(self, child: Child) -> tuple[list[tuple[Slot, Outcome]], list[Slot]]:
        """Kill the child: (outcomes it sent before dying, jobs it still held)."""
        if child.process.is_alive():
            child.process.kill()
        child.process.join(timeout=5)
        finished = self.receive(child)
        return finished, self.remove(child)

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
                child.conn.send_bytes(pickle.dumps(None, _PICKLE))
        deadline = time.monotonic() + 5
        for child in list(self.children):
            child.process.join(timeout=max(deadline - time.monotonic(), 0))
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            self.remove(child)
        self._selector.close()
