"""``errands check``: stored jobs and schedule entries that this code could not run."""

from __future__ import annotations

import click

from errands import checking
from errands.cli import configuration
from errands.cli.options import json_option
from errands.cli.output import print_json


@click.command("check")
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    metavar="N",
    help="List at most N uuids of each class and problem (all are counted).",
)
@json_option
def check_command(show: int, as_json: bool) -> None:
    """Check that every pending or scheduled job, and every schedule entry, can run
    with the job classes of this code; exit 1 listing those that cannot.

    Run it with the code you are about to deploy, against the production database,
    before its workers start. It finds jobs whose class no longer loads (not
    registered: renamed or removed without @register_job(aliases=[...]); its module
    fails to import) and jobs whose stored arguments no longer fit the class's
    constructor (a parameter added without a default, one removed or renamed).
    Stored arguments are checked against the constructor's signature, not decoded
    (errands.register_type decoders are not run). Jobs are grouped by class and
    problem, with their count and the first --show uuids. Only what the worker may
    load is loaded: modules of the import setting and those inside them.

    With --json: {"ok", "jobs_checked", "jobs_failing", "entries_checked", "jobs":
    [{"job_class", "problem", "count", "uuids"}], "schedule": [{"position", "job",
    "problem"}], "stopped_at"}. Exit code 0 when everything loads, 1 otherwise.

    \b
    Examples:
      errands --import myapp.jobs check
      errands check --show 0                  counts only
      errands check --json
    """
    config = configuration.current()
    configuration.import_job_modules(config)
    backend = configuration.check_schema(config)
    report = checking.check(backend, config.schedule, config.timezone, shown=show)
    if as_json:
        print_json(report.as_json())
    else:
        _print_report(report)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _print_report(report: checking.Report) -> None:
    checked = (
        f"{report.jobs_checked:,} pending or scheduled jobs and "
        f"{report.entries_checked:,} schedule entries"
    )
    if report.ok:
        click.echo(f"OK: all {checked} load with this code.")
        return
    failing = sum(group.count for group in report.groups)
    click.echo(f"Checked {checked}: {failing:,} jobs cannot run.")
    for group in report.groups:
        click.echo(f"\n{group.job_class}: {group.count:,} jobs: {group.problem}")
        for uuid in group.uuids:
            click.echo(f"  {uuid}")
        if group.count > len(group.uuids):
            more = group.count - len(group.uuids)
            click.echo(f"  ... {more:,} more (errands requests --job-class {group.job_class})")
    for entry in report.entries:
        click.echo(f"\nschedule entry {entry.position} ({entry.job}): {entry.problem}")
    if report.stopped_at is not None:
        click.echo(
            f"\nStopped at request {report.stopped_at}: its due time cannot be read, so "
            "the requests after it were not checked."
        )
