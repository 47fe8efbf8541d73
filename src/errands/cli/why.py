"""``errands why ID``: why a job is where it is, in plain words (see :mod:`errands.why`)."""

from __future__ import annotations

import click

from errands import formatting, why
from errands.cli import configuration
from errands.cli.errors import CliError
from errands.cli.options import json_option, parse_uuid
from errands.cli.output import print_json, table
from errands.models import JobResult


@click.command("why")
@click.argument("uuid")
@json_option
def why_command(uuid: str, as_json: bool) -> None:
    """Say why a job is where it is.

    For a job not running yet: not due until when, its queue paused, no live
    worker serving its queue, how many due jobs of its queue are claimed
    before it, other jobs sharing its concurrency key. For a running one:
    which worker runs it, since when. For a finished one: its attempts, first
    to last. UUID may be a unique prefix (6+ characters). --json prints the
    state, summary, reasons (code and text) and attempts.

    \b
    Examples:
      errands why 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
      errands why 3f1c2a4e5b6d --json
    """
    configuration.current()
    explanation = why.why(parse_uuid(uuid))
    if explanation is None:
        raise CliError(f"no job has uuid {uuid}")
    if as_json:
        print_json(explanation.as_json())
        return
    job = explanation.job
    click.echo(f"{job.job_class} {job.uuid} ({job.kind})")
    click.echo(explanation.summary)
    for reason in explanation.reasons:
        click.echo(f"  - {reason.text}")
    if len(explanation.chain) > 1 or isinstance(job, JobResult):
        click.echo("\nAttempts:")
        click.echo(
            table(["ATTEMPT", "STATE", "ENDED", "ERROR", "UUID", ""], _attempts(explanation))
        )


def _attempts(explanation: why.Explanation) -> list[list[str]]:
    rows = []
    for attempt in explanation.chain:
        ended = formatting.local_time(attempt.ended_at) if isinstance(attempt, JobResult) else "-"
        error = (
            f"{attempt.error_type}: {attempt.error}".strip(": ")
            if isinstance(attempt, JobResult)
            else ""
        )
        rows.append(
            [
                formatting.attempt_text(attempt),
                why.attempt_state(attempt),
                ended,
                _clip(error, 50),
                str(attempt.uuid),
                "<- this one" if attempt.uuid == explanation.job.uuid else "",
            ]
        )
    return rows


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
