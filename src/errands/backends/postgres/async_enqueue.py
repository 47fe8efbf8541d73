"""Enqueueing from asyncio on PostgreSQL: the statements of ``enqueue.py`` on a psycopg
``AsyncConnection`` (the caller's, or one of a few kept per event loop).

Only the I/O is async: the SQL is ``queries.sql``'s (``insert_request``,
``insert_requests``, the slot and uniqueness queries), the parameters are built by
``enqueue.py`` and the rows decoded by its codec. An enqueue that needs decisions
(concurrency keys, ``Unique``, a class's own ``should_enqueue``) runs errands' one
decision code in a thread (:class:`BridgedTransaction`): each of its statements is
sent back to the event loop, on the same AsyncConnection and in its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row

from errands import settings
from errands.backends.postgres.codec import utc
from errands.backends.postgres.connection import (
    ENTER_SCHEMA,
    LEAVE_SCHEMA,
    Row,
    connection_parameters,
    database_errors,
    schema_of,
    schema_options,
    session_options,
    set_schema,
    statements,
)
from errands.backends.postgres.enqueue import (
    PostgresEnqueueTransaction,
    _as_request,
    request_columns,
    request_values,
)
from errands.models import JobRequest, NewRequest

ASYNC_CONNECTIONS = 4  # per event loop and database


class LoopConnections:
    """A few AsyncConnections of one event loop, reused across enqueues.

    Not psycopg_pool's AsyncConnectionPool: its background tasks belong to the loop
    that opened it, and a loop that ends while one of them connects (a test client's
    loop per request, an ``asyncio.run`` per script) waited for it for minutes. These
    connections have no task of their own: they are opened by the enqueue that needs
    one, and dropped with their loop.
    """

    def __init__(self, url: str, timeout: float, pooler: str = "none", schema: str = "") -> None:
        self.url = url
        self.timeout = timeout
        # No prepared statements behind a pooler; the search_path of the schema setting.
        self.options = {**session_options(pooler), **schema_options(url, schema, pooler)}
        self.schema = schema
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self.open = 0
        self.freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self._take()
        try:
            yield conn
        except BaseException:
            await self._give(conn, reuse=False)
            raise
        await self._give(conn, reuse=conn.info.transaction_status == TransactionStatus.IDLE)

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        async with self.freed:
            while not self.idle and self.open >= ASYNC_CONNECTIONS:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.open += 1
        try:
            parameters = {**connection_parameters(self.url, self.timeout), **self.options}
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **parameters)
            set_schema(conn, self.schema)
            return conn
        except BaseException:
            async with self.freed:
                self.open -= 1
                self.freed.notify()
            raise

    async def _give(self, conn: psycopg.AsyncConnection[Any], *, reuse: bool) -> None:
        if not (reuse and not conn.closed):
            with contextlib.suppress(Exception):
                await conn.close()
        async with self.freed:
            if reuse and not conn.closed:
                self.idle.append(conn)
            else:
                self.open -= 1
            self.freed.notify()

    async def close(self) -> None:
        async with self.freed:
            idle, self.idle = self.idle, []
            self.open -= len(idle)
        for conn in idle:
            await conn.close()


_loops: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str], LoopConnections]
] = weakref.WeakKeyDictionary()


def _connections(url: str, timeout: float, pooler: str, schema: str) -> LoopConnections:
    """This event loop's connections to ``url`` for ``schema`` (a connection belongs
    to one loop)."""
    by_url = _loops.setdefault(asyncio.get_running_loop(), {})
    if (url, schema) not in by_url:
        by_url[url, schema] = LoopConnections(url, timeout, pooler, schema)
    return by_url[url, schema]


async def close_pools() -> None:
    """Close this event loop's idle connections (tests, or an application's shutdown)."""
    for connections in _loops.pop(asyncio.get_running_loop(), {}).values():
        await connections.close()


@contextlib.asynccontextmanager
async def connection(
    url: str,
    timeout: float,
    given: Any | None,
    *,
    pooler: str = "none",
    schema: str | None = None,
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The caller's AsyncConnection (checked), or one of this loop's in autocommit
    (``pooler``, ``schema``: the backend's ``database_pooler`` and ``schema``; the
    setting's schema unless given). ``joined_transaction`` on the caller's puts the
    schema in its search_path."""
    schema = settings.current().schema if schema is None else schema
    if given is not None:
        if not isinstance(given, psycopg.AsyncConnection):
            raise TypeError(
                f"connection: expected a psycopg.AsyncConnection, got {type(given).__name__}"
            )
        before = set_schema(given, schema)
        try:
            yield given
        finally:
            set_schema(given, before)
        return
    async with _connections(url, timeout, pooler, schema).connection() as conn:
        yield conn


@contextlib.asynccontextmanager
async def joined_transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """``enqueue.joined_transaction`` for an AsyncConnection: a savepoint inside the
    caller's transaction, a transaction of its own in autocommit, else the caller's
    implicit transaction, never committed here."""
    if conn.autocommit or conn.info.transaction_status == TransactionStatus.INTRANS:
        async with conn.transaction(), _in_schema(conn):
            yield
    else:
        async with _in_schema(conn):
            yield


@contextlib.asynccontextmanager
async def _in_schema(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """``enqueue.caller_schema`` for an AsyncConnection, for the schema ``connection``
    recorded: it as the search_path until the block ends."""
    schema = schema_of(conn)
    if not schema:
        yield
        return
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(ENTER_SCHEMA, {"schema": schema})
        row = await cursor.fetchone()
    try:
        yield
    finally:
        if row is not None and conn.info.transaction_status == TransactionStatus.INTRANS:
            await conn.execute(LEAVE_SCHEMA, {"previous": row[0]})


async def insert_requests(
    conn: psycopg.AsyncConnection[Any], requests: Sequence[NewRequest]
) -> list[JobRequest]:
    """``enqueue.insert_requests`` on an AsyncConnection: one INSERT (no COPY: a large
    batch goes as one ``insert_requests`` statement of arrays)."""
    if not requests:
        return []
    name, params = (
        ("insert_request", request_values(requests[0]))
        if len(requests) == 1
        else ("insert_requests", request_columns(requests))
    )
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(statements(conn)[name], params)
        rows = await cursor.fetchall()
    times = {key: (utc(created_at), utc(start_at)) for key, created_at, start_at in rows}
    return [_as_request(request, *times[request.uuid]) for request in requests]


async def _fetch(
    conn: psycopg.AsyncConnection[Any], name: str, params: Mapping[str, Any]
) -> tuple[list[Row], int]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(statements(conn)[name], params)
        rows = await cursor.fetchall() if cursor.description else []
        return rows, cursor.rowcount


class BridgedTransaction(PostgresEnqueueTransaction):
    """The enqueue transaction's methods for code running in a thread: each statement
    runs on the event loop ``loop``, on the AsyncConnection, in its transaction."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], url: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(conn, url)  # type: ignore[arg-type]
        self._aconn = conn
        self._loop = loop

    def _run(self, name: str, params: Mapping[str, Any]) -> tuple[list[Row], int]:
        future = asyncio.run_coroutine_threadsafe(_fetch(self._aconn, name, params), self._loop)
        with database_errors(self._url):
            return future.result()

    def _fetch(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        return self._run(name, params)[0]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        coroutine = insert_requests(self._aconn, requests)
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        with database_errors(self._url):
            return future.result()

    def link_retry(self, *, result_uuid: Any, request_uuid: Any) -> bool:
        params = {"result_uuid": result_uuid, "request_uuid": request_uuid}
        return self._run("link_retry", params)[1] > 0

    def settle_followup(self, *, result_uuid: Any) -> bool:
        return self._run("settle_followup", {"result_uuid": result_uuid})[1] > 0
