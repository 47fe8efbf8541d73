"""The pgqueuer worker of ``bench/side_by_side.py``: ``pgq run pgqueuer_app:create``.

Run with ``bench/peers`` on ``PYTHONPATH`` and ``BENCH_PGQ_DSN`` set. The one
entrypoint, ``noop``, does nothing: pgqueuer records each completion in its own
log table (``pgqueuer_log``, status ``successful``), which is what the drains read,
as they read errands' results table. Only the pickup-latency measurement sets
``BENCH_PGQ_STARTS``: then the entrypoint appends ``<job id> <unix time>`` to that
file when it starts, the counterpart of errands' ``started_at``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

ENTRYPOINT = "noop"
DSN_ENV = "BENCH_PGQ_DSN"
STARTS_ENV = "BENCH_PGQ_STARTS"


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ[DSN_ENV])
    pgq = PgQueuer(AsyncpgDriver(connection))
    starts_path = os.environ.get(STARTS_ENV)
    if starts_path:
        starts = open(starts_path, "a", buffering=1)  # noqa: SIM115 (open for the run)

        @pgq.entrypoint(ENTRYPOINT)
        async def noop_timed(job: Job) -> None:
            starts.write(f"{job.id} {time.time()!r}\n")

    else:

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            pass

    try:
        yield pgq
    finally:
        if not connection.is_closed():
            await connection.close()
