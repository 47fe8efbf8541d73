"""The pools of connections to PostgreSQL, and their first connection: made directly,
so that a server that cannot be reached says why at once, then handed to the pool."""

from __future__ import annotations

import select
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from errands.backends.postgres.connection import PROBE_CONNECT_SECONDS, Connection, reason
from errands.errors import BackendError
from errands.redaction import redact_url


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


def first_connection(
    url: str, kwargs: Mapping[str, Any], check: Callable[[Connection], None] | None = None
) -> Connection:
    """A pool's first connection, made directly (see ``Pool.hand_over``): like ``probe``,
    a failure says the server's reason at once, and a success is not thrown away (a
    second connection made by the pool would cost the first call a round of connecting).
    """
    options = dict(kwargs)
    if "connect_timeout" not in conninfo_to_dict(url):
        options["connect_timeout"] = PROBE_CONNECT_SECONDS
    conn: Connection | None = None
    try:
        conn = psycopg.connect(url, **options)
        if check is not None:  # what every connection must have (check_search_path)
            check(conn)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, psycopg.Error):
            raise BackendError(
                f"cannot connect to the database {redact_url(url)}: {reason(exc, url)}"
            ) from exc
        raise
    return conn


#: Whether this psycopg_pool has the private step ``Pool._adopt`` repeats after
#: connecting (3.2 and 3.3 do); without it the first connection is not handed over.
ADOPTS = hasattr(ConnectionPool, "_set_connection_expiry_date")


class Pool(ConnectionPool[Connection]):
    """A psycopg pool that remembers why its last connection attempt failed (its
    waits time out without saying it), and can start with a connection made for it."""

    last_error: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handed: list[Connection] = []

    def hand_over(self, conn: Connection) -> None:
        """Make ``conn`` (from ``first_connection``) the pool's first connection, instead
        of one of its own; before ``open``."""
        self._handed.append(conn)

    def _connect(self, timeout: float | None = None) -> Connection:
        try:
            handed = self._handed.pop()
        except IndexError:
            handed = None
        try:
            conn = super()._connect(timeout) if handed is None else self._adopt(handed)
        except Exception as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return conn

    def _adopt(self, conn: Connection) -> Connection:
        """What ``ConnectionPool._connect`` does to a connection after connecting."""
        try:
            conn._pool = self
            if self._configure is not None:
                self._configure(conn)
            self._set_connection_expiry_date(conn)
        except BaseException:
            conn.close()
            raise
        return conn


def check_idle(conn: Connection) -> None:
    """The pool's check of a connection it hands out: one the server closed while it
    was idle (a restart, an administrator's terminate) is replaced instead of failing
    the caller's statement. Costs a poll of its socket; a round trip only when the
    server said something while the connection was idle (it is closing it)."""
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        Pool.check_connection(conn)


def new_pool(
    url: str,
    kwargs: dict[str, Any],
    check: Callable[[Connection], None] | None,
    **options: Any,
) -> Pool:
    """A pool of connections to ``url`` made with ``kwargs``, opened (``options``: the
    pool's own), its first connection made here (see ``first_connection``); ``check``:
    what that connection must have (check_search_path)."""
    first = first_connection(url, kwargs, check)
    pool = Pool(url, kwargs=kwargs, check=check_idle, open=False, **options)
    if ADOPTS:
        pool.hand_over(first)
    else:  # a psycopg_pool without the hook _adopt relies on: the pool connects itself
        first.close()
    # Waits only for the pool's thread to take ``first`` in: a first call that found
    # the pool empty would queue, and the pool would grow by a connection it need not.
    pool.open(wait=True, timeout=options.get("timeout", 30.0))
    return pool
