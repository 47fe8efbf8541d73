"""errands beside pgqueuer (issue 23): the same measurements, on the same server, in one run.

    python bench/side_by_side.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/side_by_side.py --database-url ... --rounds 3 --jobs 20000 --json out.json

Each round creates a fresh database per system (errands migrated, pgqueuer
``pgq install``ed), runs every measurement on both, one system after the other
(which goes first alternates by round), and drops them. A figure is the median
of the rounds; the ratio is errands / pgqueuer, so every comparison is made
between runs minutes apart on the same machine.

Workers are started through each system's CLI, as a user would: ``errands worker
--import bench_jobs`` and ``pgq run pgqueuer_app:create`` (``bench/peers``). A
whole drain's clock starts when the first worker process is spawned and stops at
the write time of the last completion (errands: results table; pgqueuer: its log
table); the steady rate counts from the first completion written instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from harness import process_tree, rss_bytes, write_report
from systems import (
    ERRANDS_TUNED,
    PGQ_TUNED_BATCH,
    PGQ_TUNED_PROCESSES,
    PYCACHE_PREFIX,
    SYSTEMS,
    System,
    Workers,
    process_environment,
)

PEERS_DIR = Path(__file__).resolve().parent / "peers"
DRAIN_TIMEOUT = 600.0
LATENCY_PAUSE = (0.02, 0.05)  # seconds of idleness before each latency sample
FIRST_ENQUEUE_SAMPLES = 3  # fresh processes per round; the round's figure is their median


@dataclass
class Row:
    key: str
    label: str
    unit: str
    runs: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in SYSTEMS})

    def median(self, system: str) -> float:
        values = self.runs[system]
        return statistics.median(values) if values else float("nan")

    @property
    def ratio(self) -> float:
        return self.median("errands") / self.median("pgqueuer")


ROWS = [
    Row("drain_default", "drain incl. start-up, default settings", "jobs/s"),
    Row("drain_tuned", "drain incl. start-up, tuned", "jobs/s"),
    Row("steady_default", "steady rate (after the first job), default settings", "jobs/s"),
    Row("steady_tuned", "steady rate (after the first job), tuned", "jobs/s"),
    Row("first_job", "worker start to first job done", "s"),
    Row("bulk", "bulk enqueue, fresh process (connection included)", "jobs/s"),
    Row("first_enqueue", "fresh process's first enqueue (open + insert)", "ms"),
    Row("import", "import of the client library (fresh process)", "ms"),
    Row("memory_peak", "worker peak RSS, process tree, default settings", "MiB"),
    Row("memory_parent", "  of which the first process (errands: the parent)", "MiB"),
    Row("latency_p50", "idle pickup latency p50", "ms"),
    Row("latency_p95", "idle pickup latency p95", "ms"),
]


def wait_for_completions(system: System, workers: Workers, count: int, step: float) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while system.completions().count < count:
        workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{system.name}: {count} completions not recorded in time")
        time.sleep(step)


def drain(system: System, jobs: int, tuned: bool) -> tuple[float, float]:
    """(whole drain rate from spawn, steady rate from the first completion), jobs/s."""
    system.empty()
    system.fill(jobs)
    system.settle()
    with system.spawn(tuned) as workers:
        wait_for_completions(system, workers, jobs, step=0.1)
    done = system.completions()
    whole = done.count / (done.last - workers.spawned)
    steady = (done.count - done.first_count) / (done.last - done.first)
    return whole, steady


def first_job(system: System) -> float:
    """Seconds from spawning a default worker to the write of its first completion."""
    system.empty()
    system.fill(1)
    system.settle()
    with system.spawn(tuned=False) as workers:
        wait_for_completions(system, workers, 1, step=0.01)
    return system.completions().first - workers.spawned


def memory(system: System, jobs: int) -> tuple[float, float]:
    """(peak RSS of the worker's process tree, peak RSS of its first process), MiB."""
    system.empty()
    system.fill(jobs)
    system.settle()
    peak = parent_peak = 0.0
    with system.spawn(tuned=False) as workers:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        next_check = 0.0
        while True:
            tree = [pid for root in workers.pids for pid in process_tree(root)]
            peak = max(peak, sum(rss_bytes(pid) for pid in tree) / 2**20)
            parent_peak = max(parent_peak, rss_bytes(workers.pids[0]) / 2**20)
            if time.monotonic() >= next_check:
                workers.check_alive()
                if system.completions().count >= jobs:
                    break
                next_check = time.monotonic() + 0.25
            if time.monotonic() > deadline:
                raise TimeoutError(f"{system.name}: memory drain not done in time")
            time.sleep(0.05)
    return peak, parent_peak


def fresh_enqueue(system: System, count: int) -> dict[str, float]:
    system.empty()
    output = subprocess.run(
        [sys.executable, str(PEERS_DIR / "enqueue_client.py"), system.name, system.url, str(count)],
        check=True,
        capture_output=True,
        text=True,
        env=process_environment(),
    ).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class SideBySide:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.rows = {row.key: Row(row.key, row.label, row.unit) for row in ROWS}
        self.latency_samples: dict[str, list[list[float]]] = {name: [] for name in SYSTEMS}
        self.load_averages: list[float] = []  # 1-minute load average at each round's start

    def record(self, key: str, system: str, value: float) -> None:
        self.rows[key].runs[system].append(value)
        print(f"    {system:9} {key}: {value:,.3f} {self.rows[key].unit}", flush=True)

    def run_round(self, index: int) -> None:
        names = list(SYSTEMS) if index % 2 == 0 else list(reversed(SYSTEMS))
        self.load_averages.append(round(os.getloadavg()[0], 2))
        print(
            f"round {index + 1}: {' then '.join(names)}; load {self.load_averages[-1]}", flush=True
        )
        systems = [SYSTEMS[name](self.args.database_url, self.log_dir) for name in names]
        for system in systems:
            system.create()
        try:
            steps: list[tuple[str, Callable[[System], None]]] = [
                ("drain default", self.step_drain_default),
                ("drain tuned", self.step_drain_tuned),
                ("first job", self.step_first_job),
                ("bulk enqueue", self.step_bulk),
                ("first enqueue", self.step_first_enqueue),
                ("memory", self.step_memory),
                ("latency", self.step_latency),
            ]
            for label, step in steps:
                print(f"  round {index + 1}: {label}", flush=True)
                for system in systems:
                    step(system)
        finally:
            for system in systems:
                system.drop()

    def step_drain_default(self, system: System) -> None:
        whole, steady = drain(system, self.args.jobs, tuned=False)
        self.record("drain_default", system.name, whole)
        self.record("steady_default", system.name, steady)

    def step_drain_tuned(self, system: System) -> None:
        whole, steady = drain(system, self.args.jobs, tuned=True)
        self.record("drain_tuned", system.name, whole)
        self.record("steady_tuned", system.name, steady)

    def step_first_job(self, system: System) -> None:
        self.record("first_job", system.name, first_job(system))

    def step_bulk(self, system: System) -> None:
        result = fresh_enqueue(system, self.args.jobs)
        self.record("bulk", system.name, self.args.jobs / result["seconds"])

    def step_first_enqueue(self, system: System) -> None:
        samples = [fresh_enqueue(system, 1) for _ in range(FIRST_ENQUEUE_SAMPLES)]
        self.record(
            "first_enqueue", system.name, 1000 * statistics.median(s["seconds"] for s in samples)
        )
        self.record(
            "import", system.name, 1000 * statistics.median(s["import_seconds"] for s in samples)
        )

    def step_memory(self, system: System) -> None:
        peak, parent = memory(system, self.args.jobs)
        self.record("memory_peak", system.name, peak)
        self.record("memory_parent", system.name, parent)

    def step_latency(self, system: System) -> None:
        system.empty()
        samples = system.pickup_latencies(self.args.latency_samples, LATENCY_PAUSE)
        self.latency_samples[system.name].append(samples)
        self.record("latency_p50", system.name, 1000 * percentile(samples, 0.5))
        self.record("latency_p95", system.name, 1000 * percentile(samples, 0.95))


def settings_description() -> dict[str, str]:
    errands_tuned = " ".join(f"{k} {v}" for k, v in ERRANDS_TUNED.items())
    return {
        "errands default": f"errands worker (defaults: {os.cpu_count()} processes x 1 thread)",
        "errands tuned": f"errands worker {errands_tuned}",
        "pgqueuer default": "1 x pgq run (batch 10, uvloop, asyncpg)",
        "pgqueuer tuned": f"{PGQ_TUNED_PROCESSES} x pgq run --batch-size {PGQ_TUNED_BATCH}"
        " (uvloop, asyncpg)",
    }


def versions(server_url: str) -> dict[str, str]:
    from importlib.metadata import version

    import psycopg

    found = {name: version(name) for name in ("errands", "pgqueuer", "asyncpg", "uvloop", "typer")}
    found["psycopg"] = psycopg.__version__
    found["python"] = platform.python_version()
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    found["postgresql"] = str(row[0]) if row else "?"
    return found


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(rows: list[Row]) -> None:
    table = [("measurement", "unit", "errands", "pgqueuer", "errands/pgqueuer", "runs e | p")]
    for row in rows:
        runs = " | ".join(
            ", ".join(f"{v:,.3g}" if v < 10 else f"{v:,.0f}" for v in row.runs[name])
            for name in SYSTEMS
        )
        table.append(
            (
                row.label,
                row.unit,
                _fmt(row.median("errands")),
                _fmt(row.median("pgqueuer")),
                f"{row.ratio:.2f}x",
                runs,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _fmt(value: float) -> str:
    return f"{value:,.3g}" if value < 10 else f"{value:,.0f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/side_by_side.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server URL")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median taken; default 3)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain (default 20000)")
    parser.add_argument(
        "--latency-samples", type=int, default=100, help="pickup samples per round (default 100)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "versions": versions(args.database_url),
        "settings": settings_description(),
    }
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as log_dir:
        PYCACHE_PREFIX.append(str(Path(log_dir) / "pycache"))
        print("warm-up round (not counted): bytecode compiled, caches filled", flush=True)
        warm_args = argparse.Namespace(**{**vars(args), "jobs": 500, "latency_samples": 3})
        SideBySide(warm_args, Path(log_dir)).run_round(0)
        bench = SideBySide(args, Path(log_dir))
        for index in range(args.rounds):
            bench.run_round(index)
    report["seconds"] = round(time.time() - started, 1)
    report["load_average_per_round"] = bench.load_averages
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = list(bench.rows.values())
    report["results"] = {
        row.key: {
            "label": row.label,
            "unit": row.unit,
            **{name: {"median": row.median(name), "runs": row.runs[name]} for name in SYSTEMS},
            "ratio": row.ratio,
        }
        for row in rows
    }
    print()
    for key, value in report["settings"].items():
        print(f"{key}: {value}")
    print(f"versions: {report['versions']}")
    print()
    print_table(rows)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
