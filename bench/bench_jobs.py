"""The jobs the benchmark enqueues (imported by bench workers as ``bench_jobs``)."""

from __future__ import annotations

import asyncio
import time

from errands import Job, register_job


@register_job
class Noop(Job):
    """Does nothing: every microsecond a drain of these spends is errands' overhead."""

    def run(self) -> None:
        pass


@register_job
class SleepIO(Job):
    """Waits like an I/O-bound job (an HTTP call, a query) without using the CPU."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self) -> None:
        time.sleep(self.seconds)


@register_job
class AsyncSleepIO(Job):
    """The same wait as ``SleepIO``, written as a coroutine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def run(self) -> None:
        await asyncio.sleep(self.seconds)
