"""Deferrals: a DEFERRED attempt's result and its re-enqueue, through ``should_enqueue``.

A job that raised ``DeferJob`` is enqueued again after its delay as any enqueue
is, asking the job's ``should_enqueue`` (as the reference implementation does),
in the transaction that writes its result:

1. the process is deleted and its DEFERRED result written (``Backend.completing``),
   so the job's own concurrency slot is free;
2. the job, rebuilt here in the parent, is enqueued through the normal path
   (``jobs.enqueue_in``: slot locks, ``should_enqueue``, telemetry), with the
   attempt's queue, priority, retries, concurrency key, timeout and source, the
   deferral's delay and attempt;
3. the result is linked to the new request, and the transaction commits.

When ``should_enqueue`` declines, that transaction is rolled back and the result
is written DEFERRED without a new request, its message saying the re-enqueue was
skipped (``lifecycle.deferral_skipped``). A job this process cannot rebuild, or
whose ``should_enqueue`` raises, is written the same way with the reason
(``lifecycle.deferral_failed``) and logged. Each step is all or nothing: a worker
that dies in between leaves the process for the rescue, as any job it held.

A deferral that needs no decision, as for any enqueue (no concurrency key, the
default ``should_enqueue``: ``jobs.enqueue_many`` inserts such jobs unasked), is
written with the batch's other outcomes, its new request in the same statement
(``Backend.complete_many``), as before. The others are written one by one after
them, each in its own transaction (``batches.Batch``): a batch without deferrals
costs nothing more, one with any reads this worker's processes once to tell them
apart (``split``).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence

from errands import lifecycle, telemetry
from errands.backends import Backend
from errands.errors import BackendError
from errands.jobs import EnqueueOptions, Job, enqueue_in
from errands.models import JobProcess, JobResult, Outcome, Requeue, Status
from errands.registry import build_job, load_job_class

logger = logging.getLogger("errands")


def is_deferral(outcome: Outcome) -> bool:
    """Whether ``outcome`` is written by :func:`write_deferral` (a DEFERRED attempt
    to enqueue again)."""
    return outcome.requeue is not None and outcome.status is Status.DEFERRED


def split(
    backend: Backend, worker_id: uuid.UUID, outcomes: Sequence[Outcome]
) -> tuple[list[Outcome], list[Outcome]]:
    """``outcomes`` as (those ``complete_many`` writes, requeue included; the deferrals
    :func:`write_deferral` writes, whose re-enqueue asks ``should_enqueue``)."""
    held = {p.uuid: p for p in backend.processes_of_worker(worker_id=worker_id)}
    plain: list[Outcome] = []
    decided: list[Outcome] = []
    for outcome in outcomes:
        process = held.get(outcome.process_uuid)
        if is_deferral(outcome) and process is not None and _needs_decision(process):
            decided.append(outcome)
        else:  # not a deferral, one needing no decision, or a process gone (skipped)
            plain.append(outcome)
    return plain, decided


def _needs_decision(process: JobProcess) -> bool:
    """Whether enqueueing the job again must ask its ``should_enqueue`` (as
    ``jobs.enqueue_many`` would); True when its class cannot be loaded here
    (``write_deferral`` then says why it is not enqueued again)."""
    if process.concurrency_key:
        return True
    try:
        job_class = load_job_class(process.job_class)
    except Exception:
        return True
    return job_class.should_enqueue is not Job.should_enqueue


class _NotEnqueued(Exception):
    """Rolls back a deferral's transaction: write its result without a new request."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def write_deferral(backend: Backend, outcome: Outcome) -> JobResult | None:
    """Write a DEFERRED outcome and enqueue its job again (see the module); the written
    result, or None when the process is gone (rescued or cancelled meanwhile)."""
    requeue = outcome.requeue
    assert requeue is not None
    try:
        with (
            telemetry.counting_sends(backend),
            backend.completing(outcome=outcome) as (result, tx),
        ):
            if result is None:
                return None
            try:
                job = build_job(result.job_class, result.parameters)
                request = enqueue_in(tx, [job], options=_options(result, requeue))[0]
            except BackendError:
                raise
            except Exception as exc:
                logger.exception("cannot enqueue a deferred job again", extra=_fields(result))
                why = f"{lifecycle.error_type_of(exc)}: {exc}"
                raise _NotEnqueued(lifecycle.deferral_failed(requeue.delay_seconds, why)) from exc
            if request is None:
                skipped = lifecycle.deferral_skipped(requeue.delay_seconds, result.concurrency_key)
                raise _NotEnqueued(skipped)
            tx.link_retry(result_uuid=result.uuid, request_uuid=request.uuid)
            return dataclasses.replace(result, retry_request_uuid=request.uuid)
    except _NotEnqueued as declined:
        ended = dataclasses.replace(outcome, requeue=None, error=declined.error)
        with backend.completing(outcome=ended) as (written, tx):
            if written is not None:
                # No new request follows: a workflow's job ends here (its dependents
                # move on), in the transaction that writes its result.
                tx.end_workflow_node(result_uuid=written.uuid)
        return written


def _options(result: JobResult, requeue: Requeue) -> EnqueueOptions:
    """The attempt's own options, with the deferral's delay and attempt."""
    return EnqueueOptions(
        queue=result.queue,
        delay=requeue.delay_seconds,
        priority=result.priority,
        retries=result.retries,
        retry_attempt=requeue.retry_attempt,
        concurrency_key=result.concurrency_key,
        timeout=result.timeout,
        limits=result.limits,
        source=result.source,
    )


def _fields(result: JobResult) -> dict[str, str]:
    return {"job_class": result.job_class, "job_uuid": str(result.uuid)}
