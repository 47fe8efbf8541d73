"""How a command fails: one ``Error: ...`` line on stderr and an exit code, never a traceback.

Exit code 1 is a failed operation (no such job, a database error); exit code 2
is a setup problem the user must fix first (bad settings, a database without
errands' schema).
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
