"""The jobs API: define a ``Job``, enqueue it with ``run_in_worker`` or ``enqueue_many``.

Enqueueing is one transaction: concurrency slots are locked, ``should_enqueue`` hooks
decide, and every accepted job is inserted in one round trip. With ``connection=``
the transaction is the caller's, so the jobs exist only if the caller commits.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from errands import expiry, progress, serialization, tagging, telemetry, uniqueness, validation
from errands.backends import current
from errands.backends.base import ConcurrencySlot, EnqueueTransaction
from errands.backoff import Backoff
from errands.callers import caller_location, storable
from errands.containment import ask_hook
from errands.context import ContextAttribute
from errands.errors import OptionError
from errands.gc_pause import LARGE_BATCH, without_cyclic_gc
from errands.limiting import Limit, check_limits
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    NewRequest,
    build_new_request,
    uuid7s,
)
from errands.registry import class_facts, job_class_path
from errands.settings import current as current_settings
from errands.uniqueness import Unique
from errands.validation import plain_options

T = TypeVar("T")

Delay = float | int | datetime.timedelta | datetime.datetime | None

_current_transaction: contextvars.ContextVar[EnqueueTransaction | None] = contextvars.ContextVar(
    "errands_enqueue_transaction", default=None
)


class Job:
    """Base class of background jobs. Subclass it, implement ``run()``, decorate with
    ``@register_job``. The constructor's arguments are the job's parameters: they are
    stored as JSON at enqueue and passed again when the worker rebuilds the job.
    """

    _errands_arguments: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Job:
        job = super().__new__(cls)
        job._errands_arguments = (args, kwargs)
        return job

    def run(self) -> Any:
        """The work. May be ``async def``. A returned value must be JSON-serialisable."""
        raise NotImplementedError(f"{type(self).__name__}.run() is not implemented")

    # -- defaults, overridable per call of run_in_worker ---------------------
    def default_queue(self) -> str:
        return "default"

    def default_priority(self) -> int:
        """Higher runs first: 10 before 5 before 0 before -5."""
        return 0

    def default_retries(self) -> int:
        return 0

    def default_concurrency_key(self) -> str:
        return ""

    def default_timeout(self) -> float | None:
        """Seconds the job may run before it is killed; None for no limit."""
        return None

    #: Flow control: the job runs only when every one of these allows it (see Limit).
    limits: Sequence[Limit] = ()

    def get_limits(self) -> Sequence[Limit]:
        """This job's limits (default: the class's ``limits``); keys may depend on it."""
        return self.limits

    #: Uniqueness: at most one job of this class and key in the given states; a
    #: duplicate is skipped, or replaces or postpones the pending one (see Unique).
    unique: Unique | None = None

    #: Retries: the delay before each (None: the retry_backoff setting's), the
    #: exceptions retried (empty: all) and those never retried (see lifecycle).
    retry_backoff: Backoff | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    fail_on: tuple[type[BaseException], ...] = ()

    #: Seconds this class's results are kept, or a table by status (None: the
    #: results_retention setting's; see errands.worker.prune).
    results_retention: float | dict[str, float] | None = None

    #: This run's JobContext while a worker runs the job (else JobContextUnavailable).
    context = ContextAttribute()

    #: self.report_progress(done, total=None, message=None): see errands.progress.
    report_progress = progress.report

    # -- hooks ------------------------------------------------------------
    def calculate_retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry): the
        class's ``retry_backoff``, else the setting's; 0 (at once) without either."""
        backoff = self.retry_backoff or current_settings().retry_backoff
        return 0 if backoff is None else backoff.delay(attempt)

    def should_enqueue(self, concurrency_key: str) -> bool:
        """Decide, inside the enqueue transaction, whether to enqueue this job.

        The default allows one pending-or-processing job per (job class, non-empty
        concurrency key). Enqueues of the same slot are serialised by a lock, so an
        override that counts ``get_requested_jobs``/``get_processing_jobs`` is race-free.
        """
        if not concurrency_key:
            return True
        slot = (job_class_path(type(self)), concurrency_key)
        return not _transaction().slots_in_use([slot])

    def on_aborted(self, result: JobResult) -> None:
        """Called after this job's process ended LOST or CANCELLED: ``run()`` never
        finished, so its ``finally`` blocks may not have run. Exceptions are logged."""

    # -- helpers for should_enqueue --------------------------------------
    def get_requested_jobs(self, concurrency_key: str | None = None) -> list[JobRequest]:
        """Pending requests of this class with the key (default: this job's key)."""
        return _transaction_or_new(lambda tx: tx.requests_for_slot(self._slot(concurrency_key)))

    def get_processing_jobs(self, concurrency_key: str | None = None) -> list[JobProcess]:
        """Claimed or running processes of this class with the key."""
        return _transaction_or_new(lambda tx: tx.processes_for_slot(self._slot(concurrency_key)))

    def _slot(self, concurrency_key: str | None) -> ConcurrencySlot:
        key = self.default_concurrency_key() if concurrency_key is None else concurrency_key
        return (job_class_path(type(self)), key)

    # -- enqueue -------------------------------------------------------------
    def run_in_worker(
        self,
        *,
        queue: str | None = None,
        delay: Delay = None,
        priority: int | None = None,
        retries: int | None = None,
        retry_attempt: int = 0,
        concurrency_key: str | None = None,
        timeout: float | None = None,
        limits: Sequence[Limit] | None = None,
        unique: Unique | None = None,
        connection: Any | None = None,
        expires: Delay = None,
        tags: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> JobRequest | None:
        """Enqueue this job; return the created request, or None if ``should_enqueue``
        (or, for a unique job, its ``Unique``) declined; a unique job that replaced a
        pending one returns that request, as it now is.

        ``delay`` is seconds, a ``timedelta``, or an aware ``datetime`` to start at.
        ``connection`` is an open database connection of the caller's whose
        transaction the enqueue joins. Options and parameters are checked before
        the database is touched (see ``errands.validation``): a value that cannot
        be stored as given raises ``ParameterError`` naming the class and option.
        """
        if concurrency_key:
            uniqueness.check_own_key(concurrency_key, job_class_path(type(self)), "concurrency_key")
        options = EnqueueOptions(
            queue=queue,
            delay=delay,
            priority=priority,
            retries=retries,
            retry_attempt=retry_attempt,
            concurrency_key=concurrency_key,
            timeout=timeout,
            limits=limits,
            unique=unique,
            expires=expires,
            tags=tags,
            meta=meta,
        )
        return enqueue_many([self], options=options, connection=connection)[0]

    async def run_in_worker_async(
        self, *, connection: Any | None = None, **options: Any
    ) -> JobRequest | None:
        """``run_in_worker`` for asyncio, with the same options; ``connection`` is a
        psycopg ``AsyncConnection`` (see errands.async_enqueue)."""
        from errands.async_enqueue import run_in_worker_async

        return await run_in_worker_async(self, connection=connection, **options)


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-call overrides of a job's defaults; None means "use the job's default"."""

    queue: str | None = None
    delay: Delay = None
    priority: int | None = None
    retries: int | None = None
    retry_attempt: int = 0
    concurrency_key: str | None = None
    timeout: float | None = None
    #: Flow control: replaces the jobs' own limits (``[]``: none); None keeps them.
    limits: Sequence[Limit] | None = None
    #: Uniqueness: replaces the jobs' own ``unique`` (None keeps it).
    unique: Unique | None = None
    #: Where the jobs came from, stored as their ``source`` (shown by ``errands get``
    #: and the dashboard). None: the ``file:line`` that called errands. errands names
    #: its own enqueues: ``schedule:<entry key>``, ``cli:errands run``,
    #: ``cli:errands retry``, ``dashboard:retry``, ``dashboard:run schedule:<entry key>``,
    #: ``demo``, ``django:tasks``.
    source: str | None = None
    #: Expiry (errands.expiry): seconds, a timedelta or an aware datetime after which
    #: a job not yet claimed never runs; None keeps the jobs' own (``expires``).
    expires: Delay = None
    #: Tags and metadata (errands.tagging): replace the jobs' own (``[]``/``{}``: none);
    #: None keeps them.
    tags: Sequence[str] | None = None
    meta: Mapping[str, Any] | None = None


def enqueue_many(
    jobs: Iterable[Job],
    *,
    options: EnqueueOptions | None = None,
    connection: Any | None = None,
) -> list[JobRequest | None]:
    """Enqueue many jobs in one transaction and (for the common case) one insert.

    Returns, in order, each job's request or None where ``should_enqueue`` declined.
    Parameters are validated before the database is touched.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    with without_cyclic_gc(len(jobs) >= LARGE_BATCH):
        return _enqueue_many(jobs, options, connection, _source(options))


def _enqueue_many(
    jobs: list[Job], options: EnqueueOptions | None, connection: Any | None, source: str
) -> list[JobRequest | None]:
    requests, uniques = _new_requests(jobs, options or EnqueueOptions(), source)
    backend = current.backend()
    if connection is None and not any(map(_needs_decision, jobs, requests)):
        # Nothing to check first: the insert alone, committed by the backend.
        with telemetry.sending(requests) as send:
            inserted: list[JobRequest | None] = list(
                backend.insert_requests(requests=send.requests)
            )
            send.sent(inserted)
        return inserted
    with (
        telemetry.counting_sends(backend, connection),
        backend.enqueue_transaction(connection=connection) as tx,
    ):
        return _enqueue_prepared(tx, jobs, requests, uniques)


def enqueue_in(
    tx: EnqueueTransaction, jobs: Sequence[Job], *, options: EnqueueOptions | None = None
) -> list[JobRequest | None]:
    """``enqueue_many`` inside an already open enqueue transaction.

    The call is traced as one PRODUCER span whose ids every request stores (a
    batch is one send, linked from each of its jobs' process spans). Its sends
    are counted when the transaction commits if the caller opened the transaction
    inside ``telemetry.counting_sends``, and right away otherwise.
    """
    requests, uniques = _new_requests(jobs, options or EnqueueOptions(), _source(options))
    return _enqueue_prepared(tx, jobs, requests, uniques)


def _enqueue_prepared(
    tx: EnqueueTransaction,
    jobs: Sequence[Job],
    requests: list[NewRequest],
    uniques: list[Unique | None],
) -> list[JobRequest | None]:
    with telemetry.sending(requests) as send, _using_transaction(tx):
        prepared = list(zip(jobs, send.requests, uniques, strict=True))
        results = _decide_and_insert(tx, prepared)
        send.sent(results)
    return results


def _decide_and_insert(
    tx: EnqueueTransaction, prepared: Sequence[tuple[Job, NewRequest, Unique | None]]
) -> list[JobRequest | None]:
    slots = sorted({_slot_of(r) for _, r, _ in prepared if r.concurrency_key})
    if slots:
        tx.lock_slots(slots)
    # Slots checked by the default rule are looked up in one query; jobs that
    # override should_enqueue are asked one by one, after flushing earlier inserts
    # so their own queries see them. Unique jobs are decided by their Unique.
    taken = tx.slots_in_use(
        [_slot_of(r) for j, r, u in prepared if u is None and _uses_default_rule(j, r)]
    )
    unique_jobs = [(r, u) for _, r, u in prepared if u is not None]
    arbiter = uniqueness.Arbiter(tx, unique_jobs) if unique_jobs else None
    decided: list[UUID | None] = []
    batch: dict[UUID, NewRequest] = {}
    inserted: dict[Any, JobRequest] = {}
    for job, request, unique in prepared:
        if unique is not None and arbiter is not None:
            key, replaced = arbiter.enqueue(request, unique, batch)
            if replaced is not None:
                inserted[replaced.uuid] = replaced
            decided.append(key)
            continue
        if _uses_default_rule(job, request):
            accept = _slot_of(request) not in taken
            taken.add(_slot_of(request))
        elif not _overrides_should_enqueue(job):
            accept = True
        else:
            inserted.update((r.uuid, r) for r in tx.insert_requests(list(batch.values())))
            batch = {}
            accept = ask_hook(job.should_enqueue, request.concurrency_key)  # no SystemExit
        decided.append(request.uuid if accept else None)
        if accept:
            batch[request.uuid] = request
    inserted.update((r.uuid, r) for r in tx.insert_requests(list(batch.values())))
    return [inserted[key] if key else None for key in decided]


def _needs_decision(job: Job, request: NewRequest) -> bool:
    """Whether enqueueing ``job`` must first ask the database (and so take a transaction)."""
    return bool(request.concurrency_key) or _overrides_should_enqueue(job)


def _overrides_should_enqueue(job: Job) -> bool:
    return type(job).should_enqueue is not Job.should_enqueue


def _uses_default_rule(job: Job, request: NewRequest) -> bool:
    return bool(request.concurrency_key) and not _overrides_should_enqueue(job)


def _slot_of(request: NewRequest) -> ConcurrencySlot:
    return (request.job_class, request.concurrency_key)


def _new_requests(
    jobs: Sequence[Job], options: EnqueueOptions, source: str
) -> tuple[list[NewRequest], list[Unique | None]]:
    """The jobs' requests, and the Unique each one is enqueued under (None: none)."""
    # The same for every job of the batch; checked before any other work.
    delay = validation.resolve_delay(options.delay, lambda: _class_names(jobs))
    keys = uuid7s(len(jobs))
    requests = [
        _new_request(job, options, source, key, delay) for job, key in zip(jobs, keys, strict=True)
    ]
    uniques: list[Unique | None] = [None] * len(jobs)
    if options.unique is None and not any(type(job).unique for job in jobs):
        return requests, uniques
    for index, (job, request) in enumerate(zip(jobs, requests, strict=True)):
        path = request.job_class
        unique = uniqueness.resolve(options.unique, job, path)
        if unique is not None:
            requests[index] = uniqueness.unique_request(
                unique,
                job,
                request,
                path=path,
                own_key=request.concurrency_key,
                names=class_facts(type(job))[1],
            )
            uniques[index] = unique
    return requests, uniques


def _new_request(
    job: Job,
    options: EnqueueOptions,
    source: str,
    key: UUID,
    delay: tuple[float, datetime.datetime | None],
) -> NewRequest:
    path, positional_names = class_facts(type(job))
    args, kwargs = job._errands_arguments
    parameters = serialization.encode_arguments(path, args, kwargs, positional_names)
    delay_seconds, start_at = delay
    priority = job.default_priority() if options.priority is None else options.priority
    retries = job.default_retries() if options.retries is None else options.retries
    queue = options.queue or job.default_queue()
    concurrency_key = (
        job.default_concurrency_key()
        if options.concurrency_key is None
        else options.concurrency_key
    )
    timeout = job.default_timeout() if options.timeout is None else options.timeout
    retry_attempt = options.retry_attempt
    if concurrency_key and options.concurrency_key is None:
        uniqueness.check_own_key(concurrency_key, path, "default_concurrency_key()")
    if not plain_options(priority, retries, retry_attempt, queue, concurrency_key, timeout):
        queue, concurrency_key, timeout = validation.checked_options(
            path, priority, retries, retry_attempt, queue, concurrency_key, timeout
        )
    limits = _resolved_limits(job, path, options.limits)
    expires_at = expiry.resolve(job, path, options.expires)
    tags, meta = tagging.resolve(job, path, options.tags, options.meta)
    # Every field, by name: the fast builder fills in no default (see models).
    return build_new_request(
        job_class=path,
        parameters=parameters,
        queue=queue,
        priority=priority,
        retries=retries,
        retry_attempt=retry_attempt,
        concurrency_key=concurrency_key,
        delay_seconds=delay_seconds,
        start_at=start_at,
        timeout=timeout,
        source=source,
        trace_id=None,  # set by telemetry.sending when tracing
        span_id=None,
        uuid=key,
        limits=limits,
        expires_at=expires_at,
        tags=tags,
        meta=meta,
    )


def _resolved_limits(job: Job, path: str, given: Sequence[Limit] | None) -> tuple[Limit, ...]:
    """The limits to store for ``job``: the call's, else the job's, keys resolved.

    A job without limits costs one attribute lookup. Errors name the job class."""
    if given is None:
        if type(job).get_limits is Job.get_limits and not job.limits:
            return ()
        given = job.get_limits()
    try:
        return tuple(limit.resolved(job) for limit in check_limits(given, what="limits"))
    except ValueError as exc:
        raise OptionError(f"{path}: {exc}") from None


def _class_names(jobs: Sequence[Job]) -> str:
    """The batch's job classes, for an error message about an option they share."""
    return ", ".join(sorted({class_facts(type(job))[0] for job in jobs}))


def _source(options: EnqueueOptions | None) -> str:
    """The ``source`` to store: the options' own, else where errands was called from."""
    given = options.source if options is not None else None
    if given is None:
        return storable(caller_location())
    if not isinstance(given, str):
        raise TypeError(f"EnqueueOptions.source must be a str or None, not {type(given).__name__}")
    return storable(given)


@contextlib.contextmanager
def _using_transaction(tx: EnqueueTransaction) -> Iterator[None]:
    token = _current_transaction.set(tx)
    try:
        yield
    finally:
        _current_transaction.reset(token)


def _transaction() -> EnqueueTransaction:
    tx = _current_transaction.get()
    if tx is None:
        raise RuntimeError("should_enqueue() can only check the database while enqueueing")
    return tx


def _transaction_or_new(query: Callable[[EnqueueTransaction], T]) -> T:
    tx = _current_transaction.get()
    if tx is not None:
        return query(tx)
    with current.backend().enqueue_transaction() as new_tx:
        return query(new_tx)
