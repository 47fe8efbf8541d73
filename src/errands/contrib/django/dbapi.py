"""Enqueueing inside a psycopg2 transaction (Django running on psycopg2).

errands talks to PostgreSQL with psycopg 3, whose objects cannot use a psycopg2
connection. To join the caller's transaction anyway, the enqueue statements run
through the psycopg2 connection itself: the same named queries as
:class:`~errands.backends.postgres.enqueue.PostgresEnqueueTransaction` (both
drivers use ``%(name)s`` placeholders, and the queries cast every array), with
values adapted on the way in (uuids as text) and rows read back as psycopg 3
would give them (Django loads jsonb as text on its psycopg2 connections; uuids are
text unless ``psycopg2.extras.register_uuid`` was called). Large batches go through
the same one-statement INSERT as small ones: psycopg2 has no COPY of psycopg 3's kind.

psycopg2 is never imported here: a connection is recognised by its type's module.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from errands import settings
from errands.backends.postgres.codec import utc
from errands.backends.postgres.connection import (
    ENTER_SCHEMA,
    LEAVE_SCHEMA,
    queries,
)
from errands.backends.postgres.enqueue import (
    PostgresEnqueueTransaction,
    _as_request,  # the request as inserted: one place knows JobRequest's fields
    request_columns,
    request_values,
)
from errands.models import JobRequest, NewRequest

_JSON_COLUMNS = frozenset({"parameters", "limits", "return_value"})
_UUID_COLUMNS = frozenset({"uuid", "request_uuid", "process_uuid", "worker_id", "pending"})


def is_psycopg2(connection: Any) -> bool:
    """Whether ``connection`` is a psycopg2 connection (or a subclass's, as Django's)."""
    return any(cls.__module__.split(".")[0] == "psycopg2" for cls in type(connection).__mro__)


@contextlib.contextmanager
def joined_transaction(conn: Any, schema: str | None = None) -> Iterator[None]:
    """The caller's transaction, never committed: a savepoint in it, so a failed enqueue
    undoes only itself. A connection in autocommit has no transaction to join: the
    enqueue is its own, as each of the caller's statements would be. With a
    schema (the setting's unless given), it is the search_path inside, as in
    ``enqueue.caller_schema``."""
    schema = settings.current().schema if schema is None else schema
    if conn.autocommit:
        begin, commit, rollback = "BEGIN", "COMMIT", "ROLLBACK"
    else:
        # psycopg2 opens the transaction itself before the first statement.
        name = f"errands_{uuid.uuid4().hex}"
        begin, commit = f"SAVEPOINT {name}", f"RELEASE SAVEPOINT {name}"
        rollback = f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
    _run(conn, begin)
    try:
        if schema:
            [entered] = _run(conn, ENTER_SCHEMA, {"schema": schema})
        yield
        if schema:
            _run(conn, LEAVE_SCHEMA, {"previous": entered["previous"]})
    except BaseException:
        _run(conn, rollback)
        raise
    _run(conn, commit)


def _run(
    conn: Any, statement: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    cursor = conn.cursor()
    try:
        cursor.execute(statement, None if params is None else _adapted(params))
        if not cursor.description:
            return []
        names = [column[0] for column in cursor.description]
        return [_loaded(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _adapted(params: Mapping[str, Any]) -> dict[str, Any]:
    """Values psycopg2 adapts whatever the application registered: uuids as text (the
    queries compare them with uuid columns, or cast them)."""

    def adapt(value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, list):
            return [adapt(item) for item in value]
        return value

    return {key: adapt(value) for key, value in params.items()}


def _loaded(row: dict[str, Any]) -> dict[str, Any]:
    """A row as psycopg 3 reads it for errands: jsonb parsed, uuids as UUID."""
    for column in _JSON_COLUMNS.intersection(row):
        if isinstance(row[column], str):
            row[column] = json.loads(row[column])
    for column in _UUID_COLUMNS.intersection(row):
        if isinstance(row[column], str):
            row[column] = uuid.UUID(row[column])
    return row


class Psycopg2EnqueueTransaction(PostgresEnqueueTransaction):
    """PostgreSQL's enqueue statements on a psycopg2 connection, inside a transaction
    someone else ends: only the I/O differs (psycopg2's cursor and parameters)."""

    def __init__(self, conn: Any, schema: str | None = None) -> None:
        self._conn = conn
        self._schema = settings.current().schema if schema is None else schema

    def _fetch(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return _run(self._conn, queries(self._schema)[name], params)

    def _rowcount(self, name: str, params: Mapping[str, Any]) -> int:
        cursor = self._conn.cursor()
        try:
            cursor.execute(queries(self._schema)[name], _adapted(params))
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        """One INSERT (no COPY through psycopg2): the rows' times come back."""
        if not requests:
            return []
        name, params = (
            ("insert_request", request_values(requests[0]))
            if len(requests) == 1
            else ("insert_requests", request_columns(requests))
        )
        times = {
            row["uuid"]: (utc(row["created_at"]), utc(row["start_at"]))
            for row in self._fetch(name, params)
        }
        return [_as_request(request, *times[request.uuid]) for request in requests]
