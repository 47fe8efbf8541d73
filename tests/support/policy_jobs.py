"""Jobs for the job-context and retry-policy tests on real workers.

Each appends one JSON line per run to a trail file (one ``O_APPEND`` write, so lines
of concurrent runs never interleave): its token, attempt, start and end (wall-clock
time, shared by every process on the machine) and what its context said.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from errands import Backoff, FailJob, Job, register_job


def append(path: str, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _context_record(job: Job) -> dict[str, Any]:
    context = job.context
    return {
        "process_uuid": str(context.process_uuid),
        "request_uuid": str(context.request_uuid),
        "job_class": context.job_class,
        "attempt": context.attempt,
        "attempts": context.attempts,
        "retries": context.retries,
        "last": context.is_last_attempt,
        "queue": context.queue,
        "priority": context.priority,
        "requested_at": context.requested_at,
        "start_at": context.start_at,
        "started_at": context.started_at,
        "deadline": context.deadline,
        "timeout": context.timeout,
        "worker_id": str(context.worker_id),
        "limits": [limit.key for limit in context.limits],
    }


@register_job
class Flaky(Job):
    """Fails (``ConnectionError``) in its first ``failures`` attempts, then succeeds,
    recording each attempt's start and end under ``token``."""

    retry_backoff: Backoff | None = Backoff(base=0.5, factor=2.0, jitter=0.0)

    def __init__(self, trail: str, token: str, failures: int) -> None:
        self.trail = trail
        self.token = token
        self.failures = failures

    def run(self) -> str:
        start = time.time()
        attempt = self.context.attempt
        failing = attempt <= self.failures
        append(self.trail, {"token": self.token, "attempt": attempt, "start": start,
                            "end": time.time()})  # fmt: skip
        if failing:
            raise ConnectionError(f"{self.token} attempt {attempt} fails")
        return self.token


@register_job
class FlakyBySetting(Flaky):
    """As Flaky, without a backoff of its own: the retry_backoff setting's applies."""

    retry_backoff = None


@register_job
class FlakyOwnDelay(Flaky):
    """As Flaky, with its own calculate_retry_delay: it wins over any backoff."""

    def calculate_retry_delay(self, attempt: int) -> float:
        return 0.0


@register_job
class RetryOnlyConnection(Flaky):
    """Retried on ConnectionError only: a ValueError ends it at once."""

    retry_on = (ConnectionError,)

    def run(self) -> str:
        append(self.trail, {"token": self.token, "attempt": self.context.attempt})
        raise ValueError("not a connection problem")


@register_job
class NeverOnValue(Flaky):
    """Never retried on ValueError."""

    fail_on = (ValueError,)

    def run(self) -> str:
        append(self.trail, {"token": self.token, "attempt": self.context.attempt})
        raise ValueError("bad input")


@register_job
class GivesUp(Flaky):
    """Raises FailJob in its first attempt, however many retries it has."""

    def run(self) -> str:
        append(self.trail, {"token": self.token, "attempt": self.context.attempt})
        raise FailJob(f"{self.token}: the account is closed")


@register_job
class Reports(Job):
    """Records its context (and, with ``fail_first``, fails its first attempt)."""

    def __init__(self, trail: str, token: str, seconds: float = 0.0, fail_first: bool = False):
        self.trail = trail
        self.token = token
        self.seconds = seconds
        self.fail_first = fail_first

    def run(self) -> None:
        time.sleep(self.seconds)  # runs overlap: each must still see its own context
        append(self.trail, {"token": self.token, **_context_record(self)})
        if self.fail_first and self.context.attempt == 1:
            raise ConnectionError("first attempt fails")


@register_job
class ReportsAsync(Reports):
    """Records its context from a coroutine, on the child's shared event loop."""

    async def run(self) -> None:  # type: ignore[override]
        await asyncio.sleep(self.seconds)
        append(self.trail, {"token": self.token, "async": True, **_context_record(self)})


class RecordContext:
    """Middleware: records the attempt and process of each job it wraps, before it runs."""

    def __init__(self, next_handler: Callable[[Job], Any]) -> None:
        self.next_handler = next_handler

    def __call__(self, job: Job) -> Any:
        trail = getattr(job, "trail", None)
        if trail is not None:
            context = job.context
            append(trail, {"middleware": str(context.process_uuid), "attempt": context.attempt})
        return self.next_handler(job)
