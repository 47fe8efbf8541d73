"""``errands limits``: each limit key, what holds its jobs, and how busy it is."""

from __future__ import annotations

import click

from errands import api
from errands.cli import configuration
from errands.cli.options import json_option
from errands.cli.output import print_json, table


@click.command("limits")
@json_option
def limits_command(as_json: bool) -> None:
    """Flow control: every limit key of a pending or running job.

    Per key: its limits as its jobs declare them (errands.Limit), how many of its
    jobs are claimed or running, how many are due and waiting (held back by the
    limit, or about to be claimed), how many are due later, and, for a key with a
    rate, how many started within the rate's window. FULL marks a key that lets no
    job start now.

    \b
    Examples:
      errands limits
      errands limits --json
    """
    configuration.current()
    usage = api.limit_usage()
    if as_json:
        print_json([key.as_json() for key in usage])
        return
    if not usage:
        click.echo("No pending or running job has limits.")
        return
    rows = [
        [
            u.key,
            u.describe(),
            u.running,
            u.waiting,
            u.scheduled,
            "-" if u.recent_starts is None else u.recent_starts,
            "full" if u.full else "",
        ]
        for u in usage
    ]
    headers = ["KEY", "LIMITS", "RUNNING", "WAITING", "SCHEDULED", "RECENT STARTS", "FULL"]
    click.echo(table(headers, rows))
