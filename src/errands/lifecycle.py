"""A job's state machine, and every rule for how an attempt ends, stated once.

A job lives as three kinds of row; each arrow is one transition, and who makes it::

                         enqueue (api, scheduler)
                                  |
                                  v
        .------------------> JobRequest ---cancel (api, CLI, dashboard)---> JobResult
        |                   (pending)                                       CANCELLED
        |                     |     ^
        |       claim (worker)|     |release (worker at shutdown: jobs not begun)
        |                     v     |
        |                    JobProcess ---rescue (any worker: the owner stopped
        |               (claimed, running)  heartbeating or has no row), or
        |                         |         lose (the owner no longer tracks it)---> JobResult
        |       complete (worker) |                                                   LOST
        |                         v
        |     JobResult SUCCESSFUL, ERRORED, DEFERRED, LOST or CANCELLED
        |                         |
        '---requeue---------------'  a retry or a deferral: the new request is
                                     written in the same transaction as the result

Who writes each ending (the functions and constants below give its status,
error type and message; the backends and the worker write exactly those):

* the job's child process: SUCCESSFUL, DEFERRED, or ERRORED when ``run()`` (or
  loading the job) raised (:func:`error_type_of` names the exception), or when
  it deferred counting the attempt after its last one
  (:func:`deferred_after_last_attempt`);
* the worker's parent process, for a DEFERRED attempt: the re-enqueue, through
  the job's ``should_enqueue``, in the transaction that writes the result
  (:func:`deferred`, or :func:`deferral_skipped` and :func:`deferral_failed`
  when no new request is made);
* the worker's parent process (``worker.supervision``): :func:`timed_out`,
  :func:`process_died`, :func:`interrupted`, :data:`CANCELLED_RUNNING` (an
  operator's cancel of a running job, and a second shutdown signal; its error
  type is plain ``Cancelled``, as :data:`CANCELLED_PENDING`'s);
* a backend, inside one transaction: :func:`lost_with_worker`,
  :func:`lost_without_heartbeat_row`, :func:`orphaned` (rescue and lose) and
  :data:`CANCELLED_PENDING` (cancel of a pending request). PostgreSQL takes the
  status, type and message as parameters of its SQL, SQLite and the in-memory
  test backend write them from Python: the text exists here only.

Retries (:class:`Retry`): an ERRORED or LOST attempt is retried as its next
attempt while :func:`attempts_left`; an interrupted one is enqueued again at
the same attempt; a CANCELLED one never. A LOST result written by a backend is
owed its retry (and ``on_aborted`` hooks) in the same transaction; any worker
that can load the job's class settles it (``worker.followups``), as the delay is
user code. A DEFERRED attempt is enqueued again after its delay (unless its
``should_enqueue`` declines): at the same attempt, or, with ``increment_retries``,
as the next one; deferring so in an attempt with none left
(not :func:`attempts_left`) ends the job ERRORED instead.

Retry policies (:func:`retry_of_failure`): a failure the job raised is retried only
if the job's ``retry_on`` (when not empty) names its class and its ``fail_on``
does not; ``FailJob`` is never retried. A timeout counts as raising ``JobTimeout``
(:func:`counted_as_raised`); a LOST ending is no failure of the job's own and is
retried while attempts remain, whatever its policies. The delay before a retry is
the job's ``calculate_retry_delay`` (by default its ``Backoff``: ``errands.backoff``).

This module imports only :mod:`errands.models` and :mod:`errands.errors`.
"""

from __future__ import annotations

import enum
import uuid
from typing import NamedTuple

from errands.errors import DeferJob, FailJob, JobTimeout
from errands.models import Status


class Retry(enum.Enum):
    """Whether an ending is followed by another attempt."""

    IF_ATTEMPTS_LEFT = "if attempts left"  # the next attempt, while attempts_left()
    SAME_ATTEMPT = "same attempt"  # enqueued again; the attempt is not counted
    NEVER = "never"


class Ending(NamedTuple):
    """How one attempt ends: the result's status, error type and error message."""

    status: Status
    error_type: str
    error: str
    retry: Retry


def qualified_name(cls: type[BaseException]) -> str:
    """The error type stored for an exception class: ``module.Name`` (builtins bare)."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def error_type_of(exc: BaseException) -> str:
    """The error type of a failure the job raised (an ERRORED attempt)."""
    return qualified_name(type(exc))


# -- retries ---------------------------------------------------------------------------


def attempts_left(*, retries: int, retry_attempt: int) -> bool:
    """Whether a failed attempt (ERRORED or LOST) is followed by another one."""
    return retry_attempt < retries


def next_attempt(retry_attempt: int) -> int:
    """The ``retry_attempt`` of the retry of an attempt."""
    return retry_attempt + 1


ExceptionClasses = type[BaseException] | tuple[type[BaseException], ...]


def retry_of_failure(
    raised: type[BaseException], *, retry_on: ExceptionClasses, fail_on: ExceptionClasses
) -> tuple[Retry, str]:
    """Whether a failure of class ``raised`` may be retried (while attempts remain) under
    a job's ``retry_on`` and ``fail_on``, and if not, why (for the result's traceback).

    Raises TypeError when a policy is not an exception class or a sequence of them.
    """
    name = qualified_name(raised)
    if issubclass(raised, FailJob):
        return Retry.NEVER, "the job raised FailJob"
    fail_on, retry_on = _classes(fail_on), _classes(retry_on)
    if fail_on and issubclass(raised, fail_on):
        return Retry.NEVER, f"{name} is one of the job's fail_on"
    if retry_on and not issubclass(raised, retry_on):
        return Retry.NEVER, f"{name} is not one of the job's retry_on"
    return Retry.IF_ATTEMPTS_LEFT, ""


def _classes(policy: ExceptionClasses) -> tuple[type[BaseException], ...]:
    """A policy as a tuple of classes (one class alone, a list and a set are accepted)."""
    classes = (policy,) if isinstance(policy, type) else tuple(policy)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on and fail_on take exception classes, got {cls!r}")
    return classes


def counted_as_raised(ending: Ending) -> type[BaseException] | None:
    """The exception an ending the worker's parent wrote counts as for ``retry_on`` and
    ``fail_on``: ``JobTimeout`` for a timeout; None for the rest (not the job's failure)."""
    return JobTimeout if ending.error_type == TIMED_OUT else None


# -- deferrals (DeferJob) ------------------------------------------------------------------

#: The error type of a job that deferred after its last attempt: what it raised.
DEFERRED_TOO_OFTEN = qualified_name(DeferJob)


def deferred(delay: float) -> str:
    """The message of a DEFERRED result whose job was enqueued again."""
    return f"Deferred for {float(delay):g} seconds"


def deferral_skipped(delay: float, concurrency_key: str) -> str:
    """A DEFERRED result whose re-enqueue ``should_enqueue`` declined: no new request
    (as the reference implementation, and as ``run_in_worker`` returning None)."""
    return (
        f"{deferred(delay)} (re-enqueue skipped: should_enqueue() returned False "
        f"for concurrency_key {concurrency_key!r})"
    )


def deferral_failed(delay: float, why: str) -> str:
    """A DEFERRED result whose re-enqueue raised (the job cannot be rebuilt, its
    ``should_enqueue`` raised): no new request."""
    return f"{deferred(delay)} (not enqueued again: {why})"


def deferred_after_last_attempt(*, retries: int, retry_attempt: int) -> Ending:
    """A job that raised ``DeferJob(increment_retries=True)`` in its last attempt:
    the deferral would be one attempt more than it has, so it ends here, never retried."""
    attempt = retry_attempt + 1
    error = f"deferred after its last attempt (attempt {attempt} of {retries + 1})"
    return Ending(Status.ERRORED, DEFERRED_TOO_OFTEN, error, Retry.NEVER)


# -- endings the worker's parent process writes ------------------------------------------

#: Error types of the worker's own exceptions (``errands.worker.ProcessDied`` ...):
#: the classes live in ``worker.supervision`` and keep this public path.
PROCESS_DIED = "errands.worker.ProcessDied"
INTERRUPTED = "errands.worker.Interrupted"
TIMED_OUT = qualified_name(JobTimeout)

#: The error type of every CANCELLED result, plain ``Cancelled``: the same whether
#: the job was pending (:data:`CANCELLED_PENDING`) or held by a worker
#: (:data:`CANCELLED_RUNNING`); the message tells the two apart. (Older versions
#: stored ``errands.worker.Cancelled`` for a running job: such rows may remain.)
CANCELLED = "Cancelled"

#: A running job (or one held by its worker) cancelled by an operator, or killed
#: by a second shutdown signal (or ``worker_drain_timeout``).
CANCELLED_RUNNING = Ending(Status.CANCELLED, CANCELLED, "cancelled", Retry.NEVER)


def timed_out(timeout: float | None) -> Ending:
    """A job killed at its deadline (``timeout`` seconds after it began)."""
    error = f"job exceeded its timeout of {timeout} seconds"
    return Ending(Status.ERRORED, TIMED_OUT, error, Retry.IF_ATTEMPTS_LEFT)


def process_died(pid: int | None, exitcode: int | None, *, begun: bool) -> Ending:
    """The child running the job exited without an outcome: LOST if the job had
    begun, else ERRORED (after it bounced between dying children too often)."""
    status = Status.LOST if begun else Status.ERRORED
    error = f"job process {pid} exited with code {exitcode}"
    return Ending(status, PROCESS_DIED, error, Retry.IF_ATTEMPTS_LEFT)


def interrupted(stopped: str) -> Ending:
    """A job that began, killed with its child to stop ``stopped`` (other jobs)."""
    error = f"its process was killed to stop job {stopped}"
    return Ending(Status.LOST, INTERRUPTED, error, Retry.SAME_ATTEMPT)


# -- endings a backend writes --------------------------------------------------------------

WORKER_LOST = "WorkerLost"
ORPHANED = "Orphaned"

#: A pending request cancelled (api.cancel, the CLI, the dashboard).
CANCELLED_PENDING = Ending(Status.CANCELLED, CANCELLED, "cancelled before it started", Retry.NEVER)


def lost_with_worker(worker_id: uuid.UUID | str, timeout_seconds: float) -> Ending:
    """A process of a worker silent for over ``timeout_seconds`` (its row is taken)."""
    error = f"worker {worker_id} stopped heartbeating for over {timeout_seconds:g} s"
    return Ending(Status.LOST, WORKER_LOST, error, Retry.IF_ATTEMPTS_LEFT)


def lost_without_heartbeat_row(worker_id: uuid.UUID | str) -> Ending:
    """A process whose worker has no heartbeat row at all."""
    error = f"worker {worker_id} has no heartbeat row; it is gone"
    return Ending(Status.LOST, WORKER_LOST, error, Retry.IF_ATTEMPTS_LEFT)


def orphaned(worker_id: uuid.UUID | str) -> Ending:
    """A process the database gives a live worker that the worker does not track."""
    error = f"worker {worker_id} no longer tracked this process"
    return Ending(Status.LOST, ORPHANED, error, Retry.IF_ATTEMPTS_LEFT)
