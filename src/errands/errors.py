"""Every exception errands raises on purpose lives here."""

from __future__ import annotations

from uuid import UUID


class ErrandsError(Exception):
    """Base class for errands' own errors."""


class ConfigurationError(ErrandsError):
    """A setting has a bad value; the message names the setting, value and source."""


class AlreadyRetried(ErrandsError):
    """A result was retried already: each result gets one next attempt, however many
    times (or from however many places at once) it is retried. ``request_uuid`` is
    that attempt's request (None if it could not be read back)."""

    def __init__(self, result_uuid: UUID, request_uuid: UUID | None) -> None:
        attempt = f": its retry is request {request_uuid}" if request_uuid else ""
        super().__init__(f"job {result_uuid} was already retried{attempt}")
        self.result_uuid = result_uuid
        self.request_uuid = request_uuid


class JobNotRegistered(ErrandsError):
    """A job class path was not registered with ``@register_job`` in this process."""


class CommandNotConfigured(ErrandsError):
    """A request asked for a shell command that is not a ``cmd:`` entry of the ``schedule``
    setting of the process reading it; shell commands run only from that setting."""


class ParameterError(ErrandsError, TypeError):
    """A job parameter cannot be encoded to (or decoded from) JSON."""


class OptionError(ParameterError, ValueError):
    """An enqueue option (queue, delay, priority, timeout ...) errands cannot store.

    Both a ``TypeError`` (through ``ParameterError``) and a ``ValueError``: a value of
    the wrong type and one out of range are refused alike, before anything is written.
    """


class BackendError(ErrandsError):
    """The database cannot be used: unreachable, unwritable, or not an errands database."""


class SchemaOutOfDate(BackendError):
    """The database's errands schema is missing or older than this version needs."""


class DeferJob(Exception):
    """Raise from ``Job.run()`` to end this attempt as DEFERRED and run it again later.

    ``delay`` is in seconds. The job is enqueued again as any enqueue is, through its
    ``should_enqueue``, once this attempt's process is gone (its own concurrency slot
    is free); when ``should_enqueue`` declines, the result is still DEFERRED but no
    new request is made, and its error says the re-enqueue was skipped.

    With ``increment_retries`` the deferral counts as an attempt, so a job that keeps
    deferring runs out of retries: raised in its last attempt (``retries`` used up),
    it ends ERRORED instead, error type ``errands.errors.DeferJob`` and error
    "deferred after its last attempt (attempt N of N)", never retried
    (``errands.lifecycle.deferred_after_last_attempt``). Without it, a job may
    defer for ever.
    """

    def __init__(self, *, delay: float, increment_retries: bool = False) -> None:
        super().__init__(f"deferred for {delay} seconds")
        self.delay = delay
        self.increment_retries = increment_retries


class FailJob(Exception):
    """Raise from ``Job.run()`` to end the job ERRORED at once, never retried, whatever
    attempts remain; the result's error is ``reason`` (its error type
    ``errands.errors.FailJob``)."""

    def __init__(self, reason: str = "the job failed itself (FailJob)") -> None:
        super().__init__(reason)
        self.reason = reason


class JobContextUnavailable(ErrandsError, AttributeError):
    """``job.context`` was read where the job is not run by a worker: it exists only
    while a worker (or ``errands.testing``'s helpers) runs the job.

    Also an ``AttributeError``, so ``getattr(job, "context", None)`` gives None there.
    """


class JobTimeout(Exception):
    """Recorded as the error type of a job killed at its deadline."""


class InvalidJobRow(ErrandsError):
    """A stored row errands cannot load or run as a job: JSON nested too deep, a time
    past year 9999, a value of the wrong type. Anyone who can write to the tables
    can make one; the worker records it as the ERRORED result of that job alone."""
