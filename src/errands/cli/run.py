"""``errands run``: enqueue one job from the command line, or run it here with --now."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from errands import settings
from errands.cli import configuration
from errands.cli.errors import CliError, one_line
from errands.errors import DeferJob
from errands.jobs import EnqueueOptions, enqueue_many

#: The ``source`` of the jobs ``errands run`` enqueues.
RUN_SOURCE = "cli:errands run"


@click.command("run")
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
    config = configuration.current()
    configuration.import_job_modules(config)
    job = _build_job(job_class, *_job_arguments(params, args_json, params_json))
    if now:
        _run_now(job, config)
        return
    options = EnqueueOptions(
        queue=queue,
        delay=delay,
        priority=priority,
        retries=retries,
        concurrency_key=concurrency_key,
        source=RUN_SOURCE,
    )
    [request] = enqueue_many([job], options=options)
    if request is None:
        click.echo(
            f"Not enqueued: {job_class}.should_enqueue() declined "
            "(a job with the same concurrency key is pending or running).",
            err=True,
        )
        sys.exit(3)
    click.echo(str(request.uuid))


# -- the job's arguments -------------------------------------------------------------------


def _job_arguments(
    params: Sequence[str], args_json: str | None, params_json: str | None
) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from --args, --params and each --param."""
    args = _json_of_type(args_json, list, "--args", "a JSON array, e.g. '[42, \"x\"]'")
    example = "a JSON object, e.g. '{\"user_id\": 42}'"
    kwargs = dict(_json_of_type(params_json, dict, "--params", example) or {})
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--param")
        kwargs[name.strip()] = _parse_value(value)
    return args or [], kwargs


def _json_of_type(text: str | None, kind: type, option: str, example: str) -> Any:
    """The option's JSON value, which must be of ``kind``; None when not given."""
    if text is None:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"expected {example}", param_hint=option)
    return parsed


def _parse_value(text: str) -> Any:
    """A --param value: JSON when it parses, otherwise the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _build_job(job_class: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    from errands.registry import load_job_class

    cls = load_job_class(job_class)
    try:
        return cls(*args, **kwargs)
    except TypeError as exc:
        raise CliError(f"cannot build {job_class} with these arguments: {exc}") from None


# -- --now ---------------------------------------------------------------------------------


def _run_now(job: Any, config: settings.Settings) -> None:
    """Run the job through the middleware in this process; print its return value as JSON."""
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
        raise CliError(f"the job raised {type(exc).__name__}: {one_line(str(exc))}") from None
    stored = serialization.encode(value, job_class=type(job).__name__, parameter="return value")
    if stored is not None:
        click.echo(json.dumps(stored, default=str))
