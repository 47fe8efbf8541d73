"""Connections to PostgreSQL: the pools, the settings of worker connections, running
named statements, and psycopg's errors as errands' own."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import select
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from errands.backends.postgres import arrays as postgres_arrays
from errands.backends.sql import rows as poison
from errands.backends.sql.files import load_queries
from errands.errors import BackendError, ConfigurationError, SchemaOutOfDate
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
PROBE_CONNECT_SECONDS = 2  # libpq's connect_timeout of the first connection (its minimum)

# The pool logs every failed connection attempt at WARNING, and without a handler of
# the application's, Python prints each on stderr: an outage would print one every
# few seconds. errands reports the reason itself (the error of the call that failed,
# and the worker's "database unavailable" line), so these need no printing of their
# own; an application that configures logging still gets them.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


@functools.cache
def queries(schema: str = "") -> dict[str, str]:
    """The named statements of ``queries.sql``, for the ``schema`` setting's schema."""
    loaded = load_queries("postgres")
    if not schema:
        return loaded
    return {name: in_schema(statement, schema) for name, statement in loaded.items()}


# -- a schema of the user's choice (the ``schema`` setting) ----------------------------
#
# Every connection errands opens runs with search_path = the schema (libpq's
# ``options``; behind a transaction pooler, which refuses that startup parameter,
# the role's own search_path, checked by ``check_search_path``), so the SQL files
# name tables and functions unqualified, trigger functions included. What the
# search_path cannot separate is global to the database: notification channels
# and advisory lock keys. The SQL files write errands' own (errands_jobs,
# errands_results, 'errands.slot', 'errands.limit:'), and ``in_schema`` gives each
# schema its own names when a file is loaded, migrations included (a trigger
# function then notifies its schema's channel). The migration lock stays common.

_PER_SCHEMA = re.compile(r"\berrands_(jobs|results)\b|'errands\.(slot|limit:)")


def in_schema(sql: str, schema: str) -> str:
    """``sql`` with errands' database-wide names (channels, lock keys) made ``schema``'s."""
    if not schema:
        return sql

    def rename(match: re.Match[str]) -> str:
        channel, lock = match.groups()
        return f"{schema}_{channel}" if channel else f"'{schema}.{lock}"

    return _PER_SCHEMA.sub(rename, sql)


def channel(schema: str, kind: str) -> str:
    """The notification channel of ``kind`` ("jobs", "results") for ``schema``."""
    return f"{schema or 'errands'}_{kind}"


#: The schema of each connection errands runs statements on (none: "", the
#: search_path's); ``statements`` picks the SQL for it.
_schema_of: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def statements(conn: Any) -> dict[str, str]:
    """The named statements for the schema of ``conn`` (see ``set_schema``)."""
    return queries(_schema_of.get(conn, ""))


def schema_of(conn: Any) -> str:
    """The schema ``conn`` runs errands' statements for ("": the search_path's)."""
    return _schema_of.get(conn, "")


def set_schema(conn: Any, schema: str) -> str:
    """Run errands' statements on ``conn`` for ``schema``; returns the one before."""
    previous = _schema_of.get(conn, "")
    if schema:
        _schema_of[conn] = schema
    else:
        _schema_of.pop(conn, None)
    return previous


#: On a caller's connection, inside errands' savepoint: ``schema`` as the search_path
#: (SET LOCAL) and the one before, which ``LEAVE_SCHEMA`` puts back (a search_path set
#: for the caller's transaction is the caller's again after the enqueue).
ENTER_SCHEMA = (
    "SELECT p.previous, set_config('search_path', %(schema)s, true) AS search_path "
    "FROM (SELECT current_setting('search_path') AS previous OFFSET 0) AS p"
)
LEAVE_SCHEMA = "SELECT set_config('search_path', %(previous)s, true)"


def schema_options(url: str, schema: str, pooler: str) -> dict[str, Any]:
    """libpq's ``options`` that give a connection ``schema`` as its search_path, added
    to the URL's own; none without a schema, or behind a transaction pooler
    (PgBouncer refuses ``options``, or drops it if told to ignore it)."""
    if not schema or pooler == TRANSACTION_POOLER:
        return {}
    given = conninfo_to_dict(url).get("options") or ""
    return {"options": f"{given} -c search_path={schema}".strip()}


Configure = Callable[[Connection], None]


def schema_setup(
    url: str, schema: str, pooler: str, configure: Configure | None
) -> tuple[dict[str, Any], Configure | None, Configure | None]:
    """For a pool of ``schema``'s connections: the libpq parameters, the check of its
    first connection (behind a transaction pooler: check_search_path), and the
    ``configure`` of each connection (which also records its schema)."""
    if not schema:
        return {}, None, configure

    def configure_in_schema(conn: Connection) -> None:
        set_schema(conn, schema)
        if configure is not None:
            configure(conn)

    def check(conn: Connection) -> None:
        check_search_path(conn, schema, url)

    pooled = pooler == TRANSACTION_POOLER
    return schema_options(url, schema, pooler), check if pooled else None, configure_in_schema


def create_schema(conn: Connection, schema: str) -> None:
    """``schema`` made if missing (a schema an administrator made needs no CREATE
    privilege on the database), and the search_path of this transaction (``migrate``'s,
    which may pass through a pooler)."""
    missing = conn.execute("SELECT to_regnamespace(%s) IS NULL", [schema]).fetchone()
    if missing and missing[0]:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute("SELECT set_config('search_path', %s, true)", [schema])


def schema_script(schema: str) -> list[str]:
    """What ``errands migrate --sql`` prints first for ``schema`` (nothing without one)."""
    if not schema:
        return []
    return [f'CREATE SCHEMA IF NOT EXISTS "{schema}";\nSET search_path = "{schema}";']


def check_search_path(conn: Connection, schema: str, url: str) -> None:
    """Behind a transaction pooler, errands cannot set the search_path: the role (or
    the database, or the pooler's ``connect_query``) must, and this checks it does."""
    row = conn.execute("SELECT current_setting('search_path'), current_user").fetchone()
    path, user = row if row is not None else ("", "")
    first = path.split(",")[0].strip().strip('"')
    if (user if first == "$user" else first) != schema:
        raise ConfigurationError(
            f"schema is {schema!r}, but connections to {redact_url(url)} have search_path "
            f'{path!r}: behind a transaction pooler (database_pooler = "transaction") '
            "errands cannot set it per connection; give the role its own: "
            f"ALTER ROLE {user} SET search_path = {schema}"
        )


# -- running statements ------------------------------------------------------------


def fetch(
    conn: Connection,
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    prepare: bool | None = None,
) -> list[Row]:
    """Rows of the named query (none for a statement that returns no rows).

    ``prepare=False`` plans the statement for its parameters each time: a prepared
    statement's generic plan, made without them, can be far worse (see claim_limited).
    """
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(statements(conn)[name], params, prepare=prepare)
        if not cursor.description:
            return []
        try:
            return cursor.fetchall()
        except Exception:  # a poison row (see rows.py): its statement has run
            return poison.salvage_dicts(cursor)


# -- behind a transaction pooler ------------------------------------------------------
#
# A pooler in transaction mode (PgBouncer's pool_mode = transaction) hands each
# transaction to any of its server connections: nothing may outlive a transaction.
# Prepared statements would be missing on the next server connection (PgBouncer
# before 1.21 does not track them), and a SET would stay on a server connection that
# other clients use next. errands' advisory locks are all transaction-scoped
# (pg_advisory_xact_lock, pg_try_advisory_xact_lock) and it makes no temporary tables;
# LISTEN needs a session, so it goes to ``listen_database_url`` or is not used.

TRANSACTION_POOLER = "transaction"


def session_options(pooler: str) -> dict[str, Any]:
    """psycopg options of every connection errands opens to ``database_url``: behind a
    transaction pooler, statements are never prepared (psycopg prepares a statement
    after ``prepare_threshold`` executions on a connection; None: never)."""
    return {"prepare_threshold": None} if pooler == TRANSACTION_POOLER else {}


def worker_configuration(
    statement_timeout: float | None, *, pooler: str = "none"
) -> Callable[[Connection], None]:
    """``configure_worker_connection``, and a ``statement_timeout`` (seconds) on each of
    the worker's statements when given.

    Behind a transaction pooler, no session setting but the time zone (see
    ``configure_pooled_connection``): the server does not end a worker's statement
    that runs longer than ``statement_timeout``; the client's deadline (Deadlines)
    still cuts the call off. PgBouncer's ``query_timeout``, or a ``statement_timeout``
    set on the role, does the server's part there."""

    def configure(conn: Connection) -> None:
        if pooler == TRANSACTION_POOLER:
            configure_pooled_connection(conn)
            return
        configure_worker_connection(conn)
        if statement_timeout:
            execute(conn, "worker_statement_timeout", {"ms": int(statement_timeout * 1000)})

    return configure


def configure_pooled_connection(conn: Connection) -> None:
    """``configure_worker_connection`` behind a transaction pooler: the client's side
    only, and the time zone. PgBouncer tracks TimeZone per client (it reports it with
    client_encoding, DateStyle and standard_conforming_strings) and sets it again
    on every server connection it links the client to, so it is no session state
    left to others. Without prepared statements, plan_cache_mode and jit have nothing
    to do (every statement is planned for its parameters, its LIMIT included)."""
    postgres_arrays.register(conn)
    poison.bound_json(conn)
    conn.execute("SET TimeZone = 'UTC'")


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


def fetch_tuples(
    conn: Connection, name: str, params: Mapping[str, Any], *, prepare: bool | None = None
) -> list[tuple[Any, ...]]:
    """Rows of the named query as tuples, in binary: for the worker's hot queries,
    whose rows become models by position (a third of the cost of ``fetch``)."""
    with conn.cursor(binary=True) as cursor:
        cursor.execute(statements(conn)[name], params, prepare=prepare)
        try:
            return cursor.fetchall()
        except Exception:  # a poison row (see rows.py): its statement has run
            return poison.salvage_tuples(cursor)


def execute(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> int:
    """Run the named statement; return how many rows it touched."""
    with conn.cursor() as cursor:
        cursor.execute(statements(conn)[name], params)
        return cursor.rowcount


def reason(exc: BaseException, url: str) -> str:
    """What a driver's error says, on one line, passwords masked."""
    return " ".join(redact_text(str(exc), url).split()) or type(exc).__name__


@contextlib.contextmanager
def database_errors(
    url: str, last_error: Callable[[], BaseException | None] | None = None
) -> Iterator[None]:
    """Turn psycopg's errors about a missing schema or server into errands' own.

    ``last_error``: the pool's last failed connection attempt, the reason a wait
    for a pooled connection timed out."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise SchemaOutOfDate(
            f"the errands tables are missing or outdated in {redact_url(url)}: "
            f"run `errands migrate` ({exc.diag.message_primary})"
        ) from exc
    except PoolTimeout as exc:
        cause = last_error() if last_error is not None else None
        why = reason(cause, url) if cause is not None else f"{reason(exc, url)} (all in use)"
        raise BackendError(f"cannot connect to the database {redact_url(url)}: {why}") from exc
    except psycopg.OperationalError as exc:
        raise BackendError(
            f"cannot use the database {redact_url(url)}: {reason(exc, url)}"
        ) from exc


# -- connecting: bounded times -----------------------------------------------------------


def connection_parameters(url: str, timeout: float) -> dict[str, Any]:
    """libpq parameters that bound how long a dead server or connection goes unnoticed,
    ``timeout`` seconds (the ``database_timeout`` setting) or about that:

    * ``connect_timeout``: a connection attempt gives up after ``timeout``;
    * ``tcp_user_timeout``: data sent and not acknowledged for ``timeout`` (packets
      dropped by a partition, a host that vanished) closes the connection;
    * TCP keepalives: an idle connection is probed after ``timeout / 2`` of silence,
      then every ``timeout / 6``, and closed after 3 probes without an answer.

    Parameters the URL gives itself are left as it gives them."""
    given = conninfo_to_dict(url)
    seconds = max(timeout, 1.0)
    wanted: dict[str, Any] = {
        "connect_timeout": max(PROBE_CONNECT_SECONDS, math.ceil(seconds)),
        "tcp_user_timeout": int(seconds * 1000),
        "keepalives": 1,
        "keepalives_idle": max(1, round(seconds / 2)),
        "keepalives_interval": max(1, round(seconds / 6)),
        "keepalives_count": 3,
    }
    return {key: value for key, value in wanted.items() if key not in given}


def probe(
    url: str, parameters: Mapping[str, Any], check: Callable[[Connection], None] | None = None
) -> None:
    """Connect once, directly, and raise a BackendError with the server's reason if that
    fails: an unreachable server, an unknown host, a missing database, a wrong user or
    password are said at once (within ``PROBE_CONNECT_SECONDS`` for a server that does not
    answer), instead of after the pool's wait for a connection."""
    options = dict(parameters)
    if "connect_timeout" not in conninfo_to_dict(url):
        options["connect_timeout"] = PROBE_CONNECT_SECONDS
    try:
        with psycopg.connect(url, **options) as conn:
            if check is not None:  # what every connection must have (check_search_path)
                check(conn)
    except psycopg.Error as exc:
        raise BackendError(
            f"cannot connect to the database {redact_url(url)}: {reason(exc, url)}"
        ) from exc


class Pool(ConnectionPool[Connection]):
    """A psycopg pool that remembers why its last connection attempt failed (its
    waits time out without saying it)."""

    last_error: BaseException | None = None

    def _connect(self, timeout: float | None = None) -> Connection:
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return conn


def check_idle(conn: Connection) -> None:
    """The pool's check of a connection it hands out: one the server closed while it
    was idle (a restart, an administrator's terminate) is replaced instead of failing
    the caller's statement. Costs a poll of its socket; a round trip only when the
    server said something while the connection was idle (it is closing it)."""
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        Pool.check_connection(conn)


class PostgresSession:
    """Named statements on one connection (see ``errands.backends.sql.codec.Session``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def rows(self, name: str, params: Mapping[str, Any] | None = None, /) -> list[Row]:
        return fetch(self.conn, name, params)

    def run(self, name: str, params: Mapping[str, Any] | None = None, /) -> int:
        return execute(self.conn, name, params)
