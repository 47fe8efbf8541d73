"""The follow-up service: every LOST job gets its ``on_aborted`` hooks and, with attempts
left, its retry, whichever worker rescued it.

The rescue records what a LOST result is owed in the transaction that writes the
result (``errands_followup``). Each maintenance tick every worker settles the
follow-ups whose job class it can load: it takes the follow-up and enqueues the
retry in one transaction (so exactly one worker retries each job, even when
several settle at once), then runs the hooks. A job class this worker cannot
load (another service's job, a class since removed) is left for a worker that
can. Hooks run at most once: a worker that dies between taking a follow-up and
running its hooks loses them, as it would lose any code it was running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from errands import lifecycle, telemetry
from errands.backends import Backend
from errands.containment import is_own_interrupt
from errands.errors import JobNotRegistered
from errands.jobs import Job
from errands.models import JobResult
from errands.registry import build_job
from errands.retrying import enqueue_retry, retry_delay

logger = logging.getLogger("errands")

#: Follow-ups looked at per tick; more wait for the next one.
BATCH = 100


class FollowUps:
    """Settles the follow-ups of LOST results; ``on_aborted`` runs their hooks."""

    def __init__(
        self,
        backend: Backend,
        *,
        on_aborted: Callable[[list[JobResult]], None],
        batch: int = BATCH,
    ) -> None:
        self.backend = backend
        self.on_aborted = on_aborted
        self.batch = batch

    def run_once(self) -> list[JobResult]:
        """Settle what this worker can; return the results it settled."""
        settled = [
            result for result in self.backend.followups(limit=self.batch) if self._settle(result)
        ]
        if settled:
            self.on_aborted(settled)
        return settled

    def _settle(self, result: JobResult) -> bool:
        """Take ``result``'s follow-up, retrying it when it has attempts left; False when
        this worker cannot load its class or another worker took it first."""
        try:
            job: Job | None = build_job(result.job_class, result.parameters)
        except JobNotRegistered:
            return False  # not this worker's job: a worker that can load it settles it
        except BaseException as exc:  # user code (__init__): SystemExit too
            if is_own_interrupt(exc):
                raise
            # A job that cannot be rebuilt would fail the same way again: settle it
            # without a retry (its hooks cannot run either).
            logger.error("cannot rebuild a lost job", exc_info=exc, extra=_fields(result))
            job = None
        try:
            return self._take(result, job)
        except BaseException as exc:  # should_enqueue is user code too
            if is_own_interrupt(exc):
                raise
            logger.error("could not settle a lost job", exc_info=exc, extra=_fields(result))
            return False

    def _take(self, result: JobResult, job: Job | None) -> bool:
        delay = self._retry_delay(result, job)
        with telemetry.counting_sends(self.backend), self.backend.enqueue_transaction() as tx:
            if not tx.settle_followup(result_uuid=result.uuid):
                return False  # another worker settled it first
            if job is not None and delay is not None:
                request = enqueue_retry(tx, result, job, delay=delay, source=result.source)
                retry_uuid = str(request.uuid) if request else None
                logger.info("retrying a lost job", extra={**_fields(result), "retry": retry_uuid})
            # A workflow's job without a retry ends here, failed: its dependents move on.
            tx.end_workflow_node(result_uuid=result.uuid)
        return job is not None

    @staticmethod
    def _retry_delay(result: JobResult, job: Job | None) -> float | None:
        """The delay before the retry, or None when there is no retry: no attempts left,
        no job to retry, or the job's own delay cannot be computed (it would fail the
        same way every tick)."""
        if job is None or not lifecycle.attempts_left(
            retries=result.retries, retry_attempt=result.retry_attempt
        ):
            return None
        try:
            return retry_delay(job, lifecycle.next_attempt(result.retry_attempt))
        except BaseException as exc:  # user code: SystemExit, KeyboardInterrupt too
            if is_own_interrupt(exc):
                raise
            logger.error(
                "not retrying a lost job: computing its retry delay failed",
                exc_info=exc,
                extra=_fields(result),
            )
            return None


def _fields(result: JobResult) -> dict[str, str]:
    return {"job_class": result.job_class, "job_uuid": str(result.uuid)}
