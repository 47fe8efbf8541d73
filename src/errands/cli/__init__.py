"""The ``errands`` command: migrate, run workers, inspect and operate the queue.

The group and its global options live here; each command group has its module:

- :mod:`~errands.cli.worker`: ``worker`` (and its ``--reload``)
- :mod:`~errands.cli.listing`: ``requests``, ``processes``, ``results``, ``get``,
  ``stats``, ``workers`` (read only)
- :mod:`~errands.cli.operations`: ``retry``, ``cancel``, ``purge``, ``pause``,
  ``resume``, ``queue``
- :mod:`~errands.cli.deployment`: ``migrate``, ``health``, ``settings``
- :mod:`~errands.cli.schedules`: ``schedule``, ``schedule check``
- :mod:`~errands.cli.workflow`: ``workflow`` (and its ``--cancel``), ``workflows``
- :mod:`~errands.cli.run`, :mod:`~errands.cli.demo`, :mod:`~errands.cli.dashboard`,
  :mod:`~errands.cli.why`, :mod:`~errands.cli.check`: one command each

Shared by them: :mod:`~errands.cli.errors` (how a command fails),
:mod:`~errands.cli.configuration` (settings, job modules, schema check),
:mod:`~errands.cli.options` and :mod:`~errands.cli.output`.

Nothing in errands imports this package (contrib/django wraps it); it only calls
the public API, the settings and the worker.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from errands import settings
from errands.cli import (
    check,
    configuration,
    dashboard,
    demo,
    deployment,
    limits,
    listing,
    operations,
    options,
    run,
    schedules,
    why,
    worker,
    workflow,
)
from errands.cli.errors import EXIT_CODES, ErrandsGroup
from errands.logs import configure_logging

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}


@click.group(cls=ErrandsGroup, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES)
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
      errands why UUID                      why a job is waiting, running or done
      errands stats                         queue counts and workers at a glance

    Settings come from flags, ERRANDS_* environment variables, [tool.errands]
    in ./pyproject.toml, or errands.configure(); see `errands settings`. An
    ERRANDS_* variable that names no setting is ignored with a warning.
    Run `errands COMMAND --help` for a command's options and examples.
    """
    settings.reset()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    values = {
        "database_url": database_url,
        "import_modules": tuple(import_modules) if import_modules else None,
    }
    click.get_current_context().meta[options.CLI_VALUES] = values
    settings.override_cli(values)
    configuration.warn_unknown_environment()
    # Warnings of errands' own (e.g. a failing on_aborted hook) print as log lines;
    # `errands worker` reconfigures from the log_* settings. The connection pool's
    # retry warnings are dropped: a connection failure ends as one `Error:` line.
    configure_logging("WARNING", "text")
    logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


COMMANDS: list[click.Command] = [
    *deployment.COMMANDS,
    worker.worker_command,
    *listing.COMMANDS,
    limits.limits_command,
    *operations.COMMANDS,
    schedules.schedule_command,
    run.run_command,
    demo.demo_command,
    dashboard.dashboard_command,
    why.why_command,
    check.check_command,
    *workflow.COMMANDS,
]
for _command in COMMANDS:
    options.accept_global_options(_command)
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point of ``errands``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="errands")
