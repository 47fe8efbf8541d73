"""Commands for setting errands up and checking on it: migrate, health, settings."""

from __future__ import annotations

import sys
from typing import Any

import click

from errands import api, health, settings
from errands.cli import configuration
from errands.cli.options import json_option
from errands.cli.output import field_text, print_json, table
from errands.redaction import redact_url

#: Settings never printed, not even by `errands settings`.
SECRET_SETTINGS = ("dashboard_password", "dashboard_secret_key")


@click.command("migrate")
@click.option("--sql", "print_sql", is_flag=True, help="Print the SQL instead of running it.")
def migrate_command(print_sql: bool) -> None:
    """Create or upgrade errands' tables in the configured database.

    Safe to run repeatedly and from several hosts at once: versions already
    applied are skipped.

    \b
    Examples:
      errands migrate
      errands --database-url postgresql://app@db/app migrate
      errands migrate --sql > errands.sql    # for your own migration tool
    """
    config = configuration.current()
    backend = api.backend()
    if print_sql:
        click.echo(backend.migration_sql().rstrip())
        return
    applied = backend.migrate()
    where = configuration.describe_database(config)
    if applied:
        versions = ", ".join(str(v) for v in applied)
        click.echo(f"Applied schema version(s) {versions} to {where}.")
    else:
        click.echo(
            f"Schema already up to date (version {backend.latest_schema_version()}) in {where}."
        )


@click.command("health")
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
@json_option
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
    config = configuration.current()
    report = health.check_health(
        queues, backend=api.backend(), heartbeat_timeout=max_age or config.heartbeat_timeout
    )
    if as_json:
        print_json(report.as_json())
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


@click.command("settings")
@json_option
def settings_command(as_json: bool) -> None:
    """Show the effective settings and where each came from.

    \b
    Examples:
      errands settings
      ERRANDS_POLL_INTERVAL=0.5 errands settings --json
    """
    config = configuration.current()
    values = _printable_settings(config)
    if as_json:
        print_json(values)
        return
    rows = [
        [name, field_text(_shown(name, value)), config.sources.get(_field_name(name), "default")]
        for name, value in values.items()
    ]
    click.echo(table(["SETTING", "VALUE", "SOURCE"], rows))


COMMANDS = [migrate_command, health_command, settings_command]


def _printable_settings(config: settings.Settings) -> dict[str, Any]:
    """The settings by name, secrets hidden: the URL's password, the dashboard's secrets."""
    values = settings.as_dict(config)
    for url in ("database_url", "listen_database_url"):
        if values.get(url):
            values[url] = redact_url(str(values[url]))
    for secret in SECRET_SETTINGS:
        if values.get(secret):
            values[secret] = "***"
    return values


def _shown(name: str, value: Any) -> Any:
    """A setting's value as the table shows it: lists, "auto", the default database."""
    if name == "worker_max_pending_per_process" and value is None:
        return "auto"
    if name == "database_url":
        return redact_url(str(value)) if value else '"" (sqlite:///errands.sqlite3)'
    if name == "listen_database_url" and value:
        return redact_url(str(value))
    return list(value) if isinstance(value, tuple) else value


def _field_name(name: str) -> str:
    """The Settings field a setting name is stored in (the ``import`` setting's differs)."""
    return "import_modules" if name == "import" else name
