"""errands: background jobs, schedules and retries on the database you already run.

Define jobs by subclassing :class:`Job`; enqueue them with ``Job.run_in_worker()``
or :func:`enqueue_many`; run ``errands worker`` to process them; inspect what
happened with :func:`results` or ``errands results``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from errands.api import (
    backend,
    cancel,
    configure,
    get,
    pause_queue,
    paused_queues,
    processes,
    purge,
    requests,
    results,
    resume_queue,
    retry,
    schedule_status,
    stats,
    wait_for_result,
    wait_for_result_async,
    workers,
)
from errands.backoff import Backoff
from errands.context import JobContext
from errands.errors import (
    AlreadyRetried,
    BackendError,
    ConfigurationError,
    DeferJob,
    ErrandsError,
    FailJob,
    JobContextUnavailable,
    JobNotRegistered,
    ParameterError,
)
from errands.jobs import EnqueueOptions, Job, enqueue_many
from errands.limiting import Limit
from errands.models import JobProcess, JobRequest, JobResult, Status
from errands.registry import register_job
from errands.serialization import register_type
from errands.uniqueness import Unique
from errands.workflow_models import NodeState, WorkflowStatus
from errands.workflows import Workflow, cancel_workflow, chain, group, workflow

if TYPE_CHECKING:
    from errands.async_enqueue import enqueue_many_async
    from errands.scheduler import Schedule

# Imported on first use: asyncio and croniter weigh on every process that imports
# errands (each worker child among them) and most never use them.
_LAZY = {"enqueue_many_async": "errands.async_enqueue", "Schedule": "errands.scheduler"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'errands' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AlreadyRetried",
    "BackendError",
    "Backoff",
    "ConfigurationError",
    "DeferJob",
    "EnqueueOptions",
    "ErrandsError",
    "FailJob",
    "Job",
    "JobContext",
    "JobContextUnavailable",
    "JobNotRegistered",
    "JobProcess",
    "JobRequest",
    "JobResult",
    "Limit",
    "NodeState",
    "ParameterError",
    "Schedule",
    "Status",
    "Unique",
    "Workflow",
    "WorkflowStatus",
    "backend",
    "cancel",
    "cancel_workflow",
    "chain",
    "configure",
    "enqueue_many",
    "enqueue_many_async",
    "get",
    "group",
    "pause_queue",
    "paused_queues",
    "processes",
    "purge",
    "register_job",
    "register_type",
    "requests",
    "results",
    "resume_queue",
    "retry",
    "schedule_status",
    "stats",
    "wait_for_result",
    "wait_for_result_async",
    "workers",
    "workflow",
]
