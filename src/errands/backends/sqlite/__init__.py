"""SQLite: one file in WAL mode, BEGIN IMMEDIATE writes, data_version polling for wake-ups.

``backend.py`` holds what only SQLite does (connections and transactions, claims,
completions and rescue); ``queries.sql`` every statement by name; ``migrations/``
the numbered schema changes.
"""

from errands.backends.sqlite.backend import SqliteBackend
from errands.backends.sqlite.connection import database_path

__all__ = ["SqliteBackend", "database_path"]
