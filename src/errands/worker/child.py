"""What runs in a worker's child process.

A child is a spawned Python process that imports the job modules, then runs the
jobs its parent hands it on ``worker_threads`` runners (its main thread, plus
threads when there are more); ``async def run()`` jobs run on one event loop
shared by the child's runners. It never touches the database: it reports each
job's ``Outcome`` to the parent, which writes them (see ``protocol`` for the
messages, ``pool`` for the parent's side). What its jobs print or log is
written in whole lines (``output``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import select
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from errands import progress, registry, settings
from errands.containment import is_own_interrupt
from errands.jobs import Job
from errands.models import Outcome, Progress
from errands.worker import output
from errands.worker.execution import Handler, execute, import_string
from errands.worker.protocol import (
    LARGE_MESSAGE,
    OUTBOX_AGE,
    MessageReader,
    Wire,
    assignment_from_wire,
    encode_message,
    outcome_to_wire,
    ring,
    write_all,
)

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger("errands")


def child_main(
    inbox: Connection,
    outbox: Connection,
    bell: Connection,
    environ: Mapping[str, str],
    max_jobs: int | None,
    started: Any,
    ended: Any,
    label_output: bool = False,
    ready: Any = None,
) -> None:
    """Entry point of a child process."""
    # The parent decides about shutdown: a Ctrl-C on the terminal reaches the whole
    # process group, and the child must finish its jobs unless the parent kills them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    output.install(label=label_output)  # before job modules keep a reference to the streams
    os.environ.update(environ)
    settings.reset()
    current = settings.current()
    registry.import_job_modules(current.import_modules)  # stored paths import only inside these
    os.set_blocking(bell.fileno(), False)
    pipes = Pipes(inbox=inbox.fileno(), outbox=outbox.fileno(), bell=bell.fileno())
    runner = ChildRunner(pipes, started, ended, current.middleware, current.worker_threads)
    if ready is not None:
        ready.value = 1  # jobs handed over from now on start at once
    runner.serve(max_jobs)


@dataclass(frozen=True)
class Pipes:
    """The child's ends of its pipes (file descriptors)."""

    inbox: int
    outbox: int
    bell: int


class ChildRunner:
    """The child's side: a reader thread takes messages off the pipe into a queue,
    ``threads`` runners (the main thread first) take jobs from it and write each
    outcome as the job ends; the parent is rung to read them once more have ended
    than wait in the queue, else within ``OUTBOX_AGE``."""

    def __init__(
        self, pipes: Pipes, started: Any, ended: Any, middleware: Iterable[str], threads: int
    ) -> None:
        self.pipes = pipes
        self.started = started
        self.ended = ended
        self.threads = threads
        self.loop = SharedEventLoop()
        self.handler = build_handler(middleware, innermost=self.loop.run_job)
        self.lock = threading.Condition()
        self.write_lock = threading.Lock()  # one message at a time on the outbox
        self.queue: deque[tuple[int, Wire]] = deque()
        self.unrung = 0  # outcomes written since the parent was last rung
        self.ring_at: float | None = None  # when the oldest of them is due to be rung for
        self.closing = False
        self.received = 0
        self._alarm_r, self._alarm_w = os.pipe()
        progress.install(self._send_progress)

    def _send_progress(self, process_uuid: uuid.UUID, value: Progress) -> None:
        """One job's progress (errands.progress, coalesced there) to the parent, now."""
        self._send(encode_message(([], None, [(process_uuid.bytes, *value)])))
        self._ring_now()

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
        output.end_all()
        ring(self.pipes.bell)

    # -- runners --------------------------------------------------------------------
    def _run_jobs(self) -> None:
        while (job := self._next()) is not None:
            slot, wire = job
            assignment = assignment_from_wire(wire)
            token = output.begin_job(assignment.job_class, assignment.process_uuid)
            try:
                outcome = execute(assignment, self.handler)
            finally:
                output.end_job(token)
            if progress.active():  # a job reported progress: its last one goes first
                progress.finish(assignment.process_uuid)
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
        self._send(encode_message(([(slot, outcome_to_wire(outcome))], None)))
        with self.lock:
            self.ended.value += 1  # the parent may count the slot free before it is rung
            self.unrung += 1
            # Half of what the child holds is done: worth a wake-up of the parent,
            # and the other half keeps this child busy until the refill.
            due = self.unrung > len(self.queue)
            first = self.ring_at is None
            if due:
                self.unrung, self.ring_at = 0, None
            elif first:
                self.ring_at = time.monotonic() + OUTBOX_AGE
        if due:
            ring(self.pipes.bell)
        elif first:
            os.write(self._alarm_w, b"x")  # the reader rings within OUTBOX_AGE

    def _send(self, data: bytes) -> None:
        with self.write_lock, contextlib.suppress(OSError):  # OSError: the parent is gone
            if len(data) > LARGE_MESSAGE:
                self._send_large(data)
            else:
                write_all(self.pipes.outbox, data)

    def _send_large(self, data: bytes) -> None:
        """Write a message that may not fit in the pipe, ringing while it does not.

        The parent wakes on the outbox itself only once it holds part of a message.
        One ring before writing is not enough: the parent may answer it before the
        first byte is in the pipe, find nothing, and go back to sleep while this
        write waits for room. So whenever the pipe stays full for ``OUTBOX_AGE``,
        ring again, and ring once the message is through. Writes of at most
        ``PIPE_BUF`` bytes to a pipe that select() found writable never block.
        """
        ring(self.pipes.bell)  # the parent starts reading as it comes
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.pipes.outbox], [], OUTBOX_AGE)
            if writable:
                view = view[os.write(self.pipes.outbox, view[: select.PIPE_BUF]) :]
            else:
                ring(self.pipes.bell)
        ring(self.pipes.bell)

    def _ring_now(self) -> None:
        with self.lock:
            self.unrung, self.ring_at = 0, None
        ring(self.pipes.bell)

    # -- the reader thread ------------------------------------------------------------
    def _read(self, max_jobs: int | None) -> None:
        reader = MessageReader(self.pipes.inbox)
        os.set_blocking(self.pipes.inbox, False)
        os.set_blocking(self._alarm_r, False)
        while not reader.closed:
            select.select([self.pipes.inbox, self._alarm_r], [], [], self._ring_wait())
            with contextlib.suppress(BlockingIOError):
                os.read(self._alarm_r, 4096)
            for message in reader.read():
                if message is None:
                    reader.closed = True
                    break
                self._handle(message, max_jobs)
            self._ring_if_due()
        with self.lock:
            self.closing = True
            self.lock.notify_all()

    def _ring_wait(self) -> float | None:
        at = self.ring_at
        return None if at is None else max(at - time.monotonic(), 0.0)

    def _ring_if_due(self) -> None:
        at = self.ring_at
        if at is not None and time.monotonic() >= at:
            self._ring_now()

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
            self._send(encode_message(([], recalled)))
            self._ring_now()


def build_handler(middleware: Iterable[str], *, innermost: Handler) -> Handler:
    """``innermost`` wrapped by each middleware, the first listed outermost
    (the contract of ``execution.build_handler``, with this child's way to run a job)."""
    handler = innermost
    try:
        for path in reversed(list(middleware)):
            handler = import_string(path)(handler)
    except BaseException as exc:
        if is_own_interrupt(exc):
            raise
        # Each job fails with the middleware's error (a constructor's SystemExit too),
        # rather than each child dying as it starts, in a loop that hides the error.
        return _failing_handler(exc)
    return handler


def _failing_handler(exc: BaseException) -> Handler:
    trace = exc.__traceback__

    def fail(job: Job) -> Any:
        raise exc.with_traceback(trace)  # the original traceback, not one more per job

    return fail


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
            import asyncio  # only for async jobs: it weighs on every child that imports this

            return asyncio.run_coroutine_threadsafe(_awaited(value), self._started()).result()
        return value

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_forever, args=(loop,), name="errands-event-loop", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    """Run the shared loop for the child's life, whatever user code raises on it.

    asyncio lets a SystemExit or KeyboardInterrupt out of its loop, be it from a
    job's coroutine or a task it started. The task that raised it is done, and its
    waiting runner is told once the loop runs again (the callback is scheduled):
    so start it again, rather than leave every later async job waiting forever.
    """
    while True:
        try:
            loop.run_forever()
        except BaseException:
            logger.warning("user code raised out of the event loop; it goes on", exc_info=True)


async def _awaited(value: Any) -> Any:
    return await value
