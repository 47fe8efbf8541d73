"""errands backends whose enqueues join Django's open transaction.

When errands uses the database of a Django connection (the default), an enqueue
made inside ``transaction.atomic()`` runs on that Django connection, as a
savepoint of its transaction: the job exists if and only if the block commits.
Outside an atomic block (autocommit), an enqueue commits at once, like any other
statement. An explicit ``connection=`` argument still wins.

Django on psycopg 3 shares its connection object with errands; on psycopg2 the
enqueue statements run through Django's psycopg2 connection instead
(:mod:`errands.contrib.django.dbapi`), in the same transaction either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.db import connections

from errands.backends import Backend, open_backend
from errands.backends.base import EnqueueTransaction
from errands.backends.postgres import PostgresBackend
from errands.backends.sqlite import SqliteBackend
from errands.contrib.django import conf, dbapi
from errands.models import JobRequest, NewRequest


def joined_connection(alias: str) -> Any | None:
    """The DB-API connection of Django's ``alias`` when it is inside an atomic block."""
    django_connection = connections[alias]
    if not django_connection.in_atomic_block:
        return None
    django_connection.ensure_connection()
    return django_connection.connection


class _JoinsDjangoTransactions(Backend):
    """Enqueues inside an atomic block of Django's ``alias`` run on its connection."""

    alias: str

    @contextlib.contextmanager
    def enqueue_transaction(self, *, connection: Any | None = None) -> Iterator[EnqueueTransaction]:
        joined = connection if connection is not None else joined_connection(self.alias)
        if joined is not None and dbapi.is_psycopg2(joined):
            with dbapi.joined_transaction(joined):
                yield dbapi.Psycopg2EnqueueTransaction(joined)
            return
        # Concrete at run time: the mixin always comes before a concrete backend.
        with super().enqueue_transaction(connection=joined) as tx:  # type: ignore[safe-super]
            yield tx

    def insert_requests(self, *, requests: Sequence[NewRequest]) -> list[JobRequest]:
        if joined_connection(self.alias) is None:
            return super().insert_requests(requests=requests)  # commits at once
        with self.enqueue_transaction() as tx:  # joins the atomic block
            return tx.insert_requests(requests)


class DjangoPostgresBackend(_JoinsDjangoTransactions, PostgresBackend):
    """PostgreSQL, sharing the database (and transactions) of a Django connection."""

    def __init__(self, url: str, *, alias: str) -> None:
        super().__init__(url)
        self.alias = alias


class DjangoSqliteBackend(_JoinsDjangoTransactions, SqliteBackend):
    """SQLite, sharing the file (and transactions) of a Django connection."""

    def __init__(self, url: str, *, alias: str) -> None:
        super().__init__(url)
        self.alias = alias


def opener(alias: str | None) -> Callable[[str | None], Backend]:
    """For ``errands.api.set_backend_opener``: a joining backend when ``url`` is the
    database of Django's ``alias`` (checked at each open, as tests switch databases)."""

    def open_url(url: str | None) -> Backend:
        if alias is None or not url or url != conf.database_url(alias):
            return open_backend(url)
        if url.startswith(("postgresql://", "postgres://")):
            return DjangoPostgresBackend(url, alias=alias)
        return DjangoSqliteBackend(url, alias=alias)

    return open_url
