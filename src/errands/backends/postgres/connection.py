"""Connections to PostgreSQL: the pools, the settings of worker connections, running
named statements, and psycopg's errors as errands' own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from errands.backends.postgres import arrays as postgres_arrays
from errands.backends.sql import rows as poison
from errands.backends.sql.files import load_queries
from errands.errors import BackendError, SchemaOutOfDate
from errands.redaction import redact_text, redact_url

logger = logging.getLogger("errands")

Row = dict[str, Any]
Connection = psycopg.Connection[Any]

MAX_CONNECTIONS = 4
WORKER_CONNECTIONS = 2  # a worker claims on one thread and writes outcomes from another
VACUUM_AFTER_CLAIMS = 1_000  # at least; see PostgresBackend._vacuum_queue_if_due
CONNECTION_WAIT_SECONDS = 10.0  # how long an operation waits for a pooled connection
LISTEN_POLL_SECONDS = 0.25  # how often the listener thread checks whether to stop
LISTEN_MAX_BACKOFF_SECONDS = 5.0
# Enqueue batches of at least this many jobs go through COPY (see copy_requests):
# below it, one INSERT statement is fewer round trips.
COPY_THRESHOLD = 100


def queries() -> dict[str, str]:
    return load_queries("postgres")


# -- running statements ------------------------------------------------------------


def fetch(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
    """Rows of the named query (none for a statement that returns no rows)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(queries()[name], params)
        if not cursor.description:
            return []
        try:
            return cursor.fetchall()
        except Exception:  # a poison row (see rows.py): its statement has run
            return poison.salvage_dicts(cursor)


def configure_worker_connection(conn: Connection) -> None:
    """Plan the worker's claims and writes once per connection, not at every execution.

    PostgreSQL plans a prepared statement again for its parameters until a generic
    plan looks as cheap; for the claim and the completion it never does (their
    parameters size the batch), so each execution paid 0.3 to 0.5 ms of planning,
    more than the work itself for a small batch. Their generic plans read the same
    indexes. Only the worker's connections do this: listings with optional filters
    need their custom plans.

    No JIT: a generic plan is costed for a tenth of the table (it cannot see the
    LIMIT), which on a long queue crosses ``jit_above_cost``, and compiling then
    takes hundreds of milliseconds for a statement that runs in one.

    Times in UTC: psycopg then returns them in ``datetime.UTC`` already, and the
    rows become models without a conversion per field.

    The batches' columns go as arrays framed by errands (``postgres_arrays``).
    """
    postgres_arrays.register(conn)
    poison.bound_json(conn)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("SET jit = off")
    conn.execute("SET TimeZone = 'UTC'")


def fetch_tuples(conn: Connection, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of the named query as tuples, in binary: for the worker's hot queries,
    whose rows become models by position (a third of the cost of ``fetch``)."""
    with conn.cursor(binary=True) as cursor:
        cursor.execute(queries()[name], params)
        try:
            return cursor.fetchall()
        except Exception:  # a poison row (see rows.py): its statement has run
            return poison.salvage_tuples(cursor)


def execute(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> int:
    """Run the named statement; return how many rows it touched."""
    with conn.cursor() as cursor:
        cursor.execute(queries()[name], params)
        return cursor.rowcount


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn psycopg's errors about a missing schema or server into errands' own."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise SchemaOutOfDate(
            f"the errands tables are missing or outdated in {redact_url(url)}: "
            f"run `errands migrate` ({exc.diag.message_primary})"
        ) from exc
    except PoolTimeout as exc:
        raise BackendError(
            f"cannot connect to the database {redact_url(url)} "
            f"(the connection pool's log warnings give the reason): {redact_text(str(exc), url)}"
        ) from exc
    except psycopg.OperationalError as exc:
        raise BackendError(
            f"cannot use the database {redact_url(url)}: {redact_text(str(exc), url)}"
        ) from exc


class PostgresSession:
    """Named statements on one connection (see ``errands.backends.sql.codec.Session``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def rows(self, name: str, params: Mapping[str, Any] | None = None, /) -> list[Row]:
        return fetch(self.conn, name, params)

    def run(self, name: str, params: Mapping[str, Any] | None = None, /) -> int:
        return execute(self.conn, name, params)
