"""The ``errands`` command: migrate, run workers, inspect and operate the queue.

Nothing in the package imports this module; it only calls the public API,
the settings and the worker.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import os
import sqlite3
import sys
import uuid as uuid_module
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import psycopg

from errands import api, health, scheduler, settings
from errands.backends import Backend
from errands.errors import ConfigurationError, DeferJob, ErrandsError, SchemaOutOfDate
from errands.logs import configure_logging
from errands.models import JobProcess, JobRequest, JobResult, Status, UndecodableTime
from errands.redaction import redact_url
from errands.worker.intake import ClaimAhead

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}
STATUS_NAMES = [s.value for s in Status]
_CLI_VALUES = "errands.cli_values"  # key in the root context's meta: the global flags


# -- errors ----------------------------------------------------------------------------


class CliError(click.ClickException):
    """A one-line ``Error: ...`` on stderr and exit code 1; never a traceback."""


class SetupError(CliError):
    """Like CliError, with exit code 2: bad settings or a database without the schema."""

    exit_code = 2


def _error(message: str, exit_code: int = 1) -> CliError:
    return SetupError(message) if exit_code == 2 else CliError(message)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _schema_message(exc: Exception) -> str:
    message = _one_line(str(exc)) or "the database has no errands tables"
    if "errands migrate" not in message:
        message += "; run `errands migrate` to create or upgrade errands' tables"
    return message


@contextmanager
def _friendly_errors() -> Iterator[None]:
    """Turn errands' own and database errors into ``Error: ...`` lines."""
    try:
        yield
    except click.ClickException:
        raise
    except SchemaOutOfDate as exc:
        raise _error(_schema_message(exc), 2) from None
    except ConfigurationError as exc:
        raise _error(_one_line(str(exc)), 2) from None
    except ErrandsError as exc:
        raise CliError(_one_line(str(exc))) from None
    except (psycopg.Error, sqlite3.Error) as exc:
        message = _one_line(str(exc))
        if "errands_" in message and ("does not exist" in message or "no such table" in message):
            raise _error(_schema_message(exc), 2) from None
        raise CliError(f"database error: {message}") from None


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


class ErrandsGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with _friendly_errors():
            return super().invoke(ctx)


# -- settings and imports ------------------------------------------------------------


def _config() -> settings.Settings:
    with _friendly_errors():
        return settings.current()


def _apply(values: Mapping[str, Any]) -> settings.Settings:
    """Add command-line values (None = not given) and load the settings, checking them."""
    settings.override_cli(values)
    return _config()


def _import_job_modules(config: settings.Settings) -> list[str]:
    """Import the modules of the ``import`` setting so their job classes register."""
    from errands.registry import import_job_modules

    for module in config.import_modules:
        try:
            import_job_modules([module])  # stored paths may import only inside these
        except ImportError as exc:
            raise CliError(
                f"cannot import module {module!r} (from --import / setting 'import'): {exc}"
            ) from None
    return list(config.import_modules)


def _describe_database(config: settings.Settings) -> str:
    from errands.backends import DEFAULT_URL

    url = config.database_url or DEFAULT_URL
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("//")
        path = path[1:] if path.startswith("/") and not path.startswith("//") else path
        shown = os.path.abspath(path) if path else path
        if not config.database_url:
            return f"sqlite {shown} (default; set --database-url or ERRANDS_DATABASE_URL)"
        return f"sqlite {shown}"
    return f"postgresql {redact_url(url)}"


# -- formatting ----------------------------------------------------------------------


def _time(value: datetime.datetime | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, UndecodableTime):  # a poison row's (in local time, past 9999)
        return str(value)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _result_duration(result: JobResult) -> float | None:
    if result.started_at is None:
        return None
    return (result.ended_at - result.started_at).total_seconds()


def _attempt(row: JobRequest | JobProcess | JobResult) -> str:
    return f"{row.retry_attempt + 1}/{row.retries + 1}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell; the last column is not padded."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _request_rows(rows: Sequence[JobRequest]) -> str:
    return table(
        ["UUID", "JOB CLASS", "QUEUE", "PRIORITY", "ATTEMPT", "CREATED", "START AT", "KEY"],
        [
            [
                r.uuid,
                r.job_class,
                r.queue,
                r.priority,
                _attempt(r),
                _time(r.created_at),
                _time(r.start_at),
                r.concurrency_key or "-",
            ]
            for r in rows
        ],
    )


def _process_rows(rows: Sequence[JobProcess]) -> str:
    return table(
        ["UUID", "JOB CLASS", "QUEUE", "PRIORITY", "ATTEMPT", "CLAIMED", "STARTED", "STATE"],
        [
            [
                p.uuid,
                p.job_class,
                p.queue,
                p.priority,
                _attempt(p),
                _time(p.created_at),
                _time(p.started_at),
                "cancelling" if p.cancel_requested else ("running" if p.started_at else "claimed"),
            ]
            for p in rows
        ],
    )


def _result_rows(rows: Sequence[JobResult]) -> str:
    return table(
        ["UUID", "JOB CLASS", "QUEUE", "STATUS", "ATTEMPT", "ENDED", "DURATION", "ERROR"],
        [
            [
                r.uuid,
                r.job_class,
                r.queue,
                r.status.value,
                _attempt(r),
                _time(r.ended_at),
                _duration(_result_duration(r)),
                r.error_type or "-",
            ]
            for r in rows
        ],
    )


def _field_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _show_row(row: JobRequest | JobProcess | JobResult) -> None:
    data = row.as_json()
    traceback = data.pop("traceback", "")
    if isinstance(row, JobResult):
        data["duration"] = _duration(_result_duration(row))
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {_field_text(value)}")
    if traceback:
        click.echo("traceback:")
        for line in str(traceback).rstrip().splitlines():
            click.echo(f"    {line}")


def _parse_uuid(value: str) -> uuid_module.UUID:
    try:
        return uuid_module.UUID(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a uuid (e.g. 3f1c2a4e-...)") from None


# -- shared options ------------------------------------------------------------------


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def _filter_options(*, status: bool) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        f = _json_option(f)
        f = click.option(
            "--limit",
            type=click.IntRange(min=1),
            metavar="N",
            default=50,
            show_default=True,
            help="Show at most this many rows.",
        )(f)
        f = click.option(
            "--concurrency-key", "concurrency_key", metavar="KEY", help="Only this concurrency key."
        )(f)
        f = click.option(
            "--job-class",
            "--job",
            "job_class",
            metavar="PATH",
            help="Only this job class (dotted path, e.g. myapp.jobs.SendWelcome).",
        )(f)
        if status:
            f = click.option(
                "--status",
                type=click.Choice(STATUS_NAMES, case_sensitive=False),
                help="Only results with this status.",
            )(f)
        f = click.option("--queue", "-q", metavar="NAME", help="Only this queue.")(f)
        return f

    return decorate


# -- the group ---------------------------------------------------------------------


@click.group(cls=ErrandsGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--database-url",
    metavar="URL",
    help="postgresql://user@host/db or sqlite:///path.db "
    "(default: setting database_url, else sqlite:///errands.sqlite3).",
)
@click.option(
    "--import",
    "import_modules",
    metavar="MODULE",
    multiple=True,
    help="Import this module so its @register_job classes are known (repeatable).",
)
@click.version_option(package_name="errands", prog_name="errands")
def cli(database_url: str | None, import_modules: tuple[str, ...]) -> None:
    """errands: background jobs, retries and schedules on the database you already run
    (PostgreSQL, or an embedded SQLite file).

    \b
    The main workflow:
      errands demo                          see a worker run example jobs (no setup)
      errands migrate                       create or upgrade errands' tables
      errands worker --import myapp.jobs    run jobs enqueued with Job.run_in_worker()
      errands results                       see what happened, newest first
      errands get UUID                      one job in full, with its traceback
      errands stats                         queue counts and workers at a glance

    Settings come from flags, ERRANDS_* environment variables, [tool.errands]
    in ./pyproject.toml, or errands.configure(); see `errands settings`.
    Run `errands COMMAND --help` for a command's options and examples.
    """
    settings.reset()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    values = {
        "database_url": database_url,
        "import_modules": tuple(import_modules) if import_modules else None,
    }
    click.get_current_context().meta[_CLI_VALUES] = values
    settings.override_cli(values)
    # Warnings of errands' own (e.g. a failing on_aborted hook) print as log lines;
    # `errands worker` reconfigures from the log_* settings. The connection pool's
    # retry warnings are dropped: a connection failure ends as one `Error:` line.
    configure_logging("WARNING", "text")
    logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


# -- migrate -----------------------------------------------------------------------


@cli.command()
@click.option("--sql", "print_sql", is_flag=True, help="Print the SQL instead of running it.")
def migrate(print_sql: bool) -> None:
    """Create or upgrade errands' tables in the configured database.

    Safe to run repeatedly and from several hosts at once: versions already
    applied are skipped.

    \b
    Examples:
      errands migrate
      errands --database-url postgresql://app@db/app migrate
      errands migrate --sql > errands.sql    # for your own migration tool
    """
    config = _config()
    backend = api.backend()
    if print_sql:
        click.echo(backend.migration_sql().rstrip())
        return
    applied = backend.migrate()
    where = _describe_database(config)
    if applied:
        versions = ", ".join(str(v) for v in applied)
        click.echo(f"Applied schema version(s) {versions} to {where}.")
    else:
        click.echo(
            f"Schema already up to date (version {backend.latest_schema_version()}) in {where}."
        )


# -- worker --------------------------------------------------------------------------


@cli.command()
@click.option(
    "--queue",
    "-q",
    "queues",
    metavar="NAME",
    multiple=True,
    help="Run only jobs of this queue (repeatable; default: every queue).",
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
    "--reload",
    is_flag=True,
    help="Restart the worker when a .py file below the working directory changes "
    "(development; needs `pip install 'errands[reload]'`).",
)
def worker(
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
    }
    config = _apply(values)
    if reload:
        try:
            watchfiles: Any = importlib.import_module("watchfiles")
        except ImportError:
            raise CliError(
                "--reload needs the watchfiles package: pip install 'errands[reload]'"
            ) from None
        cli_values = {**click.get_current_context().find_root().meta.get(_CLI_VALUES, {}), **values}
        _check_schema(config)  # fail once, here, rather than in every restarted worker
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
            args=(cli_values, list(queues), list(sys.path)),
            watch_filter=watchfiles.PythonFilter(),
            callback=announce,
            sigint_timeout=int(wait) + 1 if wait is not None else 30,
        )
        return
    code = _run_worker(config, list(queues))
    sys.exit(code)


def _run_worker(config: settings.Settings, queues: list[str]) -> int:
    from errands.worker import Worker

    configure_logging(config.log_level, config.log_format)
    imported = _import_job_modules(config)
    backend = _check_schema(config)
    _banner(config, queues, imported)
    with _friendly_errors():
        return Worker(queues=queues, config=config, backend=backend).run()


def _check_schema(config: settings.Settings) -> Backend:
    """The configured backend, after checking that ``errands migrate`` has run."""
    with _friendly_errors():
        backend = api.backend()
        version = backend.schema_version()
        latest = backend.latest_schema_version()
    if version is None or version < latest:
        found = "no errands tables" if version is None else f"schema version {version}"
        raise _error(
            f"the database ({_describe_database(config)}) has {found}, "
            f"this errands needs version {latest}; run `errands migrate` first",
            2,
        )
    return backend


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


def _banner(config: settings.Settings, queues: list[str], imported: list[str]) -> None:
    from errands.registry import registered_jobs

    version = _version()
    jobs = [path for path in registered_jobs() if not path.startswith("errands.demo.")]
    per_child = ClaimAhead(
        fixed=config.worker_max_pending_per_process, threads=config.worker_threads
    ).describe()
    lines = [
        f"errands {version} worker (pid {os.getpid()})",
        f"  database   {_describe_database(config)}",
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("errands")
    except PackageNotFoundError:
        return "unknown"


# -- listing ---------------------------------------------------------------------------


@cli.command("requests")
@_filter_options(status=False)
def requests_command(
    queue: str | None,
    job_class: str | None,
    concurrency_key: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List pending jobs, in the order workers will claim them.

    \b
    Examples:
      errands requests
      errands requests --queue mail --limit 10
      errands requests --json
    """
    _config()
    rows = api.requests(
        queue=queue, job_class=job_class, concurrency_key=concurrency_key, limit=limit
    )
    if as_json:
        _print_json([r.as_json() for r in rows])
    elif rows:
        click.echo(_request_rows(rows))
    else:
        click.echo("No pending jobs.")


@cli.command("processes")
@_filter_options(status=False)
def processes_command(
    queue: str | None,
    job_class: str | None,
    concurrency_key: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs claimed by workers (running, or about to run).

    \b
    Examples:
      errands processes
      errands processes --job-class myapp.jobs.SendWelcome --json
    """
    _config()
    rows = api.processes(
        queue=queue, job_class=job_class, concurrency_key=concurrency_key, limit=limit
    )
    if as_json:
        _print_json([p.as_json() for p in rows])
    elif rows:
        click.echo(_process_rows(rows))
    else:
        click.echo("No claimed or running jobs.")


@cli.command("results")
@_filter_options(status=True)
def results_command(
    queue: str | None,
    status: str | None,
    job_class: str | None,
    concurrency_key: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List finished jobs, newest first.

    Shows each result's status, attempt (of 1 + retries), duration and error type.

    \b
    Examples:
      errands results
      errands results --status ERRORED --json
      errands results --queue mail --job-class myapp.jobs.SendWelcome --limit 5
    """
    _config()
    rows = api.results(
        queue=queue,
        status=status.upper() if status else None,
        job_class=job_class,
        concurrency_key=concurrency_key,
        limit=limit,
    )
    if as_json:
        _print_json([r.as_json() for r in rows])
    elif rows:
        click.echo(_result_rows(rows))
    else:
        click.echo("No results.")


@cli.command("get")
@click.argument("uuid")
@_json_option
def get_command(uuid: str, as_json: bool) -> None:
    """Show one job in full, with its traceback.

    UUID may be a pending request's, a claimed process's or a result's; a
    request's uuid finds its latest result.

    \b
    Examples:
      errands get 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
      errands get 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab --json
    """
    _config()
    row = api.get(_parse_uuid(uuid))
    if row is None:
        raise CliError(f"no job has uuid {uuid}")
    if as_json:
        _print_json(row.as_json())
    else:
        _show_row(row)


# -- operating -----------------------------------------------------------------------


@cli.command("retry")
@click.argument("uuid")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Wait this long before running it (default: the job's calculate_retry_delay).",
)
def retry_command(uuid: str, delay: float | None) -> None:
    """Run a finished job again as its next attempt.

    The new request copies the job's class, parameters and options and is linked
    from the old result (retry_request_uuid). The job's module must be importable
    (--import / setting 'import').

    \b
    Examples:
      errands --import myapp.jobs retry 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
      errands --import myapp.jobs retry 3f1c2a4e-... --delay 60
    """
    config = _config()
    _import_job_modules(config)
    target = _parse_uuid(uuid)
    found = api.get(target)
    if found is None:
        raise CliError(f"no job has uuid {uuid}")
    if not isinstance(found, JobResult):
        raise CliError(
            f"job {uuid} has not finished (it is still a {found.kind}); nothing to retry"
        )
    request = api.retry(found.uuid, delay=delay)
    if request is None:
        click.echo(f"Not retried: {found.job_class}.should_enqueue() declined (concurrency key?).")
        return
    attempt = request.retry_attempt + 1
    click.echo(f"Enqueued {request.job_class} again as attempt {attempt}: request {request.uuid}")


@cli.command("cancel")
@click.argument("uuid")
def cancel_command(uuid: str) -> None:
    """Cancel a pending job, or stop a running one.

    A pending request becomes a CANCELLED result at once. A running job's worker
    notices the request within about a second, kills the job's process and
    records it CANCELLED.

    \b
    Example:
      errands cancel 3f1c2a4e-5b6d-4c8e-9f00-0123456789ab
    """
    config = _config()
    _import_job_modules(config)  # so on_aborted hooks can run
    target = _parse_uuid(uuid)
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


@cli.command("purge")
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
    config = _config()
    what = "every result" if purge_all else f"results that ended more than {older_than:g}s ago"
    if not yes:
        click.confirm(f"Delete {what} in {_describe_database(config)}?", abort=True, err=True)
    count = api.purge(older_than=None if purge_all else older_than)
    click.echo(f"Deleted {count} result{'s' if count != 1 else ''}.")


# -- overview ------------------------------------------------------------------------


@cli.command("stats")
@_json_option
def stats_command(as_json: bool) -> None:
    """Queue counts, results by status and workers.

    Per queue: pending (due now), scheduled (due later), running, and the age
    of the oldest pending job. Then results by status and active/stale workers.

    \b
    Examples:
      errands stats
      errands stats --json
    """
    _config()
    stats = api.stats()
    if as_json:
        _print_json(stats.as_json())
        return
    if stats.queues:
        click.echo(
            table(
                ["QUEUE", "PENDING", "SCHEDULED", "RUNNING", "OLDEST PENDING"],
                [
                    [q.queue, q.pending, q.scheduled, q.running, _duration(q.oldest_pending_age)]
                    for q in stats.queues
                ],
            )
        )
    else:
        click.echo("No pending, scheduled or running jobs.")
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(stats.results_by_status.items()))
    click.echo(f"\nresults: {by_status or 'none'}")
    click.echo(f"workers: {stats.workers_active} active, {stats.workers_stale} stale")
    paused = api.paused_queues()
    if paused:
        click.echo(f"paused queues: {', '.join(paused)} (`errands resume QUEUE`)")


@cli.command("workers")
@_json_option
def workers_command(as_json: bool) -> None:
    """List workers and their heartbeats.

    A worker silent for heartbeat_timeout seconds is stale: its jobs are
    rescued as LOST by the next worker that notices.

    \b
    Examples:
      errands workers
      errands workers --json
    """
    _config()
    rows = api.workers()
    if as_json:
        _print_json([w.as_json() for w in rows])
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
                    _time(w.started_at),
                    _time(w.last_heartbeat_at),
                    "stale" if w.stale else "active",
                ]
                for w in rows
            ],
        )
    )


@cli.command("pause")
@click.argument("queue")
def pause_command(queue: str) -> None:
    """Stop every worker from claiming jobs of QUEUE.

    Jobs already running finish; pending jobs wait until `errands resume QUEUE`.
    Enqueueing still works.

    \b
    Example:
      errands pause mail
    """
    _config()
    if api.pause_queue(queue):
        click.echo(f"Paused queue {queue!r}: workers stop claiming its jobs.")
    else:
        click.echo(f"Queue {queue!r} was already paused.")


@cli.command("resume")
@click.argument("queue")
def resume_command(queue: str) -> None:
    """Let workers claim jobs of a paused QUEUE again.

    \b
    Example:
      errands resume mail
    """
    _config()
    if api.resume_queue(queue):
        click.echo(f"Resumed queue {queue!r}.")
    else:
        click.echo(f"Queue {queue!r} was not paused.")


@cli.group("schedule", invoke_without_command=True)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    metavar="N",
    help="Show the next N run times of each entry.",
)
@_json_option
@click.pass_context
def schedule_command(ctx: click.Context, count: int, as_json: bool) -> None:
    """Show the schedule setting's entries: next runs and the last occurrence's outcome.

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
    config = _config()
    _import_job_modules(config)
    entries = api.schedule_status(count=count)
    if as_json:
        _print_json([{**e.as_json(), "last_outcome": _last_outcome(e)} for e in entries])
        return
    if not entries:
        click.echo("No schedule entries (setting 'schedule').")
        return
    click.echo(
        table(
            ["JOB", "SCHEDULE", "NEXT RUNS", "LAST RUN AT", "LAST OUTCOME"],
            [
                [
                    e.entry.job,
                    e.description,
                    ", ".join(_time(moment) for moment in e.next_runs) or "-",
                    _time(e.last_run_at),
                    _last_outcome(e),
                ]
                for e in entries
            ],
        )
    )


def _last_outcome(entry: scheduler.EntryStatus) -> str:
    """PENDING, RUNNING, a result's status, or "-" when nothing was enqueued yet."""
    if entry.last_request_uuid is None:
        return "-"
    found = api.get(entry.last_request_uuid)
    if isinstance(found, JobResult):
        return str(found.status)
    if isinstance(found, JobProcess):
        return "RUNNING"
    return "PENDING" if found is not None else "-"


@schedule_command.command("check")
def schedule_check_command() -> None:
    """Validate the schedule entries (rules, job classes, parameters); exit 2 if one is bad.

    Needs no database: run it in CI or before a deploy.

    \b
    Example:
      errands --import myapp.jobs schedule check
    """
    config = _config()
    _import_job_modules(config)
    entries = scheduler.parse_entries(config.schedule, config.timezone)
    for entry in entries:
        click.echo(f"ok  {entry.job}: {entry.schedule.describe()}")
    click.echo(f"{len(entries)} schedule entries are valid.")


@cli.command("health")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="QUEUE",
    help="A queue some worker with a fresh heartbeat must serve (repeatable; default: any).",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Oldest heartbeat that counts as fresh [default: heartbeat_timeout].",
)
@_json_option
def health_command(queues: tuple[str, ...], max_age: float | None, as_json: bool) -> None:
    """Exit 0 when errands can work here, 1 with the reasons otherwise.

    Healthy: the database answers, errands' schema is current, and every
    QUEUE is served by a worker whose heartbeat is fresh (a worker started
    without --queue serves them all). For container liveness and readiness probes.

    \b
    Examples:
      errands health
      errands health --queue emails --queue default
      errands health --max-age 120 --json
    """
    config = _config()
    report = health.check_health(
        queues, backend=api.backend(), heartbeat_timeout=max_age or config.heartbeat_timeout
    )
    if as_json:
        _print_json(report.as_json())
    elif report.ok:
        workers = f"{report.workers_fresh} worker{'s' if report.workers_fresh != 1 else ''}"
        click.echo(
            f"ok: database reachable, schema version {report.schema_version}, "
            f"{workers} with a fresh heartbeat"
        )
    else:
        for reason in report.reasons:
            click.echo(f"unhealthy: {reason}", err=True)
    sys.exit(0 if report.ok else 1)


@cli.command("settings")
@_json_option
def settings_command(as_json: bool) -> None:
    """Show the effective settings and where each came from.

    \b
    Examples:
      errands settings
      ERRANDS_POLL_INTERVAL=0.5 errands settings --json
    """
    config = _config()
    values = settings.as_dict(config)
    # Secrets are never printed: the password in the URL, and the dashboard's password.
    if values.get("database_url"):
        values["database_url"] = redact_url(str(values["database_url"]))
    for secret in ("dashboard_password", "dashboard_secret_key"):
        if values.get(secret):
            values[secret] = "***"
    if as_json:
        _print_json(values)
        return
    rows = []
    for name, value in values.items():
        field_name = "import_modules" if name == "import" else name
        shown = list(value) if isinstance(value, tuple) else value
        if name == "worker_max_pending_per_process" and value is None:
            shown = "auto"
        if name == "database_url":
            shown = redact_url(str(value)) if value else '"" (sqlite:///errands.sqlite3)'
        rows.append([name, _field_text(shown), config.sources.get(field_name, "default")])
    click.echo(table(["SETTING", "VALUE", "SOURCE"], rows))


# -- run -------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _job_arguments(
    params: Sequence[str], args_json: str | None, params_json: str | None
) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if args_json is not None:
        try:
            parsed = json.loads(args_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
        if not isinstance(parsed, list):
            raise click.BadParameter(
                "expected a JSON array, e.g. '[42, \"x\"]'", param_hint="--args"
            )
        args = parsed
    if params_json is not None:
        try:
            parsed = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter(
                "expected a JSON object, e.g. '{\"user_id\": 42}'", param_hint="--params"
            )
        kwargs.update(parsed)
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--param")
        kwargs[name.strip()] = _parse_value(value)
    return args, kwargs


@cli.command("run")
@click.argument("job_class")
@click.option(
    "--param",
    "-p",
    "params",
    metavar="NAME=VALUE",
    multiple=True,
    help="A keyword argument of the job (repeatable). VALUE is read as JSON when it "
    "parses (42, true, [1,2], '\"42\"'), otherwise as a string.",
)
@click.option("--params", "params_json", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments as a JSON array.")
@click.option("--now", is_flag=True, help="Run it here and now, without a worker or database.")
@click.option("--queue", "-q", metavar="NAME", help="Enqueue on this queue (default: the job's).")
@click.option(
    "--delay", type=click.FloatRange(min=0), metavar="SECONDS", help="Run no sooner than this."
)
@click.option("--priority", type=int, help="Higher runs first (default: the job's).")
@click.option("--retries", type=click.IntRange(min=0), help="Attempts after a failure.")
@click.option("--concurrency-key", metavar="KEY", help="Default: the job's.")
def run_command(
    job_class: str,
    params: tuple[str, ...],
    params_json: str | None,
    args_json: str | None,
    now: bool,
    queue: str | None,
    delay: float | None,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
) -> None:
    """Enqueue one job (or run it right here with --now).

    JOB_CLASS is a registered class's dotted path, in a module of --import (the
    'import' setting) or inside one; no other module is imported. Prints the new
    request's uuid; with --now, runs the job in this process instead and prints
    its return value as JSON.

    \b
    Examples:
      errands --import myapp.jobs run myapp.jobs.SendWelcome --param user_id=42
      errands --import myapp.jobs run myapp.jobs.Resize --args '["cat.png", 640]' --delay 30
      errands --import myapp.jobs run myapp.jobs.SendWelcome --params '{"user_id": 42}' --now
    """
    from errands.registry import load_job_class

    config = _config()
    _import_job_modules(config)
    args, kwargs = _job_arguments(params, args_json, params_json)
    cls = load_job_class(job_class)
    try:
        job = cls(*args, **kwargs)
    except TypeError as exc:
        raise CliError(f"cannot build {job_class} with these arguments: {exc}") from None
    if now:
        _run_now(job, config)
        return
    request = job.run_in_worker(
        queue=queue,
        delay=delay,
        priority=priority,
        retries=retries,
        concurrency_key=concurrency_key,
    )
    if request is None:
        click.echo(
            f"Not enqueued: {job_class}.should_enqueue() declined "
            "(a job with the same concurrency key is pending or running).",
            err=True,
        )
        sys.exit(3)
    click.echo(str(request.uuid))


def _run_now(job: Any, config: settings.Settings) -> None:
    import traceback

    from errands import serialization
    from errands.worker.execution import build_handler

    handler = build_handler(config.middleware)
    try:
        value = handler(job)
    except DeferJob as deferral:
        click.echo(f"Deferred: the job asked to run again in {deferral.delay:g}s.", err=True)
        return
    except Exception as exc:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
        raise CliError(f"the job raised {type(exc).__name__}: {_one_line(str(exc))}") from None
    stored = serialization.encode(value, job_class=type(job).__name__, parameter="return value")
    if stored is not None:
        click.echo(json.dumps(stored, default=str))


# -- demo ------------------------------------------------------------------------------


@cli.command("demo")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the worker running after the demo's jobs finish, so you can enqueue "
    "more from another terminal; stop it with Ctrl-C.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="Give up if the demo's jobs have not finished by then.",
)
def demo_command(keep: bool, timeout: float) -> None:
    """Watch a worker run example jobs, then print a summary (no setup needed).

    Enqueues a few example jobs (successes, retries, a deferral, a delayed job,
    a duplicate skipped by its concurrency key, a failure), runs a worker in
    this process until each has its final result, and prints what happened.

    Uses the configured database: with no configuration, the SQLite file
    errands.sqlite3 in the working directory (created and migrated). The demo's
    jobs use their own queue, errands-demo, so other jobs are not touched.

    \b
    Examples:
      errands demo
      errands --database-url postgresql://postgres@127.0.0.1/postgres demo
    """
    from errands.demo import run_demo

    _config()
    code = run_demo(keep_running=keep, timeout=timeout)
    sys.exit(code)


# -- dashboard and queues ------------------------------------------------------------


@cli.command("dashboard")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but 127.0.0.1 lets other machines connect.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--password",
    metavar="TEXT",
    help="The login password [dashboard_password]. Prefer the environment variable "
    "ERRANDS_DASHBOARD_PASSWORD: a flag is visible to other users in `ps`.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="No login at all, for a dashboard on your own machine (127.0.0.1 only).",
)
@click.option(
    "--read-only",
    is_flag=True,
    default=None,
    help="Show everything but allow no action [dashboard_read_only].",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name browsers reach the dashboard by (repeatable) "
    "[dashboard_allowed_hosts]. Default: --host and the loopback names.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDRESS",
    help="A reverse proxy's address or network (repeatable) whose X-Forwarded-For, "
    "-Proto and -Host are believed [dashboard_trusted_proxies].",
)
def dashboard_command(
    host: str,
    port: int,
    password: str | None,
    insecure_no_auth: bool,
    read_only: bool | None,
    allowed_hosts: tuple[str, ...],
    trusted_proxies: tuple[str, ...],
) -> None:
    """Serve the web dashboard: queues, jobs, tracebacks, workers, schedules.

    Needs the dashboard extra: pip install 'errands[dashboard]'. Every page asks
    for the password (setting dashboard_password) unless --insecure-no-auth.
    To add the dashboard to your own ASGI application instead, mount
    errands.dashboard.create_app() (see the README).

    \b
    Examples:
      ERRANDS_DASHBOARD_PASSWORD=... errands dashboard
      errands dashboard --insecure-no-auth --port 9000
      ERRANDS_DASHBOARD_PASSWORD=... errands dashboard --host 0.0.0.0 --read-only \\
        --allowed-host ops.example.com --trusted-proxy 10.0.0.2
    """
    # An absent flag must not override the setting from the environment or pyproject.
    config = _apply(
        {
            "dashboard_password": password,
            "dashboard_read_only": read_only or None,
            "dashboard_allowed_hosts": list(allowed_hosts) or None,
            "dashboard_trusted_proxies": list(trusted_proxies) or None,
        }
    )
    _import_job_modules(config)  # retries rebuild jobs; schedules name their classes
    try:
        from errands import dashboard
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs its extra: pip install 'errands[dashboard]' ({exc})"
        ) from None
    _check_schema(config)
    click.echo(
        f"errands dashboard on http://{host}:{port}/ ({_describe_database(config)}); "
        "Ctrl-C stops it",
        err=True,
    )
    dashboard.serve(host, port, insecure_no_auth=insecure_no_auth)


@cli.group("queue", cls=ErrandsGroup)
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
    _config()
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
    _config()
    if api.resume_queue(name):
        click.echo(f"Resumed queue {name!r}.")
    else:
        click.echo(f"Queue {name!r} was not paused.")


@queue_group.command("paused")
def queue_paused_command() -> None:
    """List the paused queues, one per line."""
    _config()
    for name in api.paused_queues():
        click.echo(name)


# -- global options, also accepted after the command ------------------------------------


def _record_cli_values(ctx: click.Context, values: Mapping[str, Any]) -> None:
    root = ctx.find_root().meta.setdefault(_CLI_VALUES, {})
    root.update(values)
    settings.override_cli(values)


def _command_database_url(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        _record_cli_values(ctx, {"database_url": value})


def _command_imports(ctx: click.Context, _: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        before = ctx.find_root().meta.get(_CLI_VALUES, {}).get("import_modules") or ()
        _record_cli_values(ctx, {"import_modules": (*before, *value)})


def _accept_global_options(command: click.Command) -> None:
    """Let ``errands worker --import myapp.jobs`` mean ``errands --import myapp.jobs worker``."""
    command.params += [
        click.Option(
            ["--database-url"],
            metavar="URL",
            expose_value=False,
            callback=_command_database_url,
            help="Same as the global --database-url.",
        ),
        click.Option(
            ["--import", "command_imports"],
            metavar="MODULE",
            multiple=True,
            expose_value=False,
            callback=_command_imports,
            help="Same as the global --import (repeatable).",
        ),
    ]
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _accept_global_options(subcommand)


for _command in cli.commands.values():
    _accept_global_options(_command)


# -- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point of ``errands``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="errands")


if __name__ == "__main__":  # pragma: no cover
    main()
