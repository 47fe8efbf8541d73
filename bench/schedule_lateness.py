"""How late do scheduled jobs start? Runs a worker with an every-second schedule.

Usage: python bench/schedule_lateness.py [--database-url URL] [--seconds 20]

With a PostgreSQL URL the script creates a database of its own on that server
and drops it at the end; without one it uses a temporary SQLite file.

Each occurrence falls on a whole second, so a job's lateness is its start time's
fraction of a second (valid while jobs start less than a second late, which the
script checks). Prints the median, p95 and max lateness over all occurrences.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import errands
from errands import Schedule, settings
from errands.backends import open_backend
from errands.worker import Worker


class EverySecond(Schedule):
    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        return moment.replace(microsecond=0) + datetime.timedelta(seconds=1)

    def describe(self) -> str:
        return "every second"


@contextlib.contextmanager
def own_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server of ``server_url`` (or a temporary SQLite file)."""
    if not server_url.startswith("postgres"):
        yield server_url or f"sqlite:///{tempfile.mkdtemp()}/lateness.db"
        return
    name = f"errands_lateness_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        errands.configure(database_url=None)
        errands.backend().close()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with own_database(args.database_url) as url:
        measure(url, args.seconds)


def measure(url: str, seconds: float) -> None:
    backend = open_backend(url)
    backend.migrate()
    errands.configure(database_url=url)
    config = settings.load(
        cli={
            "database_url": url,
            "import_modules": ["sample_jobs"],
            "schedule": [["sample_jobs.Noop", EverySecond()]],
            "worker_max_processes": 2,
            "worker_stats_every": 0,
        }
    )
    worker = Worker(config=config)
    worker.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            worker.turn()
    finally:
        worker.stop()
        worker.stop()
        while not worker.finished():
            worker.turn()
        worker.shut_down()
    results = errands.results(job_class="sample_jobs.Noop", limit=10_000)
    late = sorted(r.started_at.microsecond / 1e6 for r in results if r.started_at)
    if not late:
        sys.exit("no scheduled job ran")
    p95 = late[min(len(late) - 1, int(0.95 * len(late)))]
    backend.close()
    print(f"backend {backend.name}: {len(late)} occurrences")
    print(
        f"lateness median {statistics.median(late) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {late[-1] * 1000:.0f} ms (poll_interval {config.poll_interval} s)"
    )


if __name__ == "__main__":
    main()
