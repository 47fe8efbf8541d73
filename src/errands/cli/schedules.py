"""``errands schedule``: the schedule setting's entries, and ``schedule check`` to validate them.

Workers enqueue scheduled jobs themselves; these commands only report.
"""

from __future__ import annotations

import click

from errands import api, formatting, schedule_report, scheduler
from errands.cli import configuration
from errands.cli.options import json_option
from errands.cli.output import print_json, table


@click.group("schedule", invoke_without_command=True)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    metavar="N",
    help="Show the next N run times of each entry.",
)
@json_option
@click.pass_context
def schedule_command(ctx: click.Context, count: int, as_json: bool) -> None:
    """Show the schedule setting's entries: next runs, the one queued, the last run.

    Workers enqueue each entry's next occurrence ahead of time: QUEUED FOR is
    when the occurrence already enqueued (and not started) is due; LAST RUN is
    when the latest occurrence that ran started, LAST OUTCOME how it ended
    (RUNNING while it runs). With --json: "queued" {request_uuid, due_at},
    "last_run" {uuid, started_at, outcome}, each null when there is none.
    Workers enqueue scheduled jobs themselves; this only reports.
    `errands schedule check` validates the entries without a database.

    \b
    Examples:
      errands schedule
      errands schedule --count 5 --json
      errands schedule check
    """
    if ctx.invoked_subcommand is not None:
        return
    config = configuration.current()
    configuration.import_job_modules(config)
    entries = api.schedule_status(count=count)
    if as_json:
        print_json([e.as_json() for e in entries])
    elif entries:
        click.echo(_entry_table(entries))
    else:
        click.echo("No schedule entries (setting 'schedule').")


@schedule_command.command("check")
def schedule_check_command() -> None:
    """Validate the schedule entries (rules, job classes, parameters); exit 2 if one is bad.

    Needs no database: run it in CI or before a deploy.

    \b
    Example:
      errands --import myapp.jobs schedule check
    """
    config = configuration.current()
    configuration.import_job_modules(config)
    entries = scheduler.parse_entries(config.schedule, config.timezone)
    for entry in entries:
        click.echo(f"ok  {entry.job}: {entry.schedule.describe()}")
    click.echo(f"{len(entries)} schedule entries are valid.")


def _entry_table(entries: list[schedule_report.EntryStatus]) -> str:
    return table(
        ["JOB", "SCHEDULE", "NEXT RUNS", "QUEUED FOR", "LAST RUN", "LAST OUTCOME"],
        [
            [
                e.entry.job,
                e.description,
                ", ".join(formatting.local_time(moment) for moment in e.next_runs) or "-",
                formatting.local_time(e.queued.start_at if e.queued else None),
                formatting.local_time(e.last_run_at),
                e.last_outcome or "-",
            ]
            for e in entries
        ],
    )
