"""Commands that read the queue: requests, processes, results, get, stats, workers.

None of them writes; each prints a table, or JSON with --json.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from errands import api, formatting
from errands.cli import configuration
from errands.cli.errors import CliError
from errands.cli.options import filter_options, json_option, parse_uuid
from errands.cli.output import job_json, print_json, show_row, table, tagged_table
from errands.models import JobProcess, JobRequest, JobResult, Stats
from errands.progress import progress_text


@click.command("requests")
@filter_options(status=False)
def requests_command(
    queue: str | None,
    tag: str | None,
    job_class: str | None,
    concurrency_key: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List pending jobs, in the order workers will claim them.

    ATTEMPT counts runs from 1: "2 of 4" is the first of three retries, "2
    (manual retry)" a retry beyond those allowed. --json prints the stored
    fields (retry_attempt counts from 0, retries is how many are allowed) and
    attempt, the same count from 1.

    \b
    Examples:
      errands requests
      errands requests --queue mail --limit 10
      errands requests --json
      errands requests --tag billing
    """
    configuration.current()
    rows = api.requests(
        queue=queue, job_class=job_class, concurrency_key=concurrency_key, limit=limit, tag=tag
    )
    if as_json:
        print_json([job_json(r) for r in rows])
    elif rows:
        click.echo(_request_table(rows))
    else:
        click.echo("No pending jobs.")


@click.command("processes")
@filter_options(status=False)
def processes_command(
    queue: str | None,
    tag: str | None,
    job_class: str | None,
    concurrency_key: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs claimed by workers (running, or about to run).

    ATTEMPT counts runs from 1: "2 of 4" is the first of three retries, "2
    (manual retry)" a retry beyond those allowed. --json prints the stored
    fields (retry_attempt counts from 0, retries is how many are allowed) and
    attempt, the same count from 1.

    \b
    Examples:
      errands processes
      errands processes --job-class myapp.jobs.SendWelcome --json
    """
    configuration.current()
    rows = api.processes(
        queue=queue, job_class=job_class, concurrency_key=concurrency_key, limit=limit, tag=tag
    )
    if as_json:
        print_json([job_json(p) for p in rows])
    elif rows:
        click.echo(_process_table(rows))
    else:
        click.echo("No claimed or running jobs.")


@click.command("results")
@filter_options(status=True)
@click.option(
    "--final",
    is_flag=True,
    help="Only final failures: ERRORED or LOST with no attempts left, never retried since.",
)
def results_command(
    queue: str | None,
    tag: str | None,
    status: str | None,
    job_class: str | None,
    concurrency_key: str | None,
    limit: int,
    as_json: bool,
    final: bool,
) -> None:
    """List finished jobs, newest first.

    Shows each result's status, attempt, duration and error type.

    ATTEMPT counts runs from 1: "2 of 4" is the first of three retries, "2
    (manual retry)" a retry beyond those allowed. --json prints the stored
    fields (retry_attempt counts from 0, retries is how many are allowed) and
    attempt, the same count from 1.

    \b
    Examples:
      errands results
      errands results --status ERRORED --json
      errands results --queue mail --job-class myapp.jobs.SendWelcome --limit 5
      errands results --final          # the dead letters: errands retry --final reruns them
    """
    configuration.current()
    rows = api.results(
        queue=queue,
        status=status.upper() if status else None,
        job_class=job_class,
        concurrency_key=concurrency_key,
        limit=limit,
        final=final or None,
        tag=tag,
    )
    if as_json:
        print_json([job_json(r) for r in rows])
    elif rows:
        click.echo(_result_table(rows))
    else:
        click.echo("No results.")


@click.command("get")
@click.argument("uuid")
@json_option
def get_command(uuid: str, as_json: bool) -> None:
    """Show one job in full, with its traceback.

    UUID may be a pending request's, a claimed process's or a result's; a
    request's uuid finds its latest result. Its first 6 or more characters do
    (as the dashboard shows them) when no other job's uuid starts with them.

    ATTEMPT counts runs from 1: "2 of 4" is the first of three retries, "2
    (manual retry)" a retry beyond those allowed. --json prints the stored
    fields (retry_attempt counts from 0, retries is how many are allowed) and
    attempt, the same count from 1.

    \b
    Examples:
      errands get 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
      errands get 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab --json
      errands get 3f1c2a4e5b6d
    """
    configuration.current()
    row = api.get(parse_uuid(uuid))
    if row is None:
        raise CliError(f"no job has uuid {uuid}")
    if as_json:
        print_json(job_json(row))
    else:
        show_row(row)


@click.command("stats")
@json_option
def stats_command(as_json: bool) -> None:
    """Queue counts, results by status and workers.

    Per queue: pending (due now), scheduled (due later), running, and the age
    of the oldest pending job. Then results by status and active/stale workers.

    \b
    Examples:
      errands stats
      errands stats --json
    """
    configuration.current()
    stats = api.stats()
    if as_json:
        print_json(stats.as_json())
        return
    click.echo(_queue_table(stats) if stats.queues else "No pending, scheduled or running jobs.")
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(stats.results_by_status.items()))
    click.echo(f"\nresults: {by_status or 'none'}")
    click.echo(f"workers: {stats.workers_active} active, {stats.workers_stale} stale")
    paused = api.paused_queues()
    if paused:
        click.echo(f"paused queues: {', '.join(paused)} (`errands resume QUEUE`)")


@click.command("workers")
@json_option
def workers_command(as_json: bool) -> None:
    """List workers and their heartbeats.

    A worker silent for heartbeat_timeout seconds is stale: its jobs are
    rescued as LOST by the next worker that notices.

    \b
    Examples:
      errands workers
      errands workers --json
    """
    configuration.current()
    rows = api.workers()
    if as_json:
        print_json([w.as_json() for w in rows])
        return
    if not rows:
        click.echo("No workers.")
        return
    click.echo(
        table(
            ["WORKER", "HOST", "PID", "QUEUES", "STARTED", "LAST HEARTBEAT", "STATE"],
            [
                [
                    w.worker_id,
                    w.hostname,
                    w.pid,
                    ",".join(w.queues) or "all",
                    formatting.local_time(w.started_at),
                    formatting.local_time(w.last_heartbeat_at),
                    formatting.worker_state(w),
                ]
                for w in rows
            ],
        )
    )


COMMANDS = [
    requests_command,
    processes_command,
    results_command,
    get_command,
    stats_command,
    workers_command,
]


# -- tables --------------------------------------------------------------------------------


def _request_table(rows: Sequence[JobRequest]) -> str:
    return tagged_table(
        rows,
        ["UUID", "JOB CLASS", "QUEUE", "PRIORITY", "ATTEMPT", "CREATED", "START AT", "KEY"],
        [
            [
                r.uuid,
                r.job_class,
                r.queue,
                r.priority,
                formatting.attempt_text(r),
                formatting.local_time(r.created_at),
                formatting.local_due(r.start_at),
                r.concurrency_key or "-",
            ]
            for r in rows
        ],
    )


def _process_table(rows: Sequence[JobProcess]) -> str:
    return tagged_table(
        rows,
        [
            "UUID",
            "JOB CLASS",
            "QUEUE",
            "PRIORITY",
            "ATTEMPT",
            "CLAIMED",
            "STARTED",
            "STATE",
            "PROGRESS",
        ],
        [
            [
                p.uuid,
                p.job_class,
                p.queue,
                p.priority,
                formatting.attempt_text(p),
                formatting.local_time(p.created_at),
                formatting.local_time(p.started_at),
                formatting.process_state(p),
                progress_text(p.progress_done, p.progress_total, p.progress_message),
            ]
            for p in rows
        ],
    )


def _result_table(rows: Sequence[JobResult]) -> str:
    return tagged_table(
        rows,
        ["UUID", "JOB CLASS", "QUEUE", "STATUS", "ATTEMPT", "ENDED", "DURATION", "ERROR"],
        [
            [
                r.uuid,
                r.job_class,
                r.queue,
                r.status.value,
                formatting.attempt_text(r),
                formatting.local_time(r.ended_at),
                formatting.compact_duration(formatting.run_seconds(r)),
                r.error_type or "-",
            ]
            for r in rows
        ],
    )


def _queue_table(stats: Stats) -> str:
    return table(
        ["QUEUE", "PENDING", "SCHEDULED", "RUNNING", "OLDEST PENDING"],
        [
            [
                q.queue,
                q.pending,
                q.scheduled,
                q.running,
                formatting.compact_duration(q.oldest_pending_age),
            ]
            for q in stats.queues
        ],
    )
