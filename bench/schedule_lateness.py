"""How late do scheduled jobs start? Runs a worker with an every-second schedule.

Usage: python bench/schedule_lateness.py [--database-url URL] [--seconds 20]

Each occurrence falls on a whole second, so a job's lateness is its start time's
fraction of a second (valid while jobs start less than a second late, which the
script checks). Prints the median, p95 and max lateness over all occurrences.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import errands  # noqa: E402
from errands import Schedule, settings  # noqa: E402
from errands.backends import open_backend  # noqa: E402
from errands.worker import Worker  # noqa: E402


class EverySecond(Schedule):
    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        return moment.replace(microsecond=0) + datetime.timedelta(seconds=1)

    def describe(self) -> str:
        return "every second"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/lateness.db"
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
    deadline = time.monotonic() + args.seconds
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
    print(f"backend {backend.name}: {len(late)} occurrences")
    print(
        f"lateness median {statistics.median(late) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {late[-1] * 1000:.0f} ms (poll_interval {config.poll_interval} s)"
    )


if __name__ == "__main__":
    main()
