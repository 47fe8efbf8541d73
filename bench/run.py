"""errands benchmark: enqueue and drain rates, pickup latency, memory and idle CPU.

Run it against a database server it may create databases on::

    python bench/run.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/run.py --database-url sqlite:///tmp/bench.db --quick --json out.json

It creates its own database (PostgreSQL: a new database on that server; SQLite: a
new file in the same directory), migrates it, and drops it at the end. Each
figure is the median of several runs; rates are also shown as a ratio to the
machine's baseline: one client committing transactions that insert and delete
one row, which is what one-job-per-transaction work is bounded by.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import measures
from databases import BenchDatabase, bench_database
from harness import write_report

HISTORY_RESULTS = 1_000_000
HISTORY_DELAYED = 100_000


@dataclass(frozen=True)
class Scale:
    runs: int
    baseline_seconds: float
    bulk_jobs: int
    single_seconds: float
    drain_jobs: int
    latency_samples: int
    history_results: int
    history_delayed: int
    memory_jobs: int
    idle_seconds: float


FULL = Scale(
    runs=3,
    baseline_seconds=3.0,
    bulk_jobs=100_000,
    single_seconds=3.0,
    drain_jobs=100_000,
    latency_samples=200,
    history_results=HISTORY_RESULTS,
    history_delayed=HISTORY_DELAYED,
    memory_jobs=200_000,
    idle_seconds=10.0,
)
QUICK = Scale(
    runs=3,
    baseline_seconds=1.0,
    bulk_jobs=20_000,
    single_seconds=1.0,
    drain_jobs=20_000,
    latency_samples=100,
    history_results=100_000,
    history_delayed=10_000,
    memory_jobs=40_000,
    idle_seconds=3.0,
)
#: chain_step: jobs in the chain whose steps are timed
CHAIN_LENGTH = 100

MEASUREMENTS = (
    "baseline",
    "bulk_enqueue",
    "single_enqueue",
    "drain_default",
    "drain",
    "drain_limited",
    "drain_workflow",
    "chain_step",
    "drain_history",
    "latency",
    "memory",
    "idle_cpu",
)


@dataclass
class Figure:
    """One line of the results table: a median over runs, with every run kept."""

    name: str
    unit: str
    runs: list[float]
    note: str = ""
    ratio: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return measures.median(self.runs)

    def as_json(self) -> dict[str, Any]:
        return {
            "median": round(self.median, 3),
            "unit": self.unit,
            "runs": [round(r, 3) for r in self.runs],
            "note": self.note,
            "ratio": self.ratio,
            **self.extra,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(
            "Measurements (--only): baseline: single-client insert+delete transactions/s; "
            "bulk_enqueue: enqueue_many, 10,000 jobs per transaction; single_enqueue: "
            "run_in_worker in a loop; drain_default: a worker with default settings "
            "draining pre-filled no-op jobs; drain: the same with --processes/--threads/"
            "--pending; drain_limited: that drain with every job under one Limit of "
            "concurrency 50; drain_workflow: that drain as one workflow (a job, half the "
            "drain's count after it, one job after all of those); chain_step: start to start "
            "along a chain of no-op jobs on an idle worker; drain_history: that drain with "
            "1,000,000 results and 100,000 "
            "delayed requests in the tables; latency: enqueue commit to job start on an "
            "idle worker (p50/p95/max); memory: worker tree RSS over a long drain; "
            "idle_cpu: an idle worker's CPU use."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        required=True,
        help="PostgreSQL server (postgresql://user@host:port/any_db: a new database is "
        "created there and dropped afterwards) or sqlite:////abs/dir/name.db (a new file "
        "is created in that directory and deleted afterwards)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller counts, shorter runs (20,000-job drains, 100 latency samples, "
        "100,000 results of history): a smoke test, not figures to publish",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--runs", type=int, help="runs per figure (median taken; default 3)")
    parser.add_argument(
        "--processes", type=int, default=2, help="drain: child processes (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="drain: threads per child (default 1)"
    )
    parser.add_argument(
        "--pending",
        type=int,
        default=200,
        help="drain: jobs claimed ahead per child (default 200)",
    )
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")
    return args


def repeat(runs: int, once: Callable[[], float]) -> list[float]:
    return [once() for _ in range(runs)]


class Benchmark:
    def __init__(self, db: BenchDatabase, scale: Scale, args: argparse.Namespace) -> None:
        self.db = db
        self.scale = scale
        self.only = set(args.only.split(","))
        self.tuned = {
            "worker_max_processes": args.processes,
            "worker_threads": args.threads,
            "worker_max_pending_per_process": args.pending,
        }
        self.figures: list[Figure] = []
        self.baseline: float | None = None

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(f"  {figure.name}: {figure.median:,.1f} {figure.unit} {figure.runs}", flush=True)

    def ratio(self, rate: float) -> str:
        return f"{rate / self.baseline:.2f}x baseline" if self.baseline else ""

    def run(self) -> None:
        steps = [
            ("baseline", self.measure_baseline),
            ("bulk_enqueue", self.measure_bulk),
            ("single_enqueue", self.measure_single),
            ("drain_default", self.measure_drain_default),
            ("drain", self.measure_drain),
            ("drain_limited", self.measure_drain_limited),
            ("drain_workflow", self.measure_drain_workflow),
            ("chain_step", self.measure_chain_step),
            ("latency", self.measure_latency),
            ("idle_cpu", self.measure_idle_cpu),
            ("memory", self.measure_memory),
            ("drain_history", self.measure_drain_history),  # last: it fills the tables
        ]
        for name, step in steps:
            if name in self.only:
                print(f"{name} ...", flush=True)
                step()

    def measure_baseline(self) -> None:
        runs = repeat(self.scale.runs, lambda: self.db.baseline_tps(self.scale.baseline_seconds))
        self.baseline = measures.median(runs)
        self.add(Figure("baseline insert+delete tx", "tx/s", runs, note="1 client"))

    def measure_bulk(self) -> None:
        runs = repeat(self.scale.runs, lambda: measures.bulk_enqueue(self.db, self.scale.bulk_jobs))
        self.add(Figure("bulk enqueue", "jobs/s", runs, note="10,000 per transaction"))
        self.figures[-1].ratio = self.ratio(self.figures[-1].median)

    def measure_single(self) -> None:
        runs = repeat(
            self.scale.runs, lambda: measures.single_enqueue(self.db, self.scale.single_seconds)
        )
        self.add(Figure("one-at-a-time enqueue", "jobs/s", runs, note="1 client"))
        self.figures[-1].ratio = self.ratio(self.figures[-1].median)

    def measure_drain_default(self) -> None:
        runs = repeat(self.scale.runs, lambda: measures.drain(self.db, self.scale.drain_jobs, {}))
        self.add(Figure("drain, default settings", "jobs/s", runs, note=_describe({})))
        self.figures[-1].ratio = self.ratio(self.figures[-1].median)

    def measure_drain(self) -> None:
        runs = repeat(
            self.scale.runs, lambda: measures.drain(self.db, self.scale.drain_jobs, self.tuned)
        )
        self.add(Figure("drain", "jobs/s", runs, note=_describe(self.tuned)))
        self.figures[-1].ratio = self.ratio(self.figures[-1].median)

    def measure_drain_limited(self) -> None:
        runs = repeat(
            self.scale.runs,
            lambda: measures.drain_limited(self.db, self.scale.drain_jobs, self.tuned),
        )
        note = f"one key, concurrency={measures.LIMITED_CONCURRENCY}; {_describe(self.tuned)}"
        figure = Figure("drain under one limit", "jobs/s", runs, note=note)
        plain = next((f for f in self.figures if f.name == "drain"), None)
        if plain is not None:
            figure.ratio = f"{100 * figure.median / plain.median:.0f}% of drain"
        self.add(figure)

    def measure_drain_workflow(self) -> None:
        width = self.scale.drain_jobs // 2
        runs = repeat(self.scale.runs, lambda: measures.drain_workflow(self.db, width, self.tuned))
        note = f"1 job, then {width:,} after it, then 1 after all; {_describe(self.tuned)}"
        figure = Figure("drain of one workflow", "jobs/s", runs, note=note)
        plain = next((f for f in self.figures if f.name == "drain"), None)
        if plain is not None:
            figure.ratio = f"{100 * figure.median / plain.median:.0f}% of drain"
        self.add(figure)

    def measure_chain_step(self) -> None:
        runs = repeat(self.scale.runs, lambda: measures.chain_step(self.db, CHAIN_LENGTH, {}))
        note = f"start to start along a chain of {CHAIN_LENGTH} no-op jobs; default settings"
        self.add(Figure("chain step", "ms", runs, note=note))

    def measure_drain_history(self) -> None:
        measures.history_setup(
            self.db, results=self.scale.history_results, delayed=self.scale.history_delayed
        )
        runs = repeat(
            self.scale.runs,
            lambda: measures.drain_with_history(self.db, self.scale.drain_jobs, self.tuned),
        )
        note = (
            f"{self.scale.history_results:,} results + {self.scale.history_delayed:,} "
            f"delayed; {_describe(self.tuned)}"
        )
        figure = Figure("drain with history", "jobs/s", runs, note=note)
        empty = next((f for f in self.figures if f.name == "drain"), None)
        if empty is not None:
            figure.ratio = f"{100 * figure.median / empty.median:.0f}% of empty"
        self.add(figure)

    def measure_latency(self) -> None:
        per_run = [
            measures.pickup_latency(self.db, self.scale.latency_samples, {})
            for _ in range(self.scale.runs)
        ]
        note = f"{self.scale.latency_samples} samples per run; default settings"
        for label, fraction in (("p50", 0.5), ("p95", 0.95), ("max", 1.0)):
            runs = [1000 * measures.percentile(samples, fraction) for samples in per_run]
            self.add(Figure(f"idle pickup latency {label}", "ms", runs, note=note))

    def measure_memory(self) -> None:
        profiles = [
            measures.memory_over_drain(self.db, self.scale.memory_jobs, self.tuned)
            for _ in range(self.scale.runs)
        ]
        note = f"{self.scale.memory_jobs:,} jobs; {_describe(self.tuned)}"
        warm = Figure(
            "worker memory when warm", "MB", [p.warm_mb for p in profiles], note="parent+children"
        )
        warm.extra["parent_mb"] = [round(p.parent_warm_mb, 1) for p in profiles]
        self.add(warm)
        growth = Figure("memory growth after warm-up", "%", [p.growth_percent for p in profiles])
        growth.note = note
        growth.extra["peak_mb"] = [round(p.peak_mb, 1) for p in profiles]
        growth.extra["parent_peak_mb"] = [round(p.parent_peak_mb, 1) for p in profiles]
        self.add(growth)

    def measure_idle_cpu(self) -> None:
        runs = repeat(
            self.scale.runs, lambda: measures.idle_cpu(self.db, self.scale.idle_seconds, {})
        )
        self.add(Figure("idle worker CPU", "% of a core", runs, note="default settings"))


def _describe(settings: dict[str, Any]) -> str:
    if not settings:
        return f"{os.cpu_count()} processes x 1 thread (defaults)"
    return (
        f"{settings['worker_max_processes']} processes x {settings['worker_threads']} "
        f"threads, pending {settings['worker_max_pending_per_process']}"
    )


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(figures: list[Figure]) -> None:
    rows = [("measurement", "median", "unit", "vs", "runs", "notes")]
    for f in figures:
        runs = ", ".join(f"{r:,.1f}" for r in f.runs)
        rows.append((f.name, f"{f.median:,.1f}", f.unit, f.ratio, runs, f.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.runs:
        scale = Scale(**{**scale.__dict__, "runs": args.runs})
    db = bench_database(args.database_url)
    print(f"creating {db.url}", flush=True)
    db.create()
    started = time.time()
    try:
        measures.use_database(db)
        bench = Benchmark(db, scale, args)
        bench.run()
        report = {
            "database": {"kind": db.kind, **db.describe()},
            "machine": machine(),
            "scale": scale.__dict__,
            "tuned_settings": bench.tuned,
            "seconds": round(time.time() - started, 1),
            "results": {f.name: f.as_json() for f in bench.figures},
        }
    finally:
        db.drop()
    print()
    print_table(bench.figures)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
