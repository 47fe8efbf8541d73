"""Why a job is where it is, in plain words: ``errands why ID`` and the dashboard's
Why panel.

:func:`gather` reads what the answer needs from a :class:`JobReader` (the clock,
paused queues, workers, the jobs ahead in its queue, those sharing its concurrency
key, its attempts); :func:`explain` turns those :class:`Facts` into an
:class:`Explanation`, with no further reading, so both surfaces say the same.

What errands can and cannot know: workers record the queues they serve, not the
job classes they can load, so whether a live worker can load a class is "cannot
tell" (a worker that cannot load it ends the job ERRORED; it does not leave it
waiting). A concurrency key decides whether a job is enqueued (``should_enqueue``);
claims do not wait for it, so it never holds an enqueued job back.
"""

from __future__ import annotations

import datetime
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from errands import api, formatting, settings
from errands.backends.reader import JobReader
from errands.limiting import LimitUsage
from errands.models import JobProcess, JobRequest, JobResult, PageSpec, Selection, WorkerInfo
from errands.workflow_models import NodeStatus, WorkflowStatus

Attempt = JobRequest | JobProcess | JobResult
TimeText = Callable[[datetime.datetime | None], str]

#: How far down its queue a pending job's place is counted.
AHEAD_COUNTED = 500
#: How many jobs sharing its concurrency key are read.
SHARING_READ = 20


@dataclass(frozen=True)
class Facts:
    """What :func:`explain` needs, read at one moment."""

    job: Attempt
    now: datetime.datetime
    paused: list[str]
    workers: list[WorkerInfo]
    #: due jobs of its queue that workers claim before it (None: not counted)
    ahead: int | None = None
    #: other pending or running jobs of its class with its concurrency key
    sharing_key: list[JobRequest | JobProcess] = field(default_factory=list)
    chain: list[Attempt] = field(default_factory=list)
    #: the usage of the job's limit keys (flow control), for a pending job
    limits: list[LimitUsage] = field(default_factory=list)
    #: the workflow of a job held until its dependencies end (errands.workflows)
    workflow: WorkflowStatus | None = None


@dataclass(frozen=True)
class Reason:
    """One thing that keeps (or does not keep) the job where it is."""

    code: str
    text: str


@dataclass(frozen=True)
class Explanation:
    """Why a job is where it is: its state in one line, the reasons, its attempts."""

    job: Attempt
    state: str  # scheduled, pending, claimed, running, cancelling or the result's status
    summary: str
    reasons: list[Reason]
    chain: list[Attempt]

    def as_json(self) -> dict[str, Any]:
        return {
            "uuid": str(self.job.uuid),
            "kind": self.job.kind,
            "job_class": self.job.job_class,
            "state": self.state,
            "summary": self.summary,
            "reasons": [{"code": r.code, "text": r.text} for r in self.reasons],
            "attempts": [attempt_json(a, self.job) for a in self.chain],
        }


def attempt_json(attempt: Attempt, job: Attempt) -> dict[str, Any]:
    ended = attempt.ended_at.isoformat() if isinstance(attempt, JobResult) else None
    return {
        "uuid": str(attempt.uuid),
        "kind": attempt.kind,
        "attempt": formatting.attempt_number(attempt),
        "state": attempt_state(attempt),
        "ended_at": ended,
        "error_type": attempt.error_type if isinstance(attempt, JobResult) else "",
        "error": attempt.error if isinstance(attempt, JobResult) else "",
        "this": attempt.uuid == job.uuid,
    }


# -- reading -------------------------------------------------------------------------------


def why(
    uuid: uuid_module.UUID | str, *, time_text: TimeText = formatting.local_time
) -> Explanation | None:
    """Why the job ``uuid`` (or a unique prefix, see :func:`errands.api.resolve_uuid`)
    is where it is, on the current backend; None when no job has it."""
    found = api.get(uuid)
    if found is None:
        return None
    timeout = settings.current().heartbeat_timeout
    return explain(gather(api.backend(), found, heartbeat_timeout=timeout), time_text=time_text)


def gather(reader: JobReader, job: Attempt, *, heartbeat_timeout: float) -> Facts:
    """Read what :func:`explain` needs about ``job``."""
    now = reader.now()
    ahead = None
    if isinstance(job, JobRequest) and job.start_at <= now:
        first = reader.next_requests(
            selection=Selection(queue=job.queue, due=True), limit=AHEAD_COUNTED + 1
        )
        keys = [r.uuid for r in first]
        ahead = keys.index(job.uuid) if job.uuid in keys else len(keys)
    sharing: list[JobRequest | JobProcess] = []
    if isinstance(job, JobRequest | JobProcess) and job.concurrency_key:
        same = Selection(job_class=job.job_class, concurrency_key=job.concurrency_key)
        page = PageSpec(limit=SHARING_READ)
        others: list[JobRequest | JobProcess] = [
            *reader.page_processes(selection=same, page=page),
            *reader.page_requests(selection=same, page=page),
        ]
        sharing = [o for o in others if o.uuid != job.uuid]
    usage: list[LimitUsage] = []
    if isinstance(job, JobRequest) and job.limits:
        limit_keys = {str(limit.key) for limit in job.limits}
        usage = [u for u in reader.limit_usage() if u.key in limit_keys]
    workflow = None
    if isinstance(job, JobRequest) and formatting.is_held_time(job.start_at):
        key = reader.workflow_of_request(request_uuid=job.uuid)
        workflow = reader.workflow(uuid=key) if key is not None else None
    return Facts(
        job=job,
        now=now,
        workflow=workflow,
        limits=usage,
        paused=reader.paused_queues(),
        workers=reader.workers(timeout_seconds=heartbeat_timeout),
        ahead=ahead,
        sharing_key=sharing,
        chain=api.attempt_chain(reader, job),
    )


# -- reasoning -----------------------------------------------------------------------------


def explain(facts: Facts, *, time_text: TimeText = formatting.local_time) -> Explanation:
    """The words for ``facts``: nothing is read here."""
    job = facts.job
    if isinstance(job, JobRequest):
        state = formatting.request_state(job, facts.now)
        if formatting.is_held_time(job.start_at):
            summary, reasons = _held(job, facts)
        else:
            summary, reasons = _waiting(job, facts, time_text)
    elif isinstance(job, JobProcess):
        state = formatting.process_state(job)
        summary, reasons = _running(job, facts, time_text)
    else:
        state = str(job.status)
        summary, reasons = _finished(job, facts, time_text)
    return Explanation(job=job, state=state, summary=summary, reasons=reasons, chain=facts.chain)


def _waiting(job: JobRequest, facts: Facts, time_text: TimeText) -> tuple[str, list[Reason]]:
    reasons: list[Reason] = []
    if job.start_at > facts.now:
        wait = formatting.duration_in_words((job.start_at - facts.now).total_seconds())
        reasons.append(Reason("not_due", f"not due until {time_text(job.start_at)} (in {wait})"))
        summary = f"scheduled: due at {time_text(job.start_at)}"
    else:
        summary = f"pending since {time_text(job.start_at)}, not claimed yet"
    if job.queue in facts.paused:
        reasons.append(
            Reason(
                "queue_paused",
                f"its queue {job.queue!r} is paused: no worker claims its jobs until "
                f"`errands resume {job.queue}`",
            )
        )
    reasons += _workers_of_queue(job, facts.workers)
    reasons += _sharing_key(job, facts.sharing_key)
    reasons += _limits(job, facts.limits)
    if facts.ahead:
        more = "at least " if facts.ahead > AHEAD_COUNTED else ""
        count = min(facts.ahead, AHEAD_COUNTED)
        reasons.append(
            Reason(
                "behind",
                f"behind {more}{count} due job{'s' if count != 1 else ''} of queue "
                f"{job.queue!r} that workers claim first (higher priority, or due earlier)",
            )
        )
    elif facts.ahead == 0 and not any(r.code in _BLOCKING for r in reasons):
        reasons.append(Reason("next", f"it is the next job a worker of queue {job.queue!r} claims"))
    return summary, reasons


def _held(job: JobRequest, facts: Facts) -> tuple[str, list[Reason]]:
    """A workflow job waiting for the jobs it depends on: which, and where they stand."""
    found = facts.workflow
    node = _node_of(found, job) if found is not None else None
    if found is None or node is None:  # its workflow was deleted meanwhile
        return "waiting: held until the jobs it depends on end", [
            Reason("dependencies", "it waits for the jobs it depends on (its workflow is gone)")
        ]
    parents = [found.node(parent) for parent in node.depends_on]
    open_ = [parent for parent in parents if not parent.state.ended]
    listed = ", ".join(f"{parent.name} ({formatting.node_state(parent)})" for parent in parents)
    named = f" {found.name!r}" if found.name else ""
    summary = (
        f"waiting for {len(open_)} of the {len(parents)} job{'s' if len(parents) != 1 else ''} "
        f"it depends on in workflow{named} ({found.uuid})"
    )
    when = (
        "once they all ended, however they ended (run_on_failure)"
        if node.run_on_failure
        else "once they all succeeded; it is cancelled if one does not"
    )
    reasons = [Reason("dependencies", f"it waits for {listed}: it becomes due {when}")]
    if job.queue in facts.paused:
        reasons.append(
            Reason(
                "queue_paused", f"its queue {job.queue!r} is paused (`errands resume {job.queue}`)"
            )
        )
    return summary, reasons


def _node_of(found: WorkflowStatus, job: JobRequest) -> NodeStatus | None:
    return next((node for node in found.nodes if node.request_uuid == job.uuid), None)


#: Reasons that keep a due job from being claimed at all.
_BLOCKING = frozenset({"queue_paused", "no_worker", "limit_full"})


def _limits(job: JobRequest, usage: list[LimitUsage]) -> list[Reason]:
    """Each of the job's limits: whether it holds the job back now, and why."""
    by_key = {u.key: u for u in usage}
    reasons = []
    for limit in job.limits:
        key = str(limit.key)
        found = by_key.get(key)
        running = found.running if found else 0
        starts = found.recent_starts if found and found.recent_starts is not None else 0
        held = []
        if limit.concurrency is not None and running >= limit.concurrency:
            held.append(f"{running} of its jobs claimed or running, {limit.concurrency} allowed")
        window = limit.rate_window
        if window is not None and starts >= window[0]:
            held.append(
                f"{starts} started within the last {formatting.duration_in_words(window[1])}"
            )
        if held:
            text = f"held back by its limit {limit.describe()}: {'; '.join(held)}"
            reasons.append(Reason("limit_full", text + "; a worker claims it once that frees"))
        else:
            reasons.append(
                Reason("limit", f"its limit {limit.describe()} allows it ({running} running)")
            )
    return reasons


def _workers_of_queue(job: JobRequest, workers: list[WorkerInfo]) -> list[Reason]:
    live = [w for w in workers if not w.stale]
    serving = [w for w in live if not w.queues or job.queue in w.queues]
    if not live:
        stale = len(workers)
        note = f" ({stale} stale: silent past the heartbeat timeout)" if stale else ""
        return [Reason("no_worker", f"no live worker is running{note}")]
    if not serving:
        served = sorted({q for w in live for q in w.queues})
        return [
            Reason(
                "no_worker",
                f"no live worker serves queue {job.queue!r} (the {len(live)} live "
                f"worker{'s' if len(live) != 1 else ''} serve: {', '.join(served)})",
            )
        ]
    return [
        Reason(
            "job_class",
            f"{len(serving)} live worker{'s' if len(serving) != 1 else ''} serve "
            f"queue {job.queue!r}; cannot tell whether they can load {job.job_class} "
            "(workers do not record their job classes; one that cannot ends the job "
            "ERRORED, it does not leave it waiting)",
        )
    ]


def _sharing_key(job: JobRequest, sharing: list[JobRequest | JobProcess]) -> list[Reason]:
    if not job.concurrency_key:
        return []
    if not sharing:
        return [
            Reason(
                "concurrency_key",
                f"no other job holds its concurrency key {job.concurrency_key!r}",
            )
        ]
    running = sum(1 for s in sharing if isinstance(s, JobProcess))
    more = "+" if len(sharing) >= 2 * SHARING_READ - 1 else ""
    return [
        Reason(
            "concurrency_key",
            f"{len(sharing)}{more} other job{'s' if len(sharing) != 1 else ''} of its class "
            f"share its concurrency key {job.concurrency_key!r} ({running} claimed or "
            f"running, {len(sharing) - running} pending); keys limit enqueueing "
            "(should_enqueue), claims do not wait for them, so they do not hold it back",
        )
    ]


def _running(job: JobProcess, facts: Facts, time_text: TimeText) -> tuple[str, list[Reason]]:
    worker = next((w for w in facts.workers if w.worker_id == job.worker_id), None)
    on = _worker_name(worker, job.worker_id)
    if job.started_at is None:
        summary = f"claimed by worker {on} at {time_text(job.created_at)}, not started yet"
    else:
        took = formatting.duration_in_words((facts.now - job.started_at).total_seconds())
        summary = f"running on worker {on} since {time_text(job.started_at)} ({took})"
    reasons: list[Reason] = []
    if job.started_at is None:
        reasons.append(
            Reason("claimed", "its worker claimed it ahead and starts it when a slot is free")
        )
    if worker is None:
        reasons.append(
            Reason(
                "worker_gone",
                "its worker has no heartbeat row: a live worker will rescue the job as LOST",
            )
        )
    elif worker.stale:
        reasons.append(
            Reason(
                "worker_stale",
                f"its worker has been silent since {time_text(worker.last_heartbeat_at)}: "
                "a live worker will rescue the job as LOST",
            )
        )
    if job.cancel_requested:
        reasons.append(Reason("cancelling", "cancellation requested: its worker will stop it"))
    if job.timeout and job.started_at is not None:
        ends = job.started_at + datetime.timedelta(seconds=job.timeout)
        reasons.append(Reason("timeout", f"its timeout stops it at {time_text(ends)}"))
    return summary, reasons


def _worker_name(worker: WorkerInfo | None, worker_id: uuid_module.UUID) -> str:
    if worker is None:
        return str(worker_id)
    return f"{worker.hostname} pid {worker.pid} ({worker_id})"


def _finished(job: JobResult, facts: Facts, time_text: TimeText) -> tuple[str, list[Reason]]:
    attempt = formatting.attempt_text(job)
    summary = f"finished {job.status} at {time_text(job.ended_at)} (attempt {attempt})"
    reasons: list[Reason] = []
    if job.error_type or job.error:
        reasons.append(Reason("error", f"{job.error_type}: {job.error}".strip(": ")))
    later = [a for a in facts.chain if formatting.attempt_number(a) > job.retry_attempt + 1]
    if job.retry_request_uuid is None:
        reasons.append(Reason("final", "no further attempt was enqueued"))
    elif later:
        last = later[-1]
        reasons.append(
            Reason(
                "retried",
                f"its latest attempt is {formatting.attempt_text(last)}: "
                f"{attempt_state(last)} ({last.kind} {last.uuid})",
            )
        )
    return summary, reasons


def attempt_state(attempt: Attempt) -> str:
    """One word for an attempt: its result's status, or running/claimed/pending."""
    if isinstance(attempt, JobResult):
        return str(attempt.status)
    if isinstance(attempt, JobProcess):
        return formatting.process_state(attempt)
    return "pending"
