"""Backends: pick one from a database URL.

``postgresql://...`` (or ``postgres://``) selects PostgreSQL; ``sqlite:///relative.db``
and ``sqlite:////absolute.db`` select an SQLite file; an empty URL means the embedded
default, ``errands.sqlite3`` in the working directory.
"""

from __future__ import annotations

from errands.backends.base import Backend
from errands.errors import ConfigurationError
from errands.redaction import redact_url

DEFAULT_URL = "sqlite:///errands.sqlite3"


def open_backend(url: str | None) -> Backend:
    """Connect lazily to the database named by ``url``; nothing is written yet."""
    url = url or DEFAULT_URL
    if url.startswith(("postgresql://", "postgres://")):
        from errands.backends.postgres import PostgresBackend

        return PostgresBackend(url)
    if url.startswith("sqlite:"):
        from errands.backends.sqlite import SqliteBackend

        return SqliteBackend(url)
    scheme = url.split(":", 1)[0][:20]
    raise ConfigurationError(
        f"database_url: unsupported scheme {scheme!r} in {redact_url(url)!r}; "
        "use postgresql://user@host/dbname or sqlite:///path/to/file.db"
    )


__all__ = ["DEFAULT_URL", "Backend", "open_backend"]
