"""Enqueueing from asyncio: ``await job.run_in_worker_async(...)`` and
``await errands.enqueue_many_async(...)``.

The same rules as ``jobs.enqueue_many``, written once there: the requests are built
and validated by ``jobs._new_requests`` (before any I/O), and the decisions
(concurrency keys, ``Unique``, a class's own ``should_enqueue``) are made by
``jobs._enqueue_prepared``. Only the I/O differs:

* PostgreSQL: a psycopg ``AsyncConnection``, the caller's (``connection=``, whose
  transaction the enqueue joins: a savepoint, never committed here) or one of a
  small async pool per event loop. A batch without decisions is one INSERT awaited
  on the event loop, no thread involved. A batch with decisions runs the decision
  code in a thread (``asyncio.to_thread``) whose statements are sent back to the
  event loop, on the same connection and in the same transaction
  (``backends.postgres.async_enqueue.BridgedTransaction``): ``should_enqueue`` is sync
  user code and may query through the transaction, so it is run as it is in
  ``enqueue_many``, off the event loop.
* SQLite (and the in-memory test backend): the sqlite3 module is synchronous, so
  the whole ``enqueue_many`` runs in a thread; ``connection=`` is not supported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from errands import telemetry, uniqueness
from errands.backends import current
from errands.jobs import (
    EnqueueOptions,
    Job,
    _enqueue_many,
    _enqueue_prepared,
    _needs_decision,
    _new_requests,
    _source,
)
from errands.models import JobRequest
from errands.registry import job_class_path


async def enqueue_many_async(
    jobs: Iterable[Job],
    *,
    options: EnqueueOptions | None = None,
    connection: Any | None = None,
) -> list[JobRequest | None]:
    """``enqueue_many`` for asyncio; ``connection`` is a psycopg ``AsyncConnection``
    whose transaction the enqueue joins (PostgreSQL only)."""
    jobs = list(jobs)
    if not jobs:
        return []
    source = _source(options)
    backend = current.backend()
    url = getattr(backend, "url", None)
    if not _is_postgres(backend):
        if connection is not None:
            raise TypeError(
                "connection: an AsyncConnection can be joined on PostgreSQL only "
                f"(the backend is {type(backend).__name__})"
            )
        return await asyncio.to_thread(_enqueue_many, jobs, options, None, source)
    from errands.backends.postgres import async_enqueue as pg

    requests, uniques = _new_requests(jobs, options or EnqueueOptions(), source)
    timeout = float(backend.database_timeout)  # type: ignore[attr-defined]
    decide = any(map(_needs_decision, jobs, requests))
    pooler = str(getattr(backend, "pooler", "none"))  # "transaction": nothing prepared
    async with pg.connection(url, timeout, connection, pooler=pooler) as conn:  # type: ignore[arg-type]
        if not decide:
            with telemetry.sending(requests) as send:
                async with pg.joined_transaction(conn) if connection is not None else _none():
                    inserted: list[JobRequest | None] = list(
                        await pg.insert_requests(conn, send.requests)
                    )
                send.sent(inserted)
            return inserted
        async with pg.joined_transaction(conn):
            tx = pg.BridgedTransaction(conn, url, asyncio.get_running_loop())  # type: ignore[arg-type]
            return await asyncio.to_thread(_enqueue_prepared, tx, jobs, requests, uniques)


async def run_in_worker_async(
    job: Job, *, connection: Any | None = None, **options: Any
) -> JobRequest | None:
    """``Job.run_in_worker`` for asyncio (the same options)."""
    key = options.get("concurrency_key")
    if key:
        uniqueness.check_own_key(key, job_class_path(type(job)), "concurrency_key")
    result = await enqueue_many_async(
        [job], options=EnqueueOptions(**options), connection=connection
    )
    return result[0]


def _is_postgres(backend: Any) -> bool:
    return type(backend).__module__.startswith("errands.backends.postgres")


class _none:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
