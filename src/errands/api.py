"""Inspecting and operating the queue from Python: list, get, cancel, retry, purge.

Every function here uses the backend named by the current settings
(``database_url``), opened once per process and reused.
"""

from __future__ import annotations

import logging
import string
import uuid as uuid_module
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from errands import settings

# The process's backend lives below the jobs API (which enqueues through it); this
# module has been its public home.
from errands.backends.current import backend as backend
from errands.backends.current import set_backend_opener as set_backend_opener
from errands.backends.current import use_backend as use_backend
from errands.backends.reader import JobReader, prefix_range
from errands.errors import AlreadyRetried
from errands.limiting import LimitUsage
from errands.models import (
    Cursor,
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    PageSpec,
    Selection,
    Stats,
    Status,
    WorkerInfo,
)

if TYPE_CHECKING:
    from errands.jobs import Job
    from errands.schedule_report import EntryStatus

logger = logging.getLogger("errands")


def configure(**values: Any) -> None:
    """Set settings in code (the lowest-priority source); see ``errands.settings``."""
    settings.configure(**values)


def _uuid(value: uuid_module.UUID | str) -> uuid_module.UUID:
    return value if isinstance(value, uuid_module.UUID) else uuid_module.UUID(str(value))


def requests(
    *,
    queue: str | None = None,
    job_class: str | None = None,
    concurrency_key: str | None = None,
    limit: int = 100,
    tag: str | None = None,
) -> list[JobRequest]:
    """Pending requests in claim order (``tag``: only those carrying it)."""
    selection = Selection(queue, job_class, concurrency_key, tag=tag)
    return backend().next_requests(selection=selection, limit=limit)


def processes(
    *,
    queue: str | None = None,
    job_class: str | None = None,
    concurrency_key: str | None = None,
    limit: int = 100,
    tag: str | None = None,
) -> list[JobProcess]:
    """Claimed and running processes, oldest claim first."""
    selection = Selection(queue, job_class, concurrency_key, tag=tag)
    return backend().page_processes(selection=selection, page=PageSpec(limit=limit))


def results(
    *,
    queue: str | None = None,
    status: Status | str | None = None,
    job_class: str | None = None,
    concurrency_key: str | None = None,
    limit: int = 100,
    final: bool | None = None,
    tag: str | None = None,
) -> list[JobResult]:
    """Finished processes, newest first. ``final=True``: only the final failures
    ("dead letters": ERRORED or LOST with no attempts left, never retried since)."""
    selection = Selection(
        queue=queue,
        status=Status(status) if status else None,
        job_class=job_class,
        concurrency_key=concurrency_key,
        final=final,
        tag=tag,
    )
    return backend().page_results(selection=selection, page=PageSpec(limit=limit))


def get(uuid: uuid_module.UUID | str) -> JobRequest | JobProcess | JobResult | None:
    """A request, process or result by its uuid (a request's uuid finds its latest result).

    ``uuid`` may also be a unique prefix of one, at least :data:`SHORT_ID_LENGTH` hex
    characters (``"01a24f63"``, as the dashboard shows uuids): see :func:`resolve_uuid`,
    which raises ValueError for a prefix too short and AmbiguousUuid for one that
    several jobs' uuids start with. None when no job has the uuid (or the prefix).
    """
    key = resolve_uuid(uuid)
    return None if key is None else backend().get(uuid=key)


# -- short ids ---------------------------------------------------------------------------

#: The fewest characters of a uuid that :func:`resolve_uuid` takes as a prefix.
SHORT_ID_LENGTH = 6
#: How many matches an ambiguous prefix lists.
SHOWN_MATCHES = 10


@dataclass(frozen=True)
class UuidMatch:
    """A uuid that a prefix matched: the row it finds, and which of its uuids it is."""

    uuid: uuid_module.UUID
    kind: str  # request, process or result: what errands.get(uuid) returns
    job_class: str
    role: str = ""  # "" for the row's own uuid, else "its request" or "its process"
    row_uuid: uuid_module.UUID | None = None  # the row's own uuid (None: ``uuid``)

    def describe(self) -> str:
        what = f"{self.kind} ({self.role})" if self.role else self.kind
        return f"{self.uuid}  {what:<22} {self.job_class}"


class AmbiguousUuid(LookupError):
    """Several jobs' uuids start with ``prefix``; ``matches`` lists (some of) them."""

    def __init__(self, prefix: str, matches: list[UuidMatch]) -> None:
        listed = "\n".join(f"  {m.describe()}" for m in matches)
        more = " (or more)" if len(matches) >= SHOWN_MATCHES else ""
        super().__init__(
            f"{prefix!r} is the start of {len(matches)}{more} uuids; "
            f"give more characters:\n{listed}"
        )
        self.prefix = prefix
        self.matches = matches


def find_uuids(prefix: str, *, limit: int = SHOWN_MATCHES) -> list[UuidMatch]:
    """The distinct uuids of jobs (requests, processes, results, and the request and
    process uuids results keep) starting with ``prefix``: at most ``limit``."""
    low, high = prefix_range(prefix)
    matches: dict[uuid_module.UUID, UuidMatch] = {}
    for row in backend().find_prefix(prefix=prefix, limit=limit):
        keys = [(row.uuid, "")]
        if not isinstance(row, JobRequest):
            keys.append((row.request_uuid, "its request"))
        if isinstance(row, JobResult):
            keys.append((row.process_uuid, "its process"))
        for key, role in keys:
            if low <= key <= high and key not in matches:
                matches[key] = UuidMatch(key, row.kind, row.job_class, role, row.uuid)
    return sorted(matches.values(), key=lambda m: m.uuid)[:limit]


def resolve_uuid(value: uuid_module.UUID | str) -> uuid_module.UUID | None:
    """The uuid ``value`` names: a whole uuid as it is, or the one job uuid that a
    prefix of at least :data:`SHORT_ID_LENGTH` hex characters starts (hyphens and case
    ignored; None if no job's does). Uuids are time-ordered (version 7): those made
    in the same minute share their first 8 characters, so a short id may need more.

    Raises ValueError for text that is not hex or a prefix too short, and
    :class:`AmbiguousUuid`, listing the matches, when several uuids start with it.
    """
    if isinstance(value, uuid_module.UUID):
        return value
    text = str(value).strip()
    try:
        return uuid_module.UUID(text)
    except ValueError:
        pass
    digits = text.replace("-", "")
    if not digits or len(digits) > 32 or not all(c in string.hexdigits for c in digits):
        raise ValueError(
            f"{text!r} is not a uuid, nor the start of one (give at least "
            f"{SHORT_ID_LENGTH} of its hex characters, e.g. 3f1c2a4e)"
        )
    if len(digits) < SHORT_ID_LENGTH:
        raise ValueError(
            f"{text!r} is too short for a uuid prefix: give at least "
            f"{SHORT_ID_LENGTH} of its characters (e.g. 3f1c2a4e)"
        )
    matches = find_uuids(text)
    rows = {match.row_uuid or match.uuid for match in matches}
    if len(rows) > 1:  # not when a result's own uuid and its process's both start so
        raise AmbiguousUuid(text, matches)
    return rows.pop() if rows else None


def cancel(uuid: uuid_module.UUID | str) -> JobResult | JobProcess | None:
    """Cancel a pending request (returns its CANCELLED result) or ask the worker running a
    process to terminate it (returns the process; its result appears within seconds).
    None when nothing pending or running has this uuid."""
    b = backend()
    result = b.cancel_pending(uuid=_uuid(uuid))
    if result is not None:
        dispatch_aborted_hooks([result])
        return result
    if b.flag_to_stop(uuid=_uuid(uuid)):
        found = b.get(uuid=_uuid(uuid))
        return found if isinstance(found, JobProcess) else None
    return None


def retry(
    uuid: uuid_module.UUID | str, *, delay: float | None = None, source: str | None = None
) -> JobRequest | None:
    """Enqueue a finished job again as its next attempt, linked from its result.

    ``delay`` defaults to the job's ``calculate_retry_delay``. ``source`` is the new
    request's (see ``EnqueueOptions.source``; default: the caller's ``file:line``).
    Returns None when ``should_enqueue`` declined. Raises LookupError if no result
    has this uuid, and AlreadyRetried (naming the attempt) if it was retried already:
    a result gets one next attempt, however often or from wherever it is retried.
    """
    found = get(uuid)
    if not isinstance(found, JobResult):
        raise LookupError(f"no finished job with uuid {uuid}")
    return retry_result(found, delay=delay, source=source)


def retry_result(
    result: JobResult, *, delay: float | None = None, source: str | None = None
) -> JobRequest | None:
    """Enqueue ``result``'s next attempt, linked from it (see :func:`retry`); raises
    AlreadyRetried, naming that attempt's request, when it has one already."""
    from errands import telemetry
    from errands.registry import build_job
    from errands.retrying import enqueue_retry

    if result.retry_request_uuid is not None:
        raise AlreadyRetried(result.uuid, result.retry_request_uuid)
    job = build_job(result.job_class, result.parameters)
    b = backend()
    try:
        with telemetry.counting_sends(b), b.enqueue_transaction() as tx:
            return enqueue_retry(tx, result, job, delay=delay, source=source)
    except AlreadyRetried:
        # Another retry linked first, while this one ran: name the attempt it made.
        found = b.get(uuid=result.uuid)
        linked = found.retry_request_uuid if isinstance(found, JobResult) else None
        raise AlreadyRetried(result.uuid, linked) from None


def dispatch_aborted_hooks(results: list[JobResult]) -> None:
    """Run ``Job.on_aborted`` for LOST/CANCELLED results; errors are logged, never raised."""
    from errands.registry import build_job

    for result in results:
        try:
            job: Job = build_job(result.job_class, result.parameters)
            job.on_aborted(result)
        except Exception:
            logger.exception(
                "on_aborted failed",
                extra={"job_class": result.job_class, "job_uuid": str(result.uuid)},
            )


def purge(*, older_than: float | None = None) -> int:
    """Delete results (all, or those that ended more than ``older_than`` seconds ago)."""
    return backend().purge(older_than_seconds=older_than)


def stats() -> Stats:
    return backend().stats(heartbeat_timeout_seconds=settings.current().heartbeat_timeout)


def limit_usage() -> list[LimitUsage]:
    """Every limit key of a pending or claimed job: its limits, its jobs, its recent starts."""
    return backend().limit_usage()


def workers() -> list[WorkerInfo]:
    return backend().workers(timeout_seconds=settings.current().heartbeat_timeout)


def pause_queue(queue: str) -> bool:
    """Stop all workers claiming from ``queue`` (running jobs finish); False if already paused."""
    return backend().pause_queue(queue=queue)


def resume_queue(queue: str) -> bool:
    """Let workers claim from ``queue`` again; False if it was not paused."""
    return backend().resume_queue(queue=queue)


def paused_queues() -> list[str]:
    return backend().paused_queues()


def schedule_status(*, count: int = 3) -> list[EntryStatus]:
    """The configured schedule entries with their next runs and latest occurrence."""
    from errands import scheduler
    from errands.schedule_report import status

    current = settings.current()
    entries = scheduler.parse_entries(current.schedule, current.timezone)
    return status(backend(), entries, count=count)


# -- operating on a selection (the dashboard; the CLI may use these too) ------------------

#: Rows one statement of a bulk operation touches, so no transaction holds locks long.
BULK_BATCH = 1000


@dataclass(frozen=True)
class BulkOutcome:
    """What a bulk operation did: ``done`` rows; ``skipped`` ones it could not act on
    (a retry declined by ``should_enqueue`` or failing, see the log)."""

    done: int
    skipped: int = 0


def count(kind: Kind | str, selection: Selection) -> int:
    """How many requests, processes or results ``selection`` covers."""
    return backend().count(kind=Kind(kind), selection=selection)


def cancel_selected(kind: Kind | str, selection: Selection) -> BulkOutcome:
    """Cancel every selected pending request (each becomes a CANCELLED result and its
    ``on_aborted`` runs) or ask the workers of every selected process to terminate it."""
    b = backend()
    if Kind(kind) is Kind.PROCESS:
        return BulkOutcome(done=b.flag_to_stop_selected(selection=selection))
    if Kind(kind) is not Kind.REQUEST:
        raise ValueError("only requests and processes can be cancelled")
    done = 0
    while batch := b.cancel_pending_selected(selection=selection, limit=BULK_BATCH):
        dispatch_aborted_hooks(batch)
        done += len(batch)
    return BulkOutcome(done=done)


def retry_selected(
    selection: Selection, *, limit: int = BULK_BATCH, source: str | None = None
) -> BulkOutcome:
    """Retry up to ``limit`` selected results that were not retried yet, newest first.

    Each is retried as :func:`retry_result` does (its next attempt, linked from the
    result, with this ``source``), due at once rather than after the job's retry
    delay. Results whose job declines or fails to enqueue are counted as skipped.
    """
    pending = replace(selection, retried=False)
    outcome = BulkOutcome(done=0)
    cursor: Cursor | None = None
    while outcome.done + outcome.skipped < limit:
        page = PageSpec(after=cursor, limit=min(100, limit - outcome.done - outcome.skipped))
        results = backend().page_results(selection=pending, page=page)
        if not results:
            break
        for result in results:
            outcome = _retry_counted(result, outcome, source)
        cursor = Cursor(at=results[-1].ended_at, uuid=results[-1].uuid)
    return outcome


def _retry_counted(result: JobResult, outcome: BulkOutcome, source: str | None) -> BulkOutcome:
    try:
        retried = retry_result(result, delay=0, source=source) is not None
    except AlreadyRetried:
        retried = False  # retried meanwhile (another operator, another tab)
    except Exception:
        logger.exception(
            "could not retry job",
            extra={"job_class": result.job_class, "job_uuid": str(result.uuid)},
        )
        retried = False
    if retried:
        return replace(outcome, done=outcome.done + 1)
    return replace(outcome, skipped=outcome.skipped + 1)


def delete_selected(kind: Kind | str, selection: Selection) -> BulkOutcome:
    """Delete every selected pending request (without a result) or result."""
    b = backend()
    done = 0
    while deleted := b.delete(kind=Kind(kind), selection=selection, limit=BULK_BATCH):
        done += deleted
    return BulkOutcome(done=done)


def delete(uuid: uuid_module.UUID | str) -> bool:
    """Delete the pending request or the result with this uuid; False if there is none.

    A running process cannot be deleted: :func:`cancel` it.
    """
    b = backend()
    only = Selection(uuid=_uuid(uuid))
    return any(b.delete(kind=kind, selection=only, limit=1) for kind in (Kind.REQUEST, Kind.RESULT))


Attempt = JobRequest | JobProcess | JobResult


def retry_chain(
    uuid: uuid_module.UUID | str, *, longest: int = 50, reader: JobReader | None = None
) -> list[Attempt]:
    """Every attempt of the job that ``uuid`` belongs to, first to last.

    Attempts are linked by retries and deferrals: a result's ``retry_request_uuid``
    is the next attempt's request, found again by :meth:`Backend.retried_by`.
    Chains longer than ``longest`` are cut at both ends around ``uuid``. ``reader``
    defaults to the current backend.
    """
    found = get(uuid) if reader is None else reader.get(uuid=_uuid(uuid))
    if found is None:
        return []
    return attempt_chain(reader or backend(), found, longest=longest)


def attempt_chain(reader: JobReader, attempt: Attempt, *, longest: int = 50) -> list[Attempt]:
    """The attempts of ``attempt``'s job, first to last (see :func:`retry_chain`)."""
    return [
        *reversed(_earlier_attempts(reader, attempt, longest)),
        attempt,
        *_later_attempts(reader, attempt, longest),
    ]


def _request_uuid_of(attempt: Attempt) -> uuid_module.UUID:
    return attempt.uuid if isinstance(attempt, JobRequest) else attempt.request_uuid


def _earlier_attempts(reader: JobReader, attempt: Attempt, longest: int) -> list[Attempt]:
    earlier: list[Attempt] = []
    while len(earlier) < longest:
        previous = reader.retried_by(request_uuid=_request_uuid_of(attempt))
        if previous is None:
            break
        earlier.append(previous)
        attempt = previous
    return earlier


def _later_attempts(reader: JobReader, attempt: Attempt, longest: int) -> list[Attempt]:
    later: list[Attempt] = []
    while len(later) < longest and isinstance(attempt, JobResult) and attempt.retry_request_uuid:
        following = reader.get(uuid=attempt.retry_request_uuid)
        if following is None:
            break  # the next attempt's rows were pruned or deleted
        later.append(following)
        attempt = following
    return later


# -- waiting for results ---------------------------------------------------------------


def wait_for_result(
    uuid: uuid_module.UUID | str,
    *,
    timeout: float | None = None,
    follow_retries: bool = True,
) -> JobResult:
    """Block until the job enqueued as request ``uuid`` has its final result; return it.

    Final means SUCCESSFUL, or ERRORED/LOST/CANCELLED with no retry left: a retried
    or DEFERRED attempt is followed to the request that continues the job (unless
    ``follow_retries=False``, which returns the first result). The wait is woken by
    a notification on PostgreSQL and by a commit to the file on SQLite, not by tight
    polling. ``timeout`` is in seconds (None waits for ever); when it passes,
    TimeoutError names the job's latest state. LookupError if no job has the uuid.
    A SUCCESSFUL result carries ``run()``'s value as ``return_value`` (stored as JSON).
    """
    from errands import waiting

    return waiting.wait_for_result(
        backend(), _uuid(uuid), timeout=timeout, follow_retries=follow_retries
    )


async def wait_for_result_async(
    uuid: uuid_module.UUID | str,
    *,
    timeout: float | None = None,
    follow_retries: bool = True,
) -> JobResult:
    """:func:`wait_for_result` for ``async`` code (the wait runs on a thread)."""
    from errands import waiting

    return await waiting.wait_for_result_async(
        backend(), _uuid(uuid), timeout=timeout, follow_retries=follow_retries
    )
