"""Jobs that report progress (tests/test_progress.py), imported by real workers."""

from __future__ import annotations

import time

from errands import Job, register_job


@register_job
class CountItems(Job):
    """Loops over ``count`` items, reporting each one if ``report``; returns the
    seconds the loop took (what the reports cost, measured in the child)."""

    def __init__(self, count: int, report: bool) -> None:
        self.count = count
        self.report = report

    def run(self) -> float:
        started = time.perf_counter()
        total = self.count
        if self.report:
            for done in range(1, total + 1):
                self.report_progress(done, total, "items")
        else:
            for _done in range(1, total + 1):
                pass
        return time.perf_counter() - started


@register_job
class Stepped(Job):
    """Reports each of ``steps`` steps, then waits ``pause`` seconds."""

    def __init__(self, steps: int, pause: float) -> None:
        self.steps = steps
        self.pause = pause

    def run(self) -> None:
        for step in range(1, self.steps + 1):
            self.report_progress(step, self.steps, f"step {step}")
            time.sleep(self.pause)
