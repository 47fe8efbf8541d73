"""Workflows: jobs that wait for other jobs (chains, fan-out and fan-in, any DAG).

::

    wf = errands.Workflow("import 42")
    fetch = wf.add(Fetch(url))
    parse = wf.add(Parse(), after=[fetch])
    stats = [wf.add(Stat(i), after=[parse]) for i in range(10)]
    wf.add(Notify(), after=stats)
    wf.enqueue()

Every job of a workflow is enqueued in one transaction (or the caller's, with
``connection=``). A job starts only when every job it depends on ended SUCCESSFUL
(after its retries); it reads their return values as ``self.context.dependencies``.
When a dependency fails for good or is cancelled, the jobs that depend on it end
CANCELLED (``errands.DependencyFailed``) without running, unless added with
``run_on_failure=True``. The database moves a workflow in the transaction that
writes each result (see ``errands.workflow_models``), so a worker that dies at any
moment neither loses a release nor releases twice.
"""

from __future__ import annotations

import dataclasses
import uuid as uuid_module
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from errands import telemetry
from errands.api import dispatch_aborted_hooks
from errands.backends import current
from errands.errors import OptionError
from errands.jobs import EnqueueOptions, Job, _new_requests, _source
from errands.models import JobRequest, JobResult, NewRequest
from errands.registry import class_facts
from errands.workflow_models import (
    HELD_UNTIL,
    PlannedNode,
    WorkflowPlan,
    WorkflowStatus,
)

#: The options ``Workflow.add`` takes, as ``EnqueueOptions`` fields.
NODE_OPTIONS = frozenset(
    {
        "queue",
        "delay",
        "priority",
        "retries",
        "concurrency_key",
        "timeout",
        "limits",
        "expires",
        "tags",
        "meta",
    }
)


@dataclass(frozen=True, slots=True)
class Node:
    """A job added to a workflow: pass it in another job's ``after``."""

    workflow: Workflow
    index: int
    name: str


@dataclass(slots=True)
class _Step:
    job: Job
    name: str
    after: tuple[int, ...]
    options: EnqueueOptions
    run_on_failure: bool


@dataclass(frozen=True, slots=True)
class EnqueuedWorkflow:
    """A workflow as enqueued: its uuid and each job's first request, in order."""

    uuid: uuid_module.UUID
    name: str
    requests: tuple[JobRequest, ...]

    def status(self) -> WorkflowStatus:
        """Where each of its jobs stands now (see :func:`workflow`)."""
        found = workflow(self.uuid)
        if found is None:  # deleted meanwhile
            raise LookupError(f"workflow {self.uuid} no longer exists")
        return found

    def cancel(self) -> int:
        """Cancel its pending jobs and stop its running ones (see :func:`cancel_workflow`)."""
        return cancel_workflow(self.uuid)


class Workflow:
    """Jobs and the dependencies between them, enqueued together."""

    def __init__(self, name: str = "") -> None:
        if not isinstance(name, str):
            raise TypeError(f"Workflow name must be a str, not {type(name).__name__}")
        self.name = name
        self._steps: list[_Step] = []
        self._names: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._steps)

    def add(
        self,
        job: Job,
        *,
        after: Iterable[Node | str] = (),
        name: str | None = None,
        run_on_failure: bool = False,
        **options: Any,
    ) -> Node:
        """Add ``job``, to start once every job in ``after`` ended SUCCESSFUL (with
        ``run_on_failure``: once they all ended, however). ``name`` (default: the job's
        class name, numbered when repeated) names it in ``context.dependencies``, the CLI
        and the dashboard. ``options`` are those of ``run_in_worker`` (queue, priority,
        retries, timeout, limits, expires, tags, meta, concurrency_key; delay only for a
        job without dependencies)."""
        if not isinstance(job, Job):
            raise TypeError(f"Workflow.add() takes a Job instance, got {type(job).__name__}")
        label = self._new_name(job, name)
        parents = self._parents(label, after)
        self._check_options(label, options, bool(parents))
        self._steps.append(
            _Step(job, label, parents, EnqueueOptions(**options), bool(run_on_failure))
        )
        self._names[label] = len(self._steps) - 1
        return Node(self, len(self._steps) - 1, label)

    def _new_name(self, job: Job, name: str | None) -> str:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"workflow job name must be a non-empty str, got {name!r}")
            if name in self._names:
                raise ValueError(f"workflow {self.name!r} has a job named {name!r} already")
            return name
        base = class_facts(type(job))[0].rsplit(".", 1)[-1]
        label, count = base, 1
        while label in self._names:
            count += 1
            label = f"{base}#{count}"
        return label

    def _parents(self, label: str, after: Iterable[Node | str]) -> tuple[int, ...]:
        if isinstance(after, (Node, str)):
            after = [after]
        # dict.fromkeys: each dependency once, in the order given (a fan-in may list
        # thousands).
        return tuple(dict.fromkeys(self._index_of(label, dependency) for dependency in after))

    def _index_of(self, label: str, dependency: Node | str) -> int:
        if isinstance(dependency, Node):
            if dependency.workflow is not self:
                raise ValueError(
                    f"{label}: unknown dependency {dependency.name!r}: it belongs to "
                    "another workflow"
                )
            return dependency.index
        if isinstance(dependency, str):
            if dependency not in self._names:
                raise ValueError(
                    f"{label}: unknown dependency {dependency!r}: add it to the workflow "
                    "first (a job can only wait for jobs added before it, so there are no cycles)"
                )
            return self._names[dependency]
        raise TypeError(
            f"{label}: after= takes nodes returned by Workflow.add() or their names, "
            f"got {type(dependency).__name__}"
        )

    def _check_options(self, label: str, options: dict[str, Any], waits: bool) -> None:
        unknown = sorted(set(options) - NODE_OPTIONS)
        if unknown:
            raise TypeError(
                f"{label}: Workflow.add() got unknown option(s) {', '.join(unknown)} "
                f"(it takes {', '.join(sorted(NODE_OPTIONS))})"
            )
        if waits and options.get("delay") is not None:
            raise OptionError(
                f"{label}: a job with dependencies starts when they end; "
                "delay is only for a job without any"
            )

    # -- enqueue ----------------------------------------------------------------------
    def enqueue(self, *, connection: Any | None = None) -> EnqueuedWorkflow:
        """Enqueue every job in one transaction (``connection``: join the caller's
        open transaction, as ``run_in_worker`` does). Options and parameters are
        checked before anything is written."""
        if not self._steps:
            raise ValueError(f"workflow {self.name!r} has no jobs")
        check_acyclic(self._steps)
        source = _source(None)
        requests = [self._request(step, source) for step in self._steps]
        plan = WorkflowPlan(
            uuid=uuid_module.uuid4(),
            name=self.name,
            nodes=tuple(
                PlannedNode(
                    node=index,
                    name=step.name,
                    job_class=request.job_class,
                    request_uuid=request.uuid,
                    depends_on=step.after,
                    run_on_failure=step.run_on_failure,
                )
                for index, (step, request) in enumerate(zip(self._steps, requests, strict=True))
            ),
        )
        backend = current.backend()
        with (
            telemetry.counting_sends(backend, connection),
            backend.enqueue_transaction(connection=connection) as tx,
            telemetry.sending(requests) as send,
        ):
            inserted = tx.insert_requests(send.requests)
            tx.insert_workflow(plan)
            send.sent(list(inserted))
        return EnqueuedWorkflow(plan.uuid, self.name, tuple(inserted))

    @staticmethod
    def _request(step: _Step, source: str) -> NewRequest:
        job = step.job
        if step.options.unique is not None or type(job).unique is not None:
            raise OptionError(
                f"{step.name}: a workflow's jobs cannot be unique (a job refused as a "
                "duplicate would leave the jobs after it waiting for ever)"
            )
        request = _new_requests([job], step.options, source)[0][0]
        if step.after:
            # Held until its dependencies end: the database releases it (due now).
            request = dataclasses.replace(request, start_at=HELD_UNTIL, delay_seconds=0.0)
        return request


def check_acyclic(steps: Sequence[_Step]) -> None:
    """Refuse a dependency on a job that is not earlier in the workflow: ``add`` only
    lets a job wait for jobs added before it, so this holds unless steps were edited."""
    for index, step in enumerate(steps):
        for parent in step.after:
            if not 0 <= parent < index:
                raise ValueError(f"{step.name}: its dependencies form a cycle")


# -- shorthands -----------------------------------------------------------------------
class Group:
    """Jobs that run side by side: ``group(a, b, c).then(d)`` runs d after all three."""

    def __init__(self, *jobs: Job) -> None:
        if not jobs:
            raise ValueError("group() needs at least one job")
        self.jobs = jobs

    def then(self, *steps: Job | Group) -> Workflow:
        """A workflow of this group followed by ``steps``, each after the one before."""
        return chain(self, *steps)

    def enqueue(self, *, connection: Any | None = None) -> EnqueuedWorkflow:
        return chain(self).enqueue(connection=connection)


def group(*jobs: Job) -> Group:
    """Jobs that run side by side (a fan-out); ``.then(job)`` adds the fan-in."""
    return Group(*jobs)


def chain(*steps: Job | Group, name: str = "") -> Workflow:
    """A workflow running ``steps`` one after another; a :func:`group` step runs its
    jobs side by side, after the step before it and before the step after it."""
    if not steps:
        raise ValueError("chain() needs at least one job")
    wf = Workflow(name)
    previous: list[Node] = []
    for step in steps:
        jobs = step.jobs if isinstance(step, Group) else (step,)
        previous = [wf.add(job, after=previous) for job in jobs]
    return wf


# -- looking and cancelling -----------------------------------------------------------
def workflow(uuid: uuid_module.UUID | str) -> WorkflowStatus | None:
    """A stored workflow and where each of its jobs stands; None if there is none."""
    key = uuid if isinstance(uuid, uuid_module.UUID) else uuid_module.UUID(str(uuid))
    return current.backend().workflow(uuid=key)


def cancel_workflow(uuid: uuid_module.UUID | str) -> int:
    """Cancel a workflow's pending and waiting jobs and ask the workers running its
    running jobs to stop them; return how many jobs that touched. Its jobs are
    cancelled last first, so that no ``run_on_failure`` job is released on the way."""
    found = workflow(uuid)
    if found is None:
        raise LookupError(f"no workflow with uuid {uuid}")
    backend = current.backend()
    touched = 0
    for node in reversed(found.nodes):
        if node.state.ended:
            continue
        result = backend.cancel_pending(uuid=node.request_uuid)
        if isinstance(result, JobResult):
            dispatch_aborted_hooks([result])
            touched += 1
        elif node.process_uuid is not None and backend.flag_to_stop(uuid=node.process_uuid):
            touched += 1
    return touched
