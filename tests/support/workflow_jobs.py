"""Jobs for the workflow tests: each records its start and end in a trail file (see
flow_jobs) and returns a value built from its dependencies' return values, so a test
can check both the order the jobs ran in and what each one received."""

from __future__ import annotations

import time

from flow_jobs import _append

from errands import FailJob, Job, register_job


@register_job
class Step(Job):
    """Records its run under ``token`` and returns ``token`` followed by what its
    dependencies returned, in their order; fails for good when ``fail`` is set."""

    def __init__(self, trail: str, token: str, seconds: float = 0.0, fail: bool = False) -> None:
        self.trail = trail
        self.token = token
        self.seconds = seconds
        self.fail = fail

    def run(self) -> list[object]:
        _append(self.trail, f"start {self.token} {time.time():.6f}\n")
        inputs = list(self.context.dependencies.values())
        if self.seconds:
            time.sleep(self.seconds)
        _append(self.trail, f"end {self.token} {time.time():.6f}\n")
        if self.fail:
            raise FailJob(f"{self.token} fails on purpose")
        return [self.token, *inputs]


@register_job
class Flaky(Step):
    """Fails its first attempt, succeeds at its retry."""

    def run(self) -> list[object]:
        if self.context.attempt == 1:
            raise RuntimeError(f"{self.token}: first attempt fails")
        return super().run()
