"""Jobs for tests/test_security_poison_rows.py (imported by workers as ``poison_jobs``)."""

from __future__ import annotations

from errands import DeferJob, Job, register_job


@register_job
class DeferCounting(Job):
    """Defers every time, counting each deferral as an attempt."""

    def run(self) -> None:
        raise DeferJob(delay=3600, increment_retries=True)
