"""What a command needs before it works: the settings, the job modules, a current schema.

Every command loads the settings through :func:`current` (or :func:`apply`, to
add its own flags first), so a bad setting ends as one ``Error:`` line, exit 2.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import click

from errands import api, settings
from errands.backends import DEFAULT_URL, Backend
from errands.cli.errors import CliError, SetupError, friendly_errors
from errands.redaction import redact_url


def current() -> settings.Settings:
    """The effective settings, checked."""
    with friendly_errors():
        return settings.current()


def apply(values: Mapping[str, Any]) -> settings.Settings:
    """Add command-line values (None = not given) and load the settings, checking them."""
    settings.override_cli(values)
    return current()


def warn_unknown_environment() -> None:
    """A warning on stderr for each ``ERRANDS_*`` variable that names no setting (a typo
    would otherwise be ignored in silence, e.g. the database falling back to SQLite)."""
    for variable, guess in settings.unknown_environment():
        hint = f"did you mean {guess}?" if guess else "`errands settings` lists the settings"
        click.echo(f"Warning: {variable} is not an errands setting (ignored); {hint}", err=True)


def import_job_modules(config: settings.Settings) -> list[str]:
    """Import the modules of the ``import`` setting so their job classes register.

    A module that fails to import (a SyntaxError, an exception at import) ends as two
    lines naming the module, the file and line, and the error; the traceback is printed
    too when the log level is DEBUG.
    """
    from errands.registry import describe_import_failure, import_job_modules

    for module in config.import_modules:
        try:
            import_job_modules([module])  # stored paths may import only inside these
        except Exception as exc:
            if config.log_level == "DEBUG":
                traceback.print_exception(exc, file=sys.stderr)
            where, error = describe_import_failure(module, exc)
            message = f"cannot import module {module!r} (from --import / setting 'import'): {error}"
            if where:
                message += f"\n  {where}"
            if config.log_level != "DEBUG" and where:
                message += f" (full traceback with {_debug_hint()})"
            raise CliError(message) from None
    return list(config.import_modules)


def _debug_hint() -> str:
    context = click.get_current_context(silent=True)
    if context is not None and context.info_name == "worker":
        return "--log-level DEBUG"
    return "ERRANDS_LOG_LEVEL=DEBUG"


def describe_database(config: settings.Settings) -> str:
    """The database in words, without its password: ``sqlite /abs/path`` or a redacted URL."""
    url = config.database_url or DEFAULT_URL
    if not url.startswith("sqlite:"):
        return f"postgresql {redact_url(url)}"
    path = url.removeprefix("sqlite:").removeprefix("//")
    path = path[1:] if path.startswith("/") and not path.startswith("//") else path
    shown = os.path.abspath(path) if path else path
    if not config.database_url:
        return f"sqlite {shown} (default; set --database-url or ERRANDS_DATABASE_URL)"
    return f"sqlite {shown}"


def check_schema(config: settings.Settings) -> Backend:
    """The configured backend, after checking that ``errands migrate`` has run."""
    with friendly_errors():
        backend = api.backend()
        version = backend.schema_version()
        latest = backend.latest_schema_version()
    if version is None or version < latest:
        found = "no errands tables" if version is None else f"schema version {version}"
        raise SetupError(
            f"the database ({describe_database(config)}) has {found}, "
            f"this errands needs version {latest}; run `errands migrate` first"
        )
    return backend


def errands_version() -> str:
    """The installed errands' version, or "unknown" when running from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("errands")
    except PackageNotFoundError:
        return "unknown"
