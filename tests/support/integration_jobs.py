"""Jobs for the tests of errands.testing, wait_for_result and the framework examples
(importable by worker children as module ``integration_jobs``)."""

from __future__ import annotations

import time
from typing import Any

from errands import DeferJob, Job, register_job


@register_job
class Add(Job):
    def __init__(self, a: int, b: int = 0) -> None:
        self.a = a
        self.b = b

    def run(self) -> int:
        return self.a + self.b


@register_job
class FanOut(Job):
    """Enqueues one ``Add`` per item, then returns how many it enqueued."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def run(self) -> int:
        for item in self.items:
            Add(item, 100).run_in_worker()
        return len(self.items)


@register_job
class Forever(Job):
    """Defers itself every time: a runaway for drain()."""

    def run(self) -> None:
        raise DeferJob(delay=0)


@register_job
class Unhandled(Job):
    def __init__(self, message: str) -> None:
        self.message = message

    def run(self) -> None:
        raise KeyError(self.message)


@register_job
class SlowAdd(Job):
    def __init__(self, a: int, b: int, seconds: float) -> None:
        self.a = a
        self.b = b
        self.seconds = seconds

    def run(self) -> int:
        time.sleep(self.seconds)
        return self.a + self.b


@register_job
class Keywords(Job):
    def __init__(self, name: str, **extra: Any) -> None:
        self.name = name
        self.extra = extra

    def run(self) -> dict[str, Any]:
        return {"name": self.name, **self.extra}
