"""``errands worker``: run a worker in this process, or under a reloader (--reload).

With --reload the worker runs in a child process that the watchfiles package
restarts on each .py change; the child rebuilds its settings from the same
command-line values (:func:`_reloaded_worker`).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from errands import settings
from errands.cli import configuration
from errands.cli.errors import CliError, friendly_errors
from errands.cli.options import CLI_VALUES
from errands.logs import configure_logging
from errands.worker.intake import split_queue_caps


def _pending_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A positive number of jobs, or "auto" (left to the worker: ``errands.worker.intake``)."""
    if value is None or value.strip().lower() == "auto":
        return value and "auto"
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number of jobs nor 'auto'") from None
    if number < 1:
        raise click.BadParameter(f"{number} is not a positive number of jobs (nor 'auto')")
    return number


def _queue_entries(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        split_queue_caps(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command("worker")
@click.option(
    "--queue",
    "-q",
    "queues",
    metavar="NAME[:N]",
    multiple=True,
    callback=_queue_entries,
    help="Run only jobs of this queue (repeatable; default: every queue). NAME:N: at most "
    "N of its jobs at once in this worker (e.g. --queue mail:4 --queue default).",
)
@click.option(
    "--max-processes",
    type=click.IntRange(min=1),
    metavar="N",
    help="Child processes running jobs [setting worker_max_processes; default: CPU count].",
)
@click.option(
    "--max-jobs-per-process",
    type=click.IntRange(min=1),
    metavar="N",
    help="Replace a child after this many jobs [worker_max_jobs_per_process; default: never].",
)
@click.option(
    "--max-pending-per-process",
    callback=_pending_limit,
    metavar="N|auto",
    help="Jobs held (claimed ahead, waiting or running) per child "
    "[worker_max_pending_per_process; default: auto, 10 to 200 by how long jobs run].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    metavar="N",
    help="Threads per child [worker_threads; default: 1].",
)
@click.option(
    "--stats-every",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Log a stats line this often; 0 turns it off [worker_stats_every; default: 60].",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds between heartbeats [heartbeat_interval; default: 60].",
)
@click.option(
    "--heartbeat-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Silence after which a worker counts as dead [heartbeat_timeout; default: 300].",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="On shutdown, wait this long for running jobs, then cancel them "
    "[worker_drain_timeout; default: wait forever].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Longest time new work waits to be noticed [poll_interval; default: 1].",
)
@click.option(
    "--no-notifications",
    is_flag=True,
    help="Do not use PostgreSQL LISTEN/NOTIFY; poll only [notifications].",
)
@click.option(
    "--log-level",
    type=click.Choice(settings.LOG_LEVELS, case_sensitive=False),
    help="[log_level; default: INFO]",
)
@click.option(
    "--log-format", type=click.Choice(settings.LOG_FORMATS), help="[log_format; default: text]"
)
@click.option("--log-jobs", is_flag=True, help="Log a line per finished job [log_jobs].")
@click.option(
    "--label-output",
    is_flag=True,
    help="Start each line a job prints or logs with its class and short id, "
    "e.g. [myapp.jobs.Send 1a2b3c4d] [worker_label_output].",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Restart the worker when a .py file below the working directory changes "
    "(development; needs `pip install 'errands[reload]'`).",
)
def worker_command(
    queues: tuple[str, ...],
    max_processes: int | None,
    max_jobs_per_process: int | None,
    max_pending_per_process: int | None,
    threads: int | None,
    stats_every: float | None,
    heartbeat_interval: float | None,
    heartbeat_timeout: float | None,
    drain_timeout: float | None,
    poll_interval: float | None,
    no_notifications: bool,
    log_level: str | None,
    log_format: str | None,
    log_jobs: bool,
    label_output: bool,
    reload: bool,
) -> None:
    """Run a worker: claim due jobs and run each in a child process.

    Stop it with Ctrl-C or SIGTERM: it stops claiming, puts back jobs it has
    not started, lets running jobs finish and exits 0. A second signal
    terminates running jobs and records them CANCELLED.

    \b
    Examples:
      errands worker --import myapp.jobs
      errands worker --import myapp.jobs --queue mail --queue default --max-processes 4
      errands worker --import myapp.jobs --log-format json --log-jobs
      errands worker --import myapp.jobs --reload --max-processes 2 --stats-every 0
    """
    values: dict[str, Any] = {
        "worker_max_processes": max_processes,
        "worker_max_jobs_per_process": max_jobs_per_process,
        "worker_max_pending_per_process": max_pending_per_process,
        "worker_threads": threads,
        "worker_stats_every": stats_every,
        "heartbeat_interval": heartbeat_interval,
        "heartbeat_timeout": heartbeat_timeout,
        "worker_drain_timeout": drain_timeout,
        "poll_interval": poll_interval,
        "notifications": False if no_notifications else None,
        "log_level": log_level,
        "log_format": log_format,
        "log_jobs": True if log_jobs else None,
        "worker_label_output": True if label_output else None,
    }
    config = configuration.apply(values)
    if reload:
        _run_reloading(config, values, list(queues))
        return
    sys.exit(_run_worker(config, list(queues)))


def _run_worker(config: settings.Settings, queues: list[str]) -> int:
    """Run a worker until it stops; its exit code."""
    from errands.worker import Worker

    configure_logging(config.log_level, config.log_format)
    imported = configuration.import_job_modules(config)
    backend = configuration.check_schema(config)
    _banner(config, queues, imported)
    with friendly_errors():
        return Worker(queues=queues, config=config, backend=backend).run()


def _banner(config: settings.Settings, queues: list[str], imported: list[str]) -> None:
    from errands.registry import registered_jobs
    from errands.worker.intake import ClaimAhead

    version = configuration.errands_version()
    jobs = [path for path in registered_jobs() if not path.startswith("errands.demo.")]
    per_child = ClaimAhead(
        fixed=config.worker_max_pending_per_process, threads=config.worker_threads
    ).describe()
    lines = [
        f"errands {version} worker (pid {os.getpid()})",
        f"  database   {configuration.describe_database(config)}",
        f"  queues     {', '.join(queues) if queues else 'all'}",
        f"  processes  {config.max_processes} (jobs held per process: {per_child})",
        f"  imported   {', '.join(imported) if imported else '- (use --import MODULE)'}",
        f"  jobs       {', '.join(jobs) if jobs else '-'}",
        f"  polling    every {config.poll_interval:g}s"
        + ("" if config.notifications else " (notifications off)"),
        f"  heartbeat  every {config.heartbeat_interval:g}s, "
        f"stale after {config.heartbeat_timeout:g}s; "
        f"stats every {config.worker_stats_every:g}s; log {config.log_level} {config.log_format}"
        " (all settings: `errands settings`)",
        "Stop with Ctrl-C or SIGTERM (graceful); a second signal cancels running jobs.",
    ]
    click.echo("\n".join(lines), err=True)


# -- --reload ------------------------------------------------------------------------------


def _run_reloading(config: settings.Settings, values: dict[str, Any], queues: list[str]) -> None:
    """Run the worker in a child process, restarted on each .py change below the cwd."""
    try:
        watchfiles: Any = importlib.import_module("watchfiles")
    except ImportError:
        raise CliError(
            "--reload needs the watchfiles package: pip install 'errands[reload]'"
        ) from None
    cli_values = {**click.get_current_context().find_root().meta.get(CLI_VALUES, {}), **values}
    configuration.check_schema(config)  # fail once, here, rather than in every restarted worker
    cwd = os.getcwd()
    click.echo(f"Watching {cwd} for .py changes; the worker restarts on each.", err=True)

    def announce(changes: set[tuple[Any, str]]) -> None:
        changed = sorted({os.path.relpath(path, cwd) for _, path in changes})
        click.echo(f"Changed: {', '.join(changed)}; restarting the worker.", err=True)

    # Restarting stops the worker with SIGINT (graceful) and waits for running
    # jobs up to the drain timeout before killing it.
    wait = config.worker_drain_timeout
    watchfiles.run_process(
        cwd,
        target=_reloaded_worker,
        args=(cli_values, queues, list(sys.path)),
        watch_filter=watchfiles.PythonFilter(),
        callback=announce,
        sigint_timeout=int(wait) + 1 if wait is not None else 30,
    )


def _reloaded_worker(cli_values: dict[str, Any], queues: list[str], path: list[str]) -> None:
    """Entry point of the worker process that ``--reload`` restarts."""
    for entry in reversed(path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    settings.reset()
    settings.override_cli(cli_values)
    try:
        code = _run_worker(settings.current(), queues)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    sys.exit(code)
