"""What runs in a worker's child process, and the protocol between parent and child.

A child is a spawned Python process that imports the job modules, then runs the
jobs its parent hands it on ``worker_threads`` runners (its main thread, plus
threads when there are more); ``async def run()`` jobs run on one event loop
shared by the child's runners. The parent's side is ``errands.pool``.

A child may hold up to ``PREFETCH`` jobs more than it has runners, queued in
order: the next job is at hand when one ends, and messages carry many jobs, so
short jobs cost a fraction of a pipe round trip each (every message can wake a
sleeping process, which costs far more than running a no-op job).

The protocol (plain tuples: they pickle in about a microsecond, dataclasses in tens):

* parent -> child: ``("assign", [(slot, assignment fields), ...])``;
  ``("recall",)``: give back every job not begun; ``None``: finish, then exit;
* child -> parent: ``([(slot, outcome fields), ...], recalled slots or None)``,
  at once when the child's queue runs low, else within ``OUTBOX_AGE``;
* shared memory: ``started[slot]`` is the wall-clock time at which the slot's
  job began, or 0.0 before that. The parent resets it before it fills the slot,
  the child sets it as it takes the job from its queue (under the lock that a
  recall takes too); the pipe orders the two. Reading it costs the parent no
  message and no wake-up, and tells it, even after the child died, which of its
  jobs had begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import inspect
import os
import pickle
import select
import signal
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import Any

from errands import settings
from errands.execution import Assignment, Handler, execute, import_string
from errands.jobs import Job
from errands.models import Outcome, Requeue, Status

PREFETCH = 16  # jobs a child may hold beyond its runners
OUTBOX_AGE = 0.002  # seconds a child may hold an outcome back to send it with others
OUTBOX_SIZE = 64  # a child sends its outcomes at once when this many wait

_PICKLE = pickle.HIGHEST_PROTOCOL
_HEADER = struct.Struct("!I")
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
        started_at=None if started is None else utc_from_timestamp(started),
        ended_at=utc_from_timestamp(ended),
        error_type=error_type,
        error=error,
        traceback=traceback,
        return_value=return_value,
        requeue=None if requeue is None else Requeue(*requeue),
    )


def utc_from_timestamp(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def write_message(fd: int, message: Any) -> None:
    """One length-prefixed pickle, written whole (the descriptor blocks)."""
    data = pickle.dumps(message, _PICKLE)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class MessageReader:
    """Splits the bytes of a pipe into messages; one read takes whatever is there."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    def read(self) -> list[Any]:
        """The complete messages available now (the descriptor must not block)."""
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.buffer += chunk
                if len(chunk) < 1 << 16:
                    break
            else:
                self.closed = True  # end of file: the writer is gone
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True
        return self._split()

    def _split(self) -> list[Any]:
        messages = []
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            end = _HEADER.size + size
            if len(self.buffer) < end:
                break
            messages.append(pickle.loads(self.buffer[_HEADER.size : end]))
            del self.buffer[:end]
        return messages


# -- the child ---------------------------------------------------------------------------


def child_main(
    inbox: Connection,
    outbox: Connection,
    environ: Mapping[str, str],
    max_jobs: int | None,
    started: Any,
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
    runner = ChildRunner(
        inbox.fileno(), outbox.fileno(), started, current.middleware, current.worker_threads
    )
    runner.serve(max_jobs)


class ChildRunner:
    """The child's side: a reader thread takes messages off the pipe into a queue,
    ``threads`` runners (the main thread first) take jobs from it, and outcomes go
    back in batches: at once when the queue runs low, else within ``OUTBOX_AGE``."""

    def __init__(
        self, inbox: int, outbox: int, started: Any, middleware: Iterable[str], threads: int
    ) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.started = started
        self.threads = threads
        self.loop = SharedEventLoop()
        self.handler = build_handler(middleware, innermost=self.loop.run_job)
        self.lock = threading.Condition()
        self.queue: deque[tuple[int, Wire]] = deque()
        self.finished: list[tuple[int, Wire]] = []
        self.finished_since: float | None = None
        self.closing = False
        self.received = 0
        self.low_water = (threads + PREFETCH) // 2
        self._alarm_r, self._alarm_w = os.pipe()

    def serve(self, max_jobs: int | None) -> None:
        reader = threading.Thread(
            target=self._read, args=(max_jobs,), name="errands-child-reader", daemon=True
        )
        reader.start()
        runners = [
            threading.Thread(target=self._run_jobs, name=f"errands-slot-{n}", daemon=True)
            for n in range(1, self.threads)
        ]
        for thread in runners:
            thread.start()
        self._run_jobs()  # the main thread is a runner too: jobs may rely on it
        for thread in runners:
            thread.join()
        self._send_finished()

    # -- runners --------------------------------------------------------------------
    def _run_jobs(self) -> None:
        while (job := self._next()) is not None:
            slot, wire = job
            outcome = execute(assignment_from_wire(wire), self.handler)
            self._report(slot, outcome)

    def _next(self) -> tuple[int, Wire] | None:
        with self.lock:
            while not self.queue and not self.closing:
                self.lock.wait()
            if not self.queue:
                return None
            slot, wire = self.queue.popleft()
            self.started[slot] = time.time()  # under the lock: a recall sees it begun
            return slot, wire

    def _report(self, slot: int, outcome: Outcome) -> None:
        with self.lock:
            self.finished.append((slot, outcome_to_wire(outcome)))
            urgent = len(self.queue) <= self.low_water or len(self.finished) >= OUTBOX_SIZE
            first = self.finished_since is None
            if first:
                self.finished_since = time.monotonic()
        if urgent:
            self._send_finished()
        elif first:
            os.write(self._alarm_w, b"x")  # the reader sends it within OUTBOX_AGE

    def _send_finished(self, recalled: list[int] | None = None) -> None:
        with self.lock:
            finished, self.finished = self.finished, []
            self.finished_since = None
            if finished or recalled is not None:
                with contextlib.suppress(OSError):  # the parent is gone
                    write_message(self.outbox, (finished, recalled))

    # -- the reader thread ------------------------------------------------------------
    def _read(self, max_jobs: int | None) -> None:
        reader = MessageReader(self.inbox)
        os.set_blocking(self.inbox, False)
        os.set_blocking(self._alarm_r, False)
        while not reader.closed:
            select.select([self.inbox, self._alarm_r], [], [], self._outbox_wait())
            with contextlib.suppress(BlockingIOError):
                os.read(self._alarm_r, 4096)
            for message in reader.read():
                if message is None:
                    reader.closed = True
                    break
                self._handle(message, max_jobs)
            self._send_if_aged()
        with self.lock:
            self.closing = True
            self.lock.notify_all()

    def _outbox_wait(self) -> float | None:
        since = self.finished_since
        return None if since is None else max(since + OUTBOX_AGE - time.monotonic(), 0.0)

    def _send_if_aged(self) -> None:
        since = self.finished_since
        if since is not None and time.monotonic() - since >= OUTBOX_AGE:
            self._send_finished()

    def _handle(self, message: tuple[Any, ...], max_jobs: int | None) -> None:
        if message[0] == "assign":
            with self.lock:
                self.queue.extend(message[1])
                self.received += len(message[1])
                if max_jobs is not None and self.received >= max_jobs:
                    self.closing = True  # exit once these are done
                self.lock.notify_all()
        elif message[0] == "recall":
            with self.lock:
                recalled = [slot for slot, _ in self.queue]
                self.queue.clear()
            self._send_finished(recalled)


def build_handler(middleware: Iterable[str], *, innermost: Handler) -> Handler:
    """``innermost`` wrapped by each middleware, the first listed outermost
    (the contract of ``execution.build_handler``, with this child's way to run a job)."""
    handler = innermost
    for path in reversed(list(middleware)):
        handler = import_string(path)(handler)
    return handler


class SharedEventLoop:
    """One event loop per child, on its own thread, for ``async def run()`` jobs.

    A runner that runs a coroutine job waits for it here, so the child's async jobs
    (up to one per runner) run concurrently on one loop, and loop-bound resources
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
