"""What follows the writing of results: metrics, ``on_aborted`` hooks, job log lines.

The parent runs this after each batch it wrote (``batches``) and after each
rescue (``rescue``). Hooks are user code: each result's hooks run on their own,
a failure is logged and stops nothing (``containment.each_result``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from errands import api, containment, telemetry
from errands.formatting import attempt_number
from errands.models import ABORTED_STATUSES, JobResult
from errands.worker.timing import Every

logger = logging.getLogger("errands")


class AfterResults:
    """Handles written results; between ``on_aborted`` hooks, ``beat`` when ``beat_every``
    says a heartbeat is due: a long list of slow hooks must not make the worker look dead."""

    def __init__(self, *, log_jobs: bool, beat: Callable[[], None], beat_every: Every) -> None:
        self.log_jobs = log_jobs
        self.beat = beat
        self.beat_every = beat_every

    def aborted_only(self) -> bool:
        """Whether batches read back only the aborted results (for their hooks): unless
        results are logged or measured (asked per batch: an application may install
        its meter provider after the worker started)."""
        return not (self.log_jobs or telemetry.results_measured())

    def written(self, results: list[JobResult]) -> None:
        """Record metrics, run the aborted results' hooks, log each result if asked."""
        telemetry.record_results(results)
        aborted = [r for r in results if r.status in ABORTED_STATUSES]
        if aborted:
            self.run_aborted_hooks(aborted)
        if self.log_jobs:
            for result in results:
                logger.info("job finished", extra=result_fields(result))

    def run_aborted_hooks(self, results: list[JobResult]) -> None:
        """Run ``on_aborted`` for each result, heartbeating between hooks when a beat is due."""
        for result in results:
            containment.each_result("on_aborted", api.dispatch_aborted_hooks, [result])
            if self.beat_every.due(time.monotonic()):
                try:
                    self.beat()
                except Exception:
                    logger.warning("heartbeat failed between on_aborted hooks", exc_info=True)


def result_fields(result: JobResult) -> dict[str, Any]:
    """A result's fields for a log record."""
    duration = (result.ended_at - result.started_at).total_seconds() if result.started_at else None
    return {
        "job_class": result.job_class,
        "job_uuid": str(result.uuid),
        "queue": result.queue,
        "status": str(result.status),
        "attempt": attempt_number(result),  # from 1, as every other surface
        "duration": duration,
    }
