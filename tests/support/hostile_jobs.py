"""Jobs, hooks and middleware that raise ``BaseException``s, for
``tests/test_security_user_code.py`` (imported by workers as module ``hostile_jobs``).

Each raises the exception named by ``kind`` (``EXCEPTIONS``) after appending
``"<place> <pid>"`` to the file at ``path``, so that a test can tell in which
process the place ran (a child or the worker parent).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from errands import DeferJob, Job, JobResult, register_job
from errands.worker.execution import Handler


class Boom(BaseException):
    """An application's own ``BaseException`` (not an ``Exception``)."""


EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "Boom": Boom,
    "GeneratorExit": GeneratorExit,
}
#: The error type each kind is recorded with.
ERROR_TYPES = {
    "SystemExit": "SystemExit",
    "KeyboardInterrupt": "KeyboardInterrupt",
    "Boom": "hostile_jobs.Boom",
    "GeneratorExit": "GeneratorExit",
}


def mark(path: str, place: str) -> None:
    # One short O_APPEND write: atomic, whichever process writes.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{place} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def throw(kind: str, path: str, place: str) -> None:
    mark(path, place)
    raise EXCEPTIONS[kind](f"raised in {place}")


@register_job
class WhereAmI(Job):
    """The job enqueued after a hostile one: which child, under which worker, ran it."""

    def run(self) -> list[int]:
        return [os.getpid(), os.getppid()]


@register_job
class RaiseInRun(Job):
    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def run(self) -> None:
        throw(self.kind, self.path, "run")


@register_job
class AsyncRaiseInRun(Job):
    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    async def run(self) -> None:
        await asyncio.sleep(0.01)
        throw(self.kind, self.path, "async run")


@register_job
class AsyncRaiseOnTheLoop(Job):
    """Succeeds, leaving a callback on the child's shared event loop that raises."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    async def run(self) -> str:
        asyncio.get_running_loop().call_soon(throw, self.kind, self.path, "loop callback")
        return "done"


@register_job
class RaiseInConstructor(Job):
    """Raises when rebuilt anywhere but in the process that enqueued it."""

    def __init__(self, kind: str, path: str, producer_pid: int) -> None:
        if os.getpid() != producer_pid:
            throw(kind, path, "constructor")

    def run(self) -> None:
        pass


@register_job
class MiddlewareTarget(Job):
    """Its run never happens: ``RaisingMiddleware`` raises on the way in."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def run(self) -> None:
        pass


class RaisingMiddleware:
    """Raises for ``MiddlewareTarget`` jobs, passes every other job on."""

    def __init__(self, next_handler: Handler) -> None:
        self.next_handler = next_handler

    def __call__(self, job: Job) -> Any:
        if isinstance(job, MiddlewareTarget):
            throw(job.kind, job.path, "middleware")
        return self.next_handler(job)


class MiddlewareRaisingWhenBuilt:
    """Raises ``HOSTILE_KIND`` as each child builds its handler (marks in ``HOSTILE_MARKS``)."""

    def __init__(self, next_handler: Handler) -> None:
        throw(os.environ["HOSTILE_KIND"], os.environ["HOSTILE_MARKS"], "middleware constructor")


@register_job
class FailWithRaisingRetryDelay(Job):
    """Fails with a ValueError; computing its retry delay (in the child) raises."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def run(self) -> None:
        raise ValueError("an ordinary failure")

    def calculate_retry_delay(self, attempt: int) -> float:
        throw(self.kind, self.path, "calculate_retry_delay")
        return 0.0


@register_job
class DeferUnstorably(Job):
    """Raises DeferJob with a delay no database can store (``delay`` as text: "nan"...)."""

    def __init__(self, delay: str) -> None:
        self.delay = delay

    def run(self) -> None:
        raise DeferJob(delay=float(self.delay))


@register_job
class FailWithUnstorableRetryDelay(Job):
    """Fails; its retry delay is a number no database can store."""

    def __init__(self, delay: str) -> None:
        self.delay = delay

    def run(self) -> None:
        raise ValueError("an ordinary failure")

    def calculate_retry_delay(self, attempt: int) -> float:
        return float(self.delay)


@register_job
class SlowWithRaisingRetryDelay(Job):
    """Runs for a minute (past its timeout, or until its worker is killed); a worker
    parent, computing its retry delay, meets the raise."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def run(self) -> None:
        mark(self.path, "run")
        time.sleep(60)

    def calculate_retry_delay(self, attempt: int) -> float:
        throw(self.kind, self.path, "calculate_retry_delay")
        return 0.0


@register_job
class CrashWithRaisingOnAborted(Job):
    """Its child dies (LOST); the parent then runs its on_aborted, which raises."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def run(self) -> None:
        os._exit(3)

    def on_aborted(self, result: JobResult) -> None:
        throw(self.kind, self.path, "on_aborted")


@register_job
class RaiseInShouldEnqueue(Job):
    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def should_enqueue(self, concurrency_key: str) -> bool:
        throw(self.kind, self.path, "should_enqueue")
        return True

    def run(self) -> None:
        pass
