"""Jobs used by the test suite (imported by workers as module ``sample_jobs``;
tests put ``tests/support`` on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from pathlib import Path
from typing import Any

from errands import DeferJob, Job, register_job


def append_line(path: str, text: str) -> None:
    # O_APPEND writes of one short line are atomic, so concurrent children don't interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


@register_job
class Noop(Job):
    def run(self) -> None:
        pass


@register_job
class Record(Job):
    """Appends its token to a file: the side effect whose count tests check."""

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token

    def run(self) -> None:
        append_line(self.path, self.token)


@register_job
class Echo(Job):
    def __init__(self, value: Any) -> None:
        self.value = value

    def run(self) -> Any:
        return self.value


@register_job
class Fail(Job):
    def __init__(self, message: str = "boom") -> None:
        self.message = message

    def run(self) -> None:
        raise ValueError(self.message)


@register_job
class FailTimes(Job):
    """Fails the first ``times`` attempts (counted in a file), then succeeds."""

    def __init__(self, path: str, times: int) -> None:
        self.path = path
        self.times = times

    def run(self) -> None:
        append_line(self.path, "attempt")
        attempts = len(Path(self.path).read_text().splitlines())
        if attempts <= self.times:
            raise RuntimeError(f"attempt {attempts} fails")


@register_job
class Sleep(Job):
    def __init__(self, seconds: float, path: str = "") -> None:
        self.seconds = seconds
        self.path = path

    def run(self) -> None:
        if self.path:
            append_line(self.path, "started")
        time.sleep(self.seconds)
        if self.path:
            append_line(self.path, "finished")


@register_job
class DeferOnce(Job):
    def __init__(self, path: str, delay: float = 0) -> None:
        self.path = path
        self.delay = delay

    def run(self) -> None:
        append_line(self.path, "run")
        if len(Path(self.path).read_text().splitlines()) == 1:
            raise DeferJob(delay=self.delay)


@register_job
class Crash(Job):
    def run(self) -> None:
        os._exit(13)


@register_job
class AsyncEcho(Job):
    def __init__(self, value: Any) -> None:
        self.value = value

    async def run(self) -> Any:
        await asyncio.sleep(0)
        return self.value


@register_job
class WithTypes(Job):
    def __init__(self, when: datetime.datetime, ids: tuple[int, ...]) -> None:
        self.when = when
        self.ids = ids

    def run(self) -> Any:
        return {"when": self.when.isoformat(), "ids": list(self.ids)}


@register_job
class Mail(Job):
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def default_queue(self) -> str:
        return "mail"

    def default_concurrency_key(self) -> str:
        return f"user-{self.user_id}"

    def run(self) -> None:
        pass


@register_job
class AbortAware(Job):
    """Records on_aborted calls in a file."""

    def __init__(self, path: str, seconds: float = 30) -> None:
        self.path = path
        self.seconds = seconds

    def run(self) -> None:
        append_line(self.path, "started")
        time.sleep(self.seconds)

    def on_aborted(self, result: Any) -> None:
        append_line(self.path, f"aborted {result.status}")


class DoubleResult:
    """Middleware that doubles a numeric return value."""

    def __init__(self, next_handler: Any) -> None:
        self.next_handler = next_handler

    def __call__(self, job: Job) -> Any:
        return self.next_handler(job) * 2


@register_job
class SlowRetry(Job):
    """Sleeps, marking start and finish in a file; its retries wait an hour (so tests
    can see a retry request without a worker running it)."""

    def __init__(self, path: str, seconds: float = 30) -> None:
        self.path = path
        self.seconds = seconds

    def run(self) -> None:
        append_line(self.path, "started")
        time.sleep(self.seconds)
        append_line(self.path, "finished")

    def calculate_retry_delay(self, attempt: int) -> float:
        return 3600

    def on_aborted(self, result: Any) -> None:
        append_line(self.path, f"aborted {result.status}")


@register_job
class SleepUnlessRerun(Job):
    """First run: writes its process id to ``path`` and sleeps (to be killed from
    outside); any later run returns at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self) -> str:
        if Path(self.path).exists():
            return "rerun"
        append_line(self.path, str(os.getpid()))
        time.sleep(60)
        return "slept"

    def on_aborted(self, result: Any) -> None:
        append_line(f"{self.path}.aborted", str(result.status))


@register_job
class SlowAbortHook(Job):
    """Its on_aborted takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self) -> None:
        pass

    def on_aborted(self, result: Any) -> None:
        time.sleep(self.seconds)


@register_job
class ProcessId(Job):
    def run(self) -> int:
        return os.getpid()
