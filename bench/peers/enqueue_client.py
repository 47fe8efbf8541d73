"""A fresh process's enqueue, for ``bench/side_by_side.py``.

    python bench/peers/enqueue_client.py errands|pgqueuer URL COUNT

Imports the library (timed apart), builds COUNT no-op jobs, then times opening the
connection plus enqueueing them all in one call (one transaction): errands'
``enqueue_many`` (COUNT > 1) or ``Job.run_in_worker`` (COUNT == 1); pgqueuer's
``Queries.enqueue`` with lists (COUNT > 1) or scalars (COUNT == 1) on an asyncpg
connection, timed inside the event loop. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def errands_enqueue(url: str, count: int) -> dict[str, float]:
    began = time.perf_counter()
    import bench_jobs

    import errands

    imported = time.perf_counter() - began
    errands.configure(database_url=url)
    jobs = [bench_jobs.Noop() for _ in range(count)]
    start = time.perf_counter()
    if count == 1:
        jobs[0].run_in_worker()
    else:
        errands.enqueue_many(jobs)
    return {"import_seconds": imported, "seconds": time.perf_counter() - start}


def pgqueuer_enqueue(url: str, count: int) -> dict[str, float]:
    began = time.perf_counter()
    import asyncpg  # type: ignore[import-untyped]
    import uvloop
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    imported = time.perf_counter() - began
    entrypoints, priorities = ["noop"] * count, [0] * count
    payloads: list[bytes | None] = [None] * count

    async def enqueue() -> float:
        start = time.perf_counter()
        connection = await asyncpg.connect(url)
        queries = Queries(AsyncpgDriver(connection))
        if count == 1:
            await queries.enqueue("noop", None)
        else:
            await queries.enqueue(entrypoints, payloads, priorities)
        elapsed = time.perf_counter() - start
        await connection.close()
        return elapsed

    return {"import_seconds": imported, "seconds": uvloop.run(enqueue())}


def main(argv: list[str]) -> int:
    system, url, count = argv[0], argv[1], int(argv[2])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench_jobs
    measure = errands_enqueue if system == "errands" else pgqueuer_enqueue
    print(json.dumps(measure(url, count)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
