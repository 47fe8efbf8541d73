"""Commands that change the queue: retry, cancel, purge, and pausing queues.

``errands pause QUEUE`` / ``resume QUEUE`` and the ``errands queue`` group do
the same; both spellings stay.
"""

from __future__ import annotations

import click

from errands import api, formatting
from errands.cli import configuration
from errands.cli.errors import CliError, ErrandsGroup
from errands.cli.options import parse_uuid
from errands.errors import AlreadyRetried
from errands.models import JobProcess, JobResult, Kind, Selection

#: The ``source`` of a job ``errands retry`` enqueues.
RETRY_SOURCE = "cli:errands retry"


@click.command("retry")
@click.argument("uuid", required=False)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Wait this long before running it (default: the job's calculate_retry_delay).",
)
@click.option(
    "--final",
    is_flag=True,
    help="Instead of UUID: retry every final failure (see errands results --final), at once.",
)
@click.option("--queue", help="With --final: only those of this queue.")
@click.option("--job-class", "--job", "job_class", help="With --final: only this job class.")
@click.option("--yes", "-y", is_flag=True, help="With --final: do not ask for confirmation.")
def retry_command(
    uuid: str | None,
    delay: float | None,
    final: bool,
    queue: str | None,
    job_class: str | None,
    yes: bool,
) -> None:
    """Run a finished job again as its next attempt.

    The new request copies the job's class, parameters and options and is linked
    from the old result (retry_request_uuid). The job's module must be importable
    (--import / setting 'import'). UUID may be a unique prefix (6+ characters).
    --final retries the final failures ("dead letters": ERRORED or LOST with no
    attempts left, never retried), each as its next attempt, due at once.

    \b
    Examples:
      errands --import myapp.jobs retry 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
      errands --import myapp.jobs retry 3f1c2a4e-... --delay 60
      errands --import myapp.jobs retry --final --queue mail --yes
    """
    if final == (uuid is not None) or (not final and (queue or job_class)):
        raise click.UsageError("give a UUID, or --final [--queue Q] [--job-class C]")
    config = configuration.current()
    configuration.import_job_modules(config)
    if uuid is None:
        _retry_final(Selection(final=True, queue=queue, job_class=job_class), yes=yes)
        return
    found = api.get(parse_uuid(uuid))
    if found is None:
        raise CliError(f"no job has uuid {uuid}")
    if not isinstance(found, JobResult):
        raise CliError(
            f"job {uuid} has not finished (it is still a {found.kind}); nothing to retry"
        )
    try:
        request = api.retry(found.uuid, delay=delay, source=RETRY_SOURCE)
    except AlreadyRetried as exc:
        raise CliError(_already_retried(exc)) from None
    if request is None:
        click.echo(f"Not retried: {found.job_class}.should_enqueue() declined (concurrency key?).")
        return
    attempt = formatting.attempt_text(request)
    click.echo(f"Enqueued {request.job_class} again as attempt {attempt}: request {request.uuid}")


def _retry_final(selection: Selection, *, yes: bool) -> None:
    """Retry the final failures of ``selection`` (errands retry --final)."""
    count = api.count(Kind.RESULT, selection)
    if not count:
        click.echo("No final failures to retry.")
        return
    if not yes:
        where = configuration.describe_database(configuration.current())
        click.confirm(f"Retry {count} final failure(s) in {where}?", abort=True, err=True)
    outcome = api.retry_selected(selection, limit=count, source=RETRY_SOURCE)
    skipped = f"; {outcome.skipped} not retried (declined or failed: see the log)"
    click.echo(f"Retried {outcome.done} final failure(s){skipped if outcome.skipped else ''}.")


@click.command("cancel")
@click.argument("uuid")
def cancel_command(uuid: str) -> None:
    """Cancel a pending job, or stop a running one.

    A pending request becomes a CANCELLED result at once. A running job's worker
    notices the request within about a second, kills the job's process and
    records it CANCELLED. UUID may be a unique prefix (6+ characters).

    \b
    Example:
      errands cancel 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
    """
    config = configuration.current()
    configuration.import_job_modules(config)  # so on_aborted hooks can run
    target = parse_uuid(uuid)
    outcome = api.cancel(target)
    if isinstance(outcome, JobResult):
        click.echo(f"Cancelled pending job {outcome.job_class} ({target}); result {outcome.uuid}")
        return
    if isinstance(outcome, JobProcess):
        click.echo(
            f"Cancellation requested for running job {outcome.job_class} ({outcome.uuid}); "
            "its worker will terminate it shortly."
        )
        return
    found = api.get(target)
    if isinstance(found, JobResult):
        raise CliError(f"job {uuid} already finished ({found.status.value}); nothing to cancel")
    raise CliError(f"nothing pending or running has uuid {uuid}")


@click.command("purge")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Delete results that ended more than SECONDS ago.",
)
@click.option("--all", "purge_all", is_flag=True, help="Delete every result.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge_command(older_than: float | None, purge_all: bool, yes: bool) -> None:
    """Delete results (the history of finished jobs).

    Pending and running jobs are never touched. Workers also prune results
    older than the results_retention setting on their own.

    \b
    Examples:
      errands purge --older-than 86400      # older than a day
      errands purge --all --yes
    """
    if (older_than is None) == (not purge_all):
        raise click.UsageError("give exactly one of --older-than SECONDS or --all")
    config = configuration.current()
    what = "every result" if purge_all else f"results that ended more than {older_than:g}s ago"
    if not yes:
        where = configuration.describe_database(config)
        click.confirm(f"Delete {what} in {where}?", abort=True, err=True)
    count = api.purge(older_than=None if purge_all else older_than)
    click.echo(f"Deleted {count} result{'s' if count != 1 else ''}.")


# -- pausing queues ------------------------------------------------------------------------


@click.command("pause")
@click.argument("queue")
def pause_command(queue: str) -> None:
    """Stop every worker from claiming jobs of QUEUE.

    Jobs already running finish; pending jobs wait until `errands resume QUEUE`.
    Enqueueing still works.

    \b
    Example:
      errands pause mail
    """
    configuration.current()
    if api.pause_queue(queue):
        click.echo(f"Paused queue {queue!r}: workers stop claiming its jobs.")
    else:
        click.echo(f"Queue {queue!r} was already paused.")


@click.command("resume")
@click.argument("queue")
def resume_command(queue: str) -> None:
    """Let workers claim jobs of a paused QUEUE again.

    \b
    Example:
      errands resume mail
    """
    configuration.current()
    _resume(queue)


@click.group("queue", cls=ErrandsGroup)
def queue_group() -> None:
    """Pause and resume queues. No worker claims jobs of a paused queue; jobs
    already running finish. Jobs can still be enqueued to it."""


@queue_group.command("pause")
@click.argument("name")
def queue_pause_command(name: str) -> None:
    """Stop every worker claiming jobs of queue NAME.

    \b
    Example:
      errands queue pause emails
    """
    configuration.current()
    if api.pause_queue(name):
        click.echo(
            f"Paused queue {name!r}: until `errands queue resume {name}`, "
            "no worker claims its jobs."
        )
    else:
        click.echo(f"Queue {name!r} was already paused.")


@queue_group.command("resume")
@click.argument("name")
def queue_resume_command(name: str) -> None:
    """Let workers claim jobs of queue NAME again.

    \b
    Example:
      errands queue resume emails
    """
    configuration.current()
    _resume(name)


@queue_group.command("paused")
def queue_paused_command() -> None:
    """List the paused queues, one per line."""
    configuration.current()
    for name in api.paused_queues():
        click.echo(name)


def _resume(queue: str) -> None:
    if api.resume_queue(queue):
        click.echo(f"Resumed queue {queue!r}.")
    else:
        click.echo(f"Queue {queue!r} was not paused.")


COMMANDS = [
    retry_command,
    cancel_command,
    purge_command,
    pause_command,
    resume_command,
    queue_group,
]


def _already_retried(exc: AlreadyRetried) -> str:
    """Which attempt the earlier retry made: retrying a result twice makes one."""
    retry = api.get(exc.request_uuid) if exc.request_uuid else None
    if retry is None:
        return f"{exc}; nothing enqueued"
    return (
        f"job {exc.result_uuid} was already retried, as attempt "
        f"{formatting.attempt_text(retry)}: {retry.kind} {retry.uuid}; nothing enqueued"
    )
