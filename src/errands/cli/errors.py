"""How a command fails: one ``Error: ...`` line on stderr and an exit code, never a traceback.

The exit codes (also in the ``errands --help`` epilog, :data:`EXIT_CODES`):
1 is a failed operation (no such job, a database error, a job module that does not
import); 2 is a setup problem the user must fix first (bad settings, a database
without errands' schema); 3 is ``errands run`` declined by ``should_enqueue``;
4 is ``errands dashboard`` unable to listen on its address (the port is in use).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg

from errands.errors import ConfigurationError, ErrandsError, SchemaOutOfDate


class CliError(click.ClickException):
    """A one-line ``Error: ...`` on stderr and exit code 1; never a traceback."""


class SetupError(CliError):
    """Like CliError, with exit code 2: bad settings or a database without the schema."""

    exit_code = 2


class ListenError(CliError):
    """Like CliError, with exit code 4: ``errands dashboard`` cannot listen on its
    address (the port is in use, the address is not this machine's)."""

    exit_code = 4


#: Shown at the end of ``errands --help``.
EXIT_CODES = (
    "Exit codes: 0 success; 1 an operation failed (not found, a database error, a job "
    "module that does not import); 2 bad input or configuration (a bad setting, a "
    "missing schema: run `errands migrate`); 3 `run` was declined by should_enqueue; "
    "4 `dashboard` cannot listen on its address (the port is in use)."
)


class ErrandsGroup(click.Group):
    """A command group whose commands fail through :func:`friendly_errors`."""

    def invoke(self, ctx: click.Context) -> Any:
        with friendly_errors():
            return super().invoke(ctx)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn errands' own and database errors into ``Error: ...`` lines."""
    try:
        yield
    except click.ClickException:
        raise
    except SchemaOutOfDate as exc:
        raise SetupError(_schema_message(exc)) from None
    except ConfigurationError as exc:
        raise SetupError(one_line(str(exc))) from None
    except ErrandsError as exc:
        raise CliError(one_line(str(exc))) from None
    except (psycopg.Error, sqlite3.Error) as exc:
        raise _database_error(exc) from None


def _database_error(exc: Exception) -> CliError:
    message = one_line(str(exc))
    if "errands_" in message and ("does not exist" in message or "no such table" in message):
        return SetupError(_schema_message(exc))
    return CliError(f"database error: {message}")


def _schema_message(exc: Exception) -> str:
    message = one_line(str(exc)) or "the database has no errands tables"
    if "errands migrate" not in message:
        message += "; run `errands migrate` to create or upgrade errands' tables"
    return message
