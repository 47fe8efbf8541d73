"""The worker's child processes: each runs one job at a time, sent over its own pipe.

A child is a spawned Python process that imports the job modules, then loops:
receive an ``Assignment``, send ``(STARTED, uuid, time)``, run it, send
``(DONE, outcome)``. Because every child has exactly one job in hand, the parent
always knows which job a dead or killed child took with it, and killing one job
(timeout, cancel) never disturbs another.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from errands import settings
from errands.execution import Assignment, build_handler, execute
from errands.models import JobProcess

logger = logging.getLogger("errands")

STARTED = "started"
DONE = "done"

_spawn = multiprocessing.get_context("spawn")


def child_main(conn: Connection, environ: Mapping[str, str], max_jobs: int | None) -> None:
    """Entry point of a child process."""
    # The parent decides about shutdown: a Ctrl-C on the terminal reaches the whole
    # process group, and the child must finish its job unless the parent kills it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(environ)
    settings.reset()
    current = settings.current()
    for module in current.import_modules:
        importlib.import_module(module)
    handler = build_handler(current.middleware)
    done = 0
    while max_jobs is None or done < max_jobs:
        try:
            assignment: Assignment | None = conn.recv()
        except (EOFError, OSError):
            return
        if assignment is None:
            return
        conn.send((STARTED, assignment.process_uuid, datetime.datetime.now(datetime.UTC)))
        conn.send((DONE, execute(assignment, handler)))
        done += 1


@dataclass(eq=False)
class Child:
    process: BaseProcess
    conn: Connection
    jobs_left: int | None
    job: JobProcess | None = None
    started_at: datetime.datetime | None = None
    started_monotonic: float | None = None
    closed: bool = field(default=False)

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid


class Pool:
    """A fixed number of child slots, refilled when a child exits or is killed."""

    def __init__(
        self, *, size: int, environ: Mapping[str, str], max_jobs_per_child: int | None
    ) -> None:
        self.size = size
        self.environ = dict(environ)
        self.max_jobs_per_child = max_jobs_per_child
        self.children: list[Child] = []
        self.spawned = 0

    def fill(self) -> None:
        while len(self.children) < self.size:
            self.children.append(self._spawn())

    def _spawn(self) -> Child:
        parent_conn, child_conn = _spawn.Pipe()
        process = _spawn.Process(
            target=child_main,
            args=(child_conn, self.environ, self.max_jobs_per_child),
            name="errands-job",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self.spawned += 1
        return Child(process=process, conn=parent_conn, jobs_left=self.max_jobs_per_child)

    def idle(self) -> list[Child]:
        return [c for c in self.children if not c.busy and c.jobs_left != 0]

    def busy(self) -> list[Child]:
        return [c for c in self.children if c.busy]

    def dispatch(self, child: Child, job: JobProcess) -> None:
        child.job = job
        child.started_at = None
        child.started_monotonic = None
        if child.jobs_left is not None:
            child.jobs_left -= 1
        child.conn.send(
            Assignment(
                process_uuid=job.uuid,
                job_class=job.job_class,
                parameters=job.parameters,
                retries=job.retries,
                retry_attempt=job.retry_attempt,
            )
        )

    def wait(self, timeout: float, extra: Iterable[Any]) -> list[Any]:
        """Ready pipes, sentinels of exited children, and ready ``extra`` objects."""
        waitables: list[Any] = [c.conn for c in self.children]
        waitables += [c.process.sentinel for c in self.children]
        waitables += list(extra)
        return wait(waitables, timeout=max(timeout, 0))

    def child_of_sentinel(self, sentinel: Any) -> Child | None:
        return next((c for c in self.children if c.process.sentinel == sentinel), None)

    def child_of_conn(self, conn: Any) -> Child | None:
        return next((c for c in self.children if c.conn is conn), None)

    def remove(self, child: Child) -> None:
        """Forget an exited child (its process is reaped) so ``fill`` replaces it."""
        if child in self.children:
            self.children.remove(child)
        child.conn.close()
        child.process.join(timeout=1)

    def kill(self, child: Child) -> None:
        if child.process.is_alive():
            child.process.kill()
        child.process.join(timeout=5)
        self.remove(child)

    def retire_exhausted(self) -> None:
        """Children that reached max jobs per child and are idle exit on their own."""
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
                child.conn.send(None)
        deadline = time.monotonic() + 5
        for child in list(self.children):
            child.process.join(timeout=max(deadline - time.monotonic(), 0))
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            self.remove(child)
