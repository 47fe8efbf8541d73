"""Stale workers without waiting: move a worker's heartbeat (or its claims) into the past.

A test that needs a worker to look dead backdates its row with one UPDATE rather
than sleeping past a heartbeat timeout. Times are set by the database's own clock,
as the backends judge staleness by it: ``now()`` on PostgreSQL (``timestamptz``
columns), the Unix time of ``julianday('now')`` on SQLite (``REAL`` columns of
seconds; see ``src/errands/backends/*.sql``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid

import psycopg
from psycopg import sql

from errands.backends.sqlite import database_path

# The moment ``seconds`` ago by SQLite's clock, as errands stores it.
_SQLITE_AGO = "(julianday('now') - 2440587.5) * 86400.0 - :seconds"


def backdate_heartbeat(url: str, worker_id: uuid.UUID, seconds: float) -> None:
    """Make the worker's last heartbeat ``seconds`` old (it must have registered)."""
    _update(url, "errands_worker", "last_heartbeat_at", worker_id, seconds)


def backdate_claims(url: str, worker_id: uuid.UUID, seconds: float) -> None:
    """Make the processes the worker claimed ``seconds`` old (what a rescue of a
    worker without a heartbeat row goes by)."""
    _update(url, "errands_process", "created_at", worker_id, seconds)


def _update(url: str, table: str, column: str, worker_id: uuid.UUID, seconds: float) -> None:
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(database_path(url), timeout=30)) as conn:
            updated = conn.execute(
                f"UPDATE {table} SET {column} = {_SQLITE_AGO} WHERE worker_id = :worker_id",
                {"seconds": seconds, "worker_id": str(worker_id)},
            ).rowcount
            conn.commit()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            query = sql.SQL(
                "UPDATE {} SET {} = now() - %(seconds)s * interval '1 second'"
                " WHERE worker_id = %(worker_id)s"
            ).format(sql.Identifier(table), sql.Identifier(column))
            updated = pg.execute(query, {"seconds": seconds, "worker_id": worker_id}).rowcount
    if not updated:
        raise AssertionError(f"no row of worker {worker_id} in {table} to backdate")
