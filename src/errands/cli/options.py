"""Options several commands share, and the global options every command also accepts."""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from errands import api, settings
from errands.cli.errors import CliError
from errands.models import Status

F = TypeVar("F", bound=Callable[..., Any])

STATUS_NAMES = [s.value for s in Status]
#: Key in the root context's meta: the global flags given so far (None = not given).
CLI_VALUES = "errands.cli_values"


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def filter_options(*, status: bool) -> Callable[[F], F]:
    """--queue, --tag, --job-class, --concurrency-key, --limit, --json (and --status for
    results)."""

    def decorate(f: F) -> F:
        f = json_option(f)
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
        f = click.option("--tag", metavar="TAG", help="Only jobs carrying this tag.")(f)
        f = click.option("--queue", "-q", metavar="NAME", help="Only this queue.")(f)
        return f

    return decorate


def parse_uuid(value: str) -> uuid_module.UUID:
    """A whole uuid, or the one job uuid that a prefix of 6 or more hex characters
    starts (as the dashboard shows them); call after ``configuration.current()``."""
    try:
        key = api.resolve_uuid(value)
    except (api.AmbiguousUuid, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="UUID") from None
    if key is None:
        raise CliError(f"no job has a uuid starting with {value.strip()}")
    return key


# -- global options, also accepted after the command ------------------------------------


def accept_global_options(command: click.Command) -> None:
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
            accept_global_options(subcommand)


def _record_cli_values(ctx: click.Context, values: Mapping[str, Any]) -> None:
    root = ctx.find_root().meta.setdefault(CLI_VALUES, {})
    root.update(values)
    settings.override_cli(values)


def _command_database_url(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        _record_cli_values(ctx, {"database_url": value})


def _command_imports(ctx: click.Context, _: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        before = ctx.find_root().meta.get(CLI_VALUES, {}).get("import_modules") or ()
        _record_cli_values(ctx, {"import_modules": (*before, *value)})
