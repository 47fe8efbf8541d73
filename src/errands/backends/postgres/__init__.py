"""PostgreSQL: SKIP LOCKED claims, advisory locks for concurrency keys, LISTEN/NOTIFY.

``backend.py`` holds what only PostgreSQL does (claims, completions, rescue and
enqueue statements, connection pools); ``queries.sql`` every statement by name;
``migrations/`` the numbered schema changes.
"""

from errands.backends.postgres.backend import PostgresBackend
from errands.backends.postgres.connection import queries
from errands.backends.postgres.listener import PostgresListener, PostgresResultListener

__all__ = ["PostgresBackend", "PostgresListener", "PostgresResultListener", "queries"]
