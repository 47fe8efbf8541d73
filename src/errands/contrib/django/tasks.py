"""An errands backend for Django's tasks framework (``django.tasks``, or the
``django-tasks`` backport before Django 6)::

    TASKS = {"default": {"BACKEND": "errands.contrib.django.ErrandsBackend"}}

Each enqueued task becomes an errands job of class :class:`RunTask`, run by
``manage.py errands worker``. The ``TaskResult`` id is the errands request uuid;
``get_result`` follows the job's retries and deferrals, so its status, errors
and attempts describe the whole job, and a successful task's return value is
available on every backend process.

Options errands adds to a task (``@task(retries=3, timeout=60)`` where the
framework passes extra keywords to ``task_class``, i.e. Django 6.1+ and the
backport; or ``my_task.using(retries=3)``): ``retries``, ``concurrency_key``,
``timeout`` (seconds). Backend-wide defaults go in ``OPTIONS``: ``RETRIES``,
``TIMEOUT``, and ``ENQUEUE_ON_COMMIT`` (see :meth:`ErrandsBackend.enqueue`).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import uuid
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils.module_loading import import_string

from errands import api, registry, serialization
from errands.contrib.django import _compat
from errands.contrib.django.backends import DjangoPostgresBackend, DjangoSqliteBackend
from errands.errors import ErrandsError, JobNotRegistered
from errands.jobs import EnqueueOptions, Job, enqueue_many
from errands.models import JobProcess, JobRequest, JobResult, Status
from errands.registry import job_class_path, register_job

Attempt = JobRequest | JobProcess | JobResult

#: A chain longer than this is surely a task deferring itself for ever.
LONGEST_CHAIN = 10_000
#: The ``source`` of the jobs Django's tasks framework enqueues (``errands get``, the dashboard).
SOURCE = "django:tasks"
_FAILED = frozenset({Status.ERRORED, Status.LOST, Status.CANCELLED})


class TaskNotEnqueued(ErrandsError):
    """The task's concurrency key is taken: errands declined to enqueue it."""


@register_job
class RunTask(Job):
    """The errands job that runs one Django task: its function's dotted path and arguments."""

    def __init__(self, task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs

    def run(self) -> Any:
        return load_task(self.task).call(*self.args, **self.kwargs)


def load_task(path: str) -> Any:
    """The ``Task`` object at ``path`` (a decorated function's module path).

    The path comes from a stored row, so it may import its module only when that
    module is inside an installed app (or the ``import`` setting): see
    :func:`errands.registry.may_import`. A module imported already runs no code.
    """
    module = path.rpartition(".")[0]
    installed = [app.name for app in apps.get_app_configs()]
    if module not in sys.modules and not registry.may_import(module, also=installed):
        raise JobNotRegistered(
            f"task {path!r} is not in an installed app's package; a stored task path "
            "imports nothing outside INSTALLED_APPS and the 'import' setting"
        )
    found = import_string(path)
    if not isinstance(found, _compat.Task):
        raise TypeError(f"{path} is not a task (decorate the function with @task)")
    return found


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ErrandsTask(_compat.Task):  # type: ignore[misc]
    """A Django ``Task`` with errands' options; None means the backend's default."""

    retries: int | None = None
    concurrency_key: str | None = None
    timeout: float | None = None

    def using(
        self,
        *,
        retries: int | None = None,
        concurrency_key: str | None = None,
        timeout: float | None = None,
        **changes: Any,
    ) -> ErrandsTask:
        """Django's ``using()``, plus errands' options."""
        task: ErrandsTask = super(ErrandsTask, self).using(**changes)
        own: dict[str, Any] = {
            "retries": retries,
            "concurrency_key": concurrency_key,
            "timeout": timeout,
        }
        own = {key: value for key, value in own.items() if value is not None}
        return dataclasses.replace(task, **own) if own else task


class ErrandsBackend(_compat.BaseTaskBackend):  # type: ignore[misc]
    """Django tasks on errands: priority, queues, ``run_after``, results, retries."""

    task_class = ErrandsTask
    supports_defer = True
    supports_async_task = True  # Task.call runs coroutine functions to completion
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.default_retries = int(self.options.get("RETRIES", 0))
        timeout = self.options.get("TIMEOUT")
        self.default_timeout = None if timeout is None else float(timeout)
        self.enqueue_on_commit = bool(self.options.get("ENQUEUE_ON_COMMIT", True))

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        if task.takes_context:
            raise _compat.InvalidTask(
                f"{task.module_path}: errands does not pass a TaskContext yet "
                "(takes_context=True is not supported)"
            )
        retries = getattr(task, "retries", None)
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            raise _compat.InvalidTask(f"{task.module_path}: retries must be 0 or more")
        timeout = getattr(task, "timeout", None)
        if timeout is not None and timeout <= 0:
            raise _compat.InvalidTask(f"{task.module_path}: timeout must be more than 0 s")

    # -- enqueue ------------------------------------------------------------------------
    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Enqueue ``task`` as an errands job.

        When errands shares Django's database (the default), the job is inserted
        in the caller's transaction: it exists only if that transaction commits.
        With a separate errands database and ``ENQUEUE_ON_COMMIT`` (default True),
        an enqueue inside ``transaction.atomic()`` waits for the commit (and is
        dropped on rollback); its result's ``id`` is set when it is enqueued.
        """
        self.validate_task(task)
        job = RunTask(task.module_path, list(args), dict(kwargs))
        result = self._result(task, id="", status=_compat.TaskResultStatus.READY, args=args)
        if self._waits_for_commit():
            transaction.on_commit(lambda: self._enqueue_now(task, job, result))
        else:
            self._enqueue_now(task, job, result)
        return result

    def _waits_for_commit(self) -> bool:
        joins = isinstance(api.backend(), DjangoPostgresBackend | DjangoSqliteBackend)
        in_atomic = transaction.get_connection(DEFAULT_DB_ALIAS).in_atomic_block
        return self.enqueue_on_commit and in_atomic and not joins

    def _enqueue_now(self, task: Any, job: RunTask, result: Any) -> None:
        retries = getattr(task, "retries", None)
        timeout = getattr(task, "timeout", None)
        options = EnqueueOptions(
            queue=task.queue_name,
            priority=task.priority,
            delay=task.run_after,
            retries=self.default_retries if retries is None else retries,
            concurrency_key=getattr(task, "concurrency_key", None),
            timeout=self.default_timeout if timeout is None else timeout,
            # Not the line inside Django that called errands: where the job came from.
            source=SOURCE,
        )
        request = enqueue_many([job], options=options)[0]
        if request is None:
            raise TaskNotEnqueued(
                f"{task.module_path}: a task with concurrency key "
                f"{getattr(task, 'concurrency_key', '')!r} is already pending or running"
            )
        object.__setattr__(result, "id", str(request.uuid))
        object.__setattr__(result, "enqueued_at", request.created_at)
        _compat.task_enqueued.send(type(self), task_result=result)

    # -- results ------------------------------------------------------------------------
    def get_result(self, result_id: str) -> Any:
        """The task's state along its retry chain: READY, RUNNING, SUCCESSFUL or FAILED."""
        chain = _attempts(result_id)
        if not chain or chain[0].job_class != job_class_path(RunTask):
            raise _compat.TaskResultDoesNotExist(result_id)
        args, kwargs = serialization.decode_arguments(chain[0].parameters)
        job = RunTask(*args, **kwargs)
        last = chain[-1]
        ran = [a for a in chain if not isinstance(a, JobRequest) and a.started_at is not None]
        result = self._result(
            load_task(job.task),
            id=result_id,
            status=_status(last),
            args=job.args,
            kwargs=job.kwargs,
            enqueued_at=_enqueued_at(chain[0]),
            started=[a.started_at for a in ran],
            finished_at=last.ended_at if isinstance(last, JobResult) else None,
            errors=[_error(a) for a in chain if isinstance(a, JobResult) and a.status in _FAILED],
            worker_ids=[str(a.worker_id) for a in ran if a.worker_id],
        )
        if isinstance(last, JobResult) and last.status == Status.SUCCESSFUL:
            object.__setattr__(result, "_return_value", serialization.decode(last.return_value))
        return result

    def _result(
        self,
        task: Any,
        *,
        id: str,
        status: Any,
        args: Any,
        kwargs: Any = None,
        enqueued_at: datetime.datetime | None = None,
        started: list[Any] | None = None,
        finished_at: datetime.datetime | None = None,
        errors: list[Any] | None = None,
        worker_ids: list[str] | None = None,
    ) -> Any:
        started = started or []
        return _compat.TaskResult(
            task=task,
            id=id,
            status=status,
            enqueued_at=enqueued_at,
            started_at=started[0] if started else None,
            last_attempted_at=started[-1] if started else None,
            finished_at=finished_at,
            args=list(args),
            kwargs=dict(kwargs or {}),
            backend=self.alias,
            errors=errors or [],
            worker_ids=worker_ids or [],
        )


def _attempts(result_id: str) -> list[Attempt]:
    """The job's attempts in order, following retry and deferral links."""
    try:
        found = api.get(uuid.UUID(result_id))
    except ValueError:
        return []
    chain: list[Attempt] = []
    while found is not None and len(chain) < LONGEST_CHAIN:
        chain.append(found)
        if not (isinstance(found, JobResult) and found.retry_request_uuid):
            break
        found = api.get(found.retry_request_uuid)
    return chain


def _status(last: Attempt) -> Any:
    statuses = _compat.TaskResultStatus
    if isinstance(last, JobRequest):
        return statuses.READY
    if isinstance(last, JobProcess):
        return statuses.RUNNING if last.started_at else statuses.READY
    return statuses.SUCCESSFUL if last.status == Status.SUCCESSFUL else statuses.FAILED


def _enqueued_at(first: Attempt) -> datetime.datetime:
    return first.created_at if isinstance(first, JobRequest) else first.requested_at


def _error(result: JobResult) -> Any:
    # errands names builtin exceptions without their module; Django imports the path.
    path = result.error_type if "." in result.error_type else f"builtins.{result.error_type}"
    return _compat.TaskError(
        exception_class_path=path,
        traceback=result.traceback or f"{result.error_type}: {result.error}",
    )
