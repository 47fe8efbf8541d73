"""``JobContext``: what a running job knows about its own run (``self.context``).

A worker sets it on the job instance it built, before middleware and ``run()``
see the job (``errands.worker.execution``). Being an attribute of that instance,
not of a thread or a context variable, it is right in every runner thread of a
child and in ``async def run()`` coroutines, which run on the child's shared
event loop thread where the runner's context variables would not be.

It is built on first use: most jobs never read it, and a trivial job's whole run
in a child costs a few tens of microseconds.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import overload

from errands.errors import JobContextUnavailable
from errands.limiting import Limit
from errands.workflow_models import Dependencies, DependencyResult

#: The attribute of a job instance holding its context, or a function building it.
ATTRIBUTE = "_errands_context"


@dataclass(frozen=True, slots=True)
class JobContext:
    """One run of a job, as the worker started it. Times are aware (UTC)."""

    process_uuid: uuid.UUID
    request_uuid: uuid.UUID | None
    job_class: str
    #: Which run of the job this is, counting from 1 (the CLI's "attempt 2 of 4").
    attempt: int
    #: How many retries the job may get after its first attempt.
    retries: int
    queue: str
    priority: int
    #: When the job (this attempt's request) was enqueued.
    requested_at: datetime.datetime | None
    #: When it was due (after its delay, or a retry's backoff).
    start_at: datetime.datetime | None
    #: When this run began, on the job process's clock.
    started_at: datetime.datetime
    timeout: float | None
    worker_id: uuid.UUID | None
    limits: tuple[Limit, ...] = ()
    #: reads the results of the jobs this one depends on (a workflow's job; None: none)
    load_dependencies: Callable[[], Sequence[DependencyResult]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def dependencies(self) -> Dependencies:
        """The return values of the jobs this workflow job depends on, by name or by
        position in its ``after`` list (errands.workflows). Read from the database on
        each access: keep it in a variable when reading it more than once."""
        if self.load_dependencies is None:
            return Dependencies()
        return Dependencies(self.load_dependencies())

    @property
    def attempts(self) -> int:
        """How many runs the job may get on its own: the first and its retries."""
        return self.retries + 1

    @property
    def retry_attempt(self) -> int:
        """The stored attempt counter: 0 for the first run (``attempt - 1``)."""
        return self.attempt - 1

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now ends the job: no retry follows it."""
        return self.attempt >= self.attempts

    @property
    def deadline(self) -> datetime.datetime | None:
        """When the worker kills the job (``started_at + timeout``); None without a timeout."""
        if self.timeout is None:
            return None
        return self.started_at + datetime.timedelta(seconds=self.timeout)


class ContextAttribute:
    """``Job.context``: the job's :class:`JobContext` while a worker runs it.

    A non-data descriptor, so a job class or instance that has an attribute called
    ``context`` of its own (a parameter stored as ``self.context``) keeps it.
    """

    @overload
    def __get__(self, job: None, owner: type) -> ContextAttribute: ...
    @overload
    def __get__(self, job: object, owner: type) -> JobContext: ...

    def __get__(self, job: object | None, owner: type) -> ContextAttribute | JobContext:
        if job is None:
            return self
        found = vars(job).get(ATTRIBUTE)
        if found is None:
            raise JobContextUnavailable(
                f"{owner.__name__}.context exists only while a worker runs the job "
                "(errands worker, or errands.testing's drain and immediate helpers); "
                "here the job was called directly"
            )
        if not isinstance(found, JobContext):
            found = found()
            setattr(job, ATTRIBUTE, found)
        return found


def attach(job: object, build: Callable[[], JobContext]) -> None:
    """Give ``job`` the context ``build`` makes when the job first reads it."""
    setattr(job, ATTRIBUTE, build)
