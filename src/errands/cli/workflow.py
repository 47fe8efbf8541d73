"""``errands workflow ID`` and ``errands workflows``: where a workflow's jobs stand
(errands.workflows), and cancelling one.

A workflow is named by its uuid, a unique prefix of it (6+ characters), or the uuid
(or prefix) of any of its jobs: a request, process or result of any attempt.
"""

from __future__ import annotations

import string
import time
import uuid as uuid_module
from typing import Any

import click

from errands import api, formatting
from errands.cli import configuration
from errands.cli.errors import CliError
from errands.cli.options import json_option
from errands.cli.output import print_json, table
from errands.models import JobRequest
from errands.workflow_models import NodeStatus, WorkflowStatus
from errands.workflows import cancel_workflow

#: How many recent workflows a prefix is looked for among (the backends have no
#: prefix query of workflow uuids; a job's uuid prefix is looked up as ``errands get``).
PREFIX_SCAN = 10_000
#: How long an error is in the table (the JSON has it whole).
ERROR_WIDTH = 40


@click.command("workflow")
@click.argument("workflow_id", metavar="ID")
@json_option
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until it ends.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: how often to redraw.",
)
@click.option(
    "--cancel",
    is_flag=True,
    help="Cancel its pending and waiting jobs and stop its running ones, then show it.",
)
def workflow_command(
    workflow_id: str, as_json: bool, watch: bool, interval: float, cancel: bool
) -> None:
    """Show a workflow and each of its jobs: state, dependencies, attempt, times, error.

    ID is the workflow's uuid or a unique prefix of it (6+ characters), or the
    uuid (or prefix) of any of its jobs: a request, process or result of any
    attempt, as `errands requests` and `errands results` show them.

    A job's STATE is waiting (for the jobs it DEPENDS ON), pending, running,
    succeeded, failed, or cancelled (by hand, or because a job it depends on did
    not succeed). The workflow is running until every job ended; then
    succeeded, failed, or cancelled.

    --cancel cancels its pending and waiting jobs (last first, so that no
    run_on_failure job starts on the way) and asks workers to stop its running ones.

    \b
    Examples:
      errands workflow 0192f3a4-5b6d-7c8e-9f00-0123456789ab
      errands workflow 0192f3a4b5 --json
      errands workflow 0192f3a4b5 --watch
      errands workflow 0192f3a4b5 --cancel
    """
    config = configuration.current()
    key = resolve_workflow(workflow_id)
    if cancel:
        configuration.import_job_modules(config)  # so on_aborted hooks can run
        touched = cancel_workflow(key)
        click.echo(f"Cancelled or stopping {touched} job(s) of workflow {key}.", err=as_json)
    found = _read(key)
    if as_json:
        print_json(workflow_json(found))
        return
    while True:
        click.echo(workflow_text(found))
        if not watch or found.state != "running":
            return
        time.sleep(interval)
        found = _read(key)
        click.clear()


@click.command("workflows")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    metavar="N",
    default=20,
    show_default=True,
    help="Show at most this many workflows.",
)
@json_option
def workflows_command(limit: int, as_json: bool) -> None:
    """List the latest workflows, newest first, with their state and job counts.

    \b
    Examples:
      errands workflows
      errands workflows --limit 5 --json
    """
    configuration.current()
    backend = api.backend()
    found = [
        status
        for key, _, _ in backend.recent_workflows(limit=limit)
        if (status := backend.workflow(uuid=key)) is not None
    ]
    if as_json:
        print_json([summary_json(status) for status in found])
        return
    if not found:
        click.echo("No workflows.")
        return
    click.echo(
        table(
            ["UUID", "NAME", "CREATED", "STATE", "JOBS", "COUNTS"],
            [
                [
                    s.uuid,
                    s.name or "-",
                    formatting.local_time(s.created_at),
                    s.state,
                    len(s.nodes),
                    counts_text(s),
                ]
                for s in found
            ],
        )
    )


COMMANDS = [workflow_command, workflows_command]


# -- finding a workflow ---------------------------------------------------------------------


def resolve_workflow(text: str) -> uuid_module.UUID:
    """The workflow ``text`` names (see the module's docstring); a CliError if none,
    a usage error if the text is no uuid or prefix, or names several workflows."""
    text = text.strip()
    try:
        whole: uuid_module.UUID | None = uuid_module.UUID(text)
    except ValueError:
        whole = None
    backend = api.backend()
    if whole is not None:
        if backend.workflow(uuid=whole) is not None:
            return whole
        found = _workflow_of_job(whole)
        if found is None:
            raise CliError(f"no workflow, nor a job of one, has uuid {text}")
        return found
    digits = text.replace("-", "").lower()
    if not digits or len(digits) > 32 or not all(c in string.hexdigits for c in digits):
        raise click.BadParameter(f"{text!r} is not a uuid, nor the start of one", param_hint="ID")
    if len(digits) < api.SHORT_ID_LENGTH:
        raise click.BadParameter(
            f"{text!r} is too short: give at least {api.SHORT_ID_LENGTH} characters",
            param_hint="ID",
        )
    matches = {
        key
        for key, _, _ in backend.recent_workflows(limit=PREFIX_SCAN)
        if key.hex.startswith(digits)
    }
    # Jobs whose uuids start so: several of one workflow (made in the same
    # millisecond) still name that workflow alone.
    for job in api.find_uuids(text):
        if (of_job := _workflow_of_job(job.row_uuid or job.uuid)) is not None:
            matches.add(of_job)
    if not matches:
        raise CliError(f"no workflow, nor a job of one, has a uuid starting with {text}")
    if len(matches) > 1:
        listed = ", ".join(sorted(str(m) for m in matches))
        raise click.BadParameter(
            f"{text!r} is the start of several workflows' uuids ({listed}): give more characters",
            param_hint="ID",
        )
    return matches.pop()


def _workflow_of_job(key: uuid_module.UUID) -> uuid_module.UUID | None:
    """The workflow of the job any of whose attempts (request, process, result) is ``key``."""
    backend = api.backend()
    found = backend.workflow_of_request(request_uuid=key)
    if found is not None:
        return found
    for attempt in reversed(api.retry_chain(key)):
        request = attempt.uuid if isinstance(attempt, JobRequest) else attempt.request_uuid
        found = backend.workflow_of_request(request_uuid=request)
        if found is not None:
            return found
    return None


def _read(key: uuid_module.UUID) -> WorkflowStatus:
    found = api.backend().workflow(uuid=key)
    if found is None:
        raise CliError(f"workflow {key} no longer exists")
    return found


# -- printing -------------------------------------------------------------------------------


def counts_text(status: WorkflowStatus) -> str:
    """``2 succeeded, 1 running, 3 waiting``: its jobs by state as shown."""
    counts: dict[str, int] = {}
    for node in status.nodes:
        shown = formatting.node_state(node)
        counts[shown] = counts.get(shown, 0) + 1
    return ", ".join(f"{count} {state}" for state, count in counts.items()) or "no jobs"


def workflow_text(status: WorkflowStatus) -> str:
    """The heading lines and the table of jobs."""
    lines = [
        f"workflow  {status.name or '-'}",
        f"uuid      {status.uuid}",
        f"created   {formatting.local_time(status.created_at)}",
        f"state     {status.state} ({counts_text(status)})",
        "",
        table(
            [
                "#",
                "NAME",
                "JOB CLASS",
                "STATE",
                "DEPENDS ON",
                "ATTEMPT",
                "STARTED",
                "ENDED",
                "DURATION",
                "ERROR",
            ],
            [_node_row(status, node) for node in status.nodes],
        ),
    ]
    return "\n".join(lines)


def _node_row(status: WorkflowStatus, node: NodeStatus) -> list[Any]:
    error = f"{node.error_type}: {node.error}".strip(": ")
    return [
        node.node,
        node.name,
        node.job_class,
        formatting.node_state(node),
        ",".join(status.node(parent).name for parent in node.depends_on) or "-",
        node.attempt,
        formatting.local_time(node.started_at),
        formatting.local_time(node.ended_at),
        formatting.compact_duration(node_seconds(node)),
        _clip(error, ERROR_WIDTH) or "-",
    ]


def node_seconds(node: NodeStatus) -> float | None:
    """How long a workflow job ran; None until it ended (or when it never started)."""
    if node.started_at is None or node.ended_at is None:
        return None
    return (node.ended_at - node.started_at).total_seconds()


def summary_json(status: WorkflowStatus) -> dict[str, Any]:
    return {
        "uuid": str(status.uuid),
        "name": status.name,
        "created_at": status.created_at.isoformat(),
        "state": status.state,
        "jobs": len(status.nodes),
        "counts": status.counts(),
    }


def workflow_json(status: WorkflowStatus) -> dict[str, Any]:
    """A workflow as ``--json`` prints it: its summary, and each job as stored (states as
    NodeState names, ``running`` apart), with its dependencies' names too."""
    return {
        **summary_json(status),
        "nodes": [
            {
                "node": node.node,
                "name": node.name,
                "job_class": node.job_class,
                "state": str(node.state),
                "running": node.running,
                "depends_on": list(node.depends_on),
                "depends_on_names": [status.node(parent).name for parent in node.depends_on],
                "run_on_failure": node.run_on_failure,
                "attempt": node.attempt,
                "request_uuid": str(node.request_uuid),
                "result_uuid": str(node.result_uuid) if node.result_uuid else None,
                "process_uuid": str(node.process_uuid) if node.process_uuid else None,
                "started_at": node.started_at.isoformat() if node.started_at else None,
                "ended_at": node.ended_at.isoformat() if node.ended_at else None,
                "duration": node_seconds(node),
                "status": node.status or None,
                "error_type": node.error_type,
                "error": node.error,
            }
            for node in status.nodes
        ],
    }


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
