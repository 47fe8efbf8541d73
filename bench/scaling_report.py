"""What ``bench/scaling.py`` keeps of a run: each drain's record, each group count's
step, and how they are summarized and printed (medians over runs, the table)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from measures import median, percentile
from scaling_probes import CLAIM_LABEL


@dataclass
class Drain:
    jobs: int
    rate: float  # jobs/s, from the results' write times
    wall: float  # seconds from release to the last job done (as seen by polling)
    pg_cpu: float  # seconds: the bench database's backends and the background processes
    server_cpu: float  # seconds: every process of the server (other databases' too)
    worker_cpu: float  # seconds
    machine_busy: float  # share of all CPUs, 0..1
    wal: dict[str, float]
    commits: float
    max_connections: int
    mean_connections: float
    mean_active: float
    waits: dict[str, int]
    failed: int
    per_group: list[int]  # jobs each group ran, fewest first
    statements: dict[str, dict[str, float]]  # pg_stat_statements, per job (if loaded)

    @property
    def claims_per_job(self) -> float:
        return self.statements.get(CLAIM_LABEL, {}).get("calls_per_job", float("nan"))

    def summary(self, groups: int) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "rate": round(self.rate, 1),
            "wall_s": round(self.wall, 2),
            "pg_cpu_ms_per_job": round(1000 * self.pg_cpu / self.jobs, 3),
            "pg_cores": round(self.pg_cpu / self.wall, 3),
            "server_cpu_ms_per_job": round(1000 * self.server_cpu / self.jobs, 3),
            "server_cores": round(self.server_cpu / self.wall, 3),
            "per_group_jobs": self.per_group,
            "worker_cpu_ms_per_job": round(1000 * self.worker_cpu / self.jobs, 3),
            "worker_cores": round(self.worker_cpu / self.wall, 3),
            "machine_busy_pct": round(100 * self.machine_busy, 1),
            "wal_bytes_per_job": round(self.wal["wal_lsn"] / self.jobs, 1),
            "wal_records_per_job": round(self.wal["wal_records"] / self.jobs, 2),
            "wal_fpi_per_job": round(self.wal["wal_fpi"] / self.jobs, 3),
            "commits_per_job": round(self.commits / self.jobs, 3),
            "max_connections": self.max_connections,
            "connections_per_group": round(self.max_connections / groups, 2),
            "mean_active_backends": round(self.mean_active, 2),
            "waits": self.waits,
            "claims_per_job": self.claims_per_job,
            "statements": self.statements,
            "failed": self.failed,
        }


@dataclass
class Step:
    groups: int
    start_seconds: float = 0.0
    io: list[Drain] = field(default_factory=list)
    noop: list[Drain] = field(default_factory=list)
    latency: list[list[float]] = field(default_factory=list)
    latency_statements: list[dict[str, Any]] = field(default_factory=list)
    idle: list[dict[str, float]] = field(default_factory=list)
    idle_connections: int = 0


def claims_per_job(statements: dict[str, Any]) -> float:
    return float(statements.get(CLAIM_LABEL, {}).get("calls_per_job", float("nan")))


def summarize(steps: list[Step], sleep: float) -> list[dict[str, Any]]:
    base = next((s for s in steps if s.groups == 1), None)
    base_rate = median([d.rate for d in base.io]) if base else None
    rows = []
    for s in steps:
        io_rate = median([d.rate for d in s.io])
        per_group = base_rate if base_rate else min(1 / sleep, io_rate / s.groups)
        all_latency = [v for run in s.latency for v in run]

        def med(drains: list[Drain], key: str, groups: int = s.groups) -> float:
            return median([d.summary(groups)[key] for d in drains])

        rows.append(
            {
                "groups": s.groups,
                "io_rate": io_rate,
                "io_runs": [round(d.rate, 1) for d in s.io],
                "io_linear": per_group * s.groups,
                "io_efficiency_pct": 100 * io_rate / (per_group * s.groups),
                "noop_rate": median([d.rate for d in s.noop]),
                "noop_runs": [round(d.rate, 1) for d in s.noop],
                "pickup_p50_ms": 1000 * percentile(all_latency, 0.5),
                "pickup_p95_ms": 1000 * percentile(all_latency, 0.95),
                "pickup_samples": len(all_latency),
                "max_connections": max(d.max_connections for d in s.io + s.noop),
                "connections_per_group": max(d.max_connections for d in s.io + s.noop) / s.groups,
                "idle_connections": s.idle_connections,
                "io_pg_cpu_ms_per_job": med(s.io, "pg_cpu_ms_per_job"),
                "io_pg_cores": med(s.io, "pg_cores"),
                "io_server_cores": med(s.io, "server_cores"),
                "io_groups_seen": median([len(d.per_group) for d in s.io]),
                "io_worker_cores": med(s.io, "worker_cores"),
                "io_machine_busy_pct": med(s.io, "machine_busy_pct"),
                "io_commits_per_job": med(s.io, "commits_per_job"),
                "io_wal_bytes_per_job": med(s.io, "wal_bytes_per_job"),
                "noop_pg_cpu_ms_per_job": med(s.noop, "pg_cpu_ms_per_job"),
                "noop_pg_cores": med(s.noop, "pg_cores"),
                "noop_server_cpu_ms_per_job": med(s.noop, "server_cpu_ms_per_job"),
                "noop_worker_cpu_ms_per_job": med(s.noop, "worker_cpu_ms_per_job"),
                "noop_worker_cores": med(s.noop, "worker_cores"),
                "noop_machine_busy_pct": med(s.noop, "machine_busy_pct"),
                "noop_wal_bytes_per_job": med(s.noop, "wal_bytes_per_job"),
                "noop_wal_records_per_job": med(s.noop, "wal_records_per_job"),
                "noop_wal_fpi_per_job": med(s.noop, "wal_fpi_per_job"),
                "noop_commits_per_job": med(s.noop, "commits_per_job"),
                "idle_pg_cpu_pct": median([i["pg_cpu_pct"] for i in s.idle]),
                "idle_server_cpu_pct": median([i["server_cpu_pct"] for i in s.idle]),
                "idle_worker_cpu_pct": median([i["worker_cpu_pct"] for i in s.idle]),
                "idle_commits_per_s": median([i["commits_per_s"] for i in s.idle]),
                "start_seconds": s.start_seconds,
                "io_drains": [d.summary(s.groups) for d in s.io],
                "noop_drains": [d.summary(s.groups) for d in s.noop],
                "latency_ms": [[round(1000 * v, 2) for v in run] for run in s.latency],
                "latency_statements": s.latency_statements,
                "io_claims_per_job": median([d.claims_per_job for d in s.io]),
                "noop_claims_per_job": median([d.claims_per_job for d in s.noop]),
                "pickup_claims_per_job": median(
                    [claims_per_job(st) for st in s.latency_statements]
                ),
                "idle_statements_per_s": median([i["statements_per_s"] for i in s.idle]),
            }
        )
    return rows


COLUMNS = (
    ("N", "groups", "{:d}"),
    ("io jobs/s", "io_rate", "{:,.1f}"),
    ("linear", "io_linear", "{:,.0f}"),
    ("eff %", "io_efficiency_pct", "{:.0f}"),
    ("io pg ms/job", "io_pg_cpu_ms_per_job", "{:.2f}"),
    ("io pg cores", "io_pg_cores", "{:.2f}"),
    ("io wrk cores", "io_worker_cores", "{:.2f}"),
    ("io busy %", "io_machine_busy_pct", "{:.0f}"),
    ("noop jobs/s", "noop_rate", "{:,.0f}"),
    ("noop pg ms/job", "noop_pg_cpu_ms_per_job", "{:.3f}"),
    ("noop pg cores", "noop_pg_cores", "{:.2f}"),
    ("noop busy %", "noop_machine_busy_pct", "{:.0f}"),
    ("WAL B/job", "noop_wal_bytes_per_job", "{:,.0f}"),
    ("io claims/job", "io_claims_per_job", "{:.2f}"),
    ("pickup p50 ms", "pickup_p50_ms", "{:.1f}"),
    ("p95 ms", "pickup_p95_ms", "{:.1f}"),
    ("claims/pickup", "pickup_claims_per_job", "{:.1f}"),
    ("max conns", "max_connections", "{:d}"),
    ("conns/group", "connections_per_group", "{:.2f}"),
    ("idle pg %", "idle_pg_cpu_pct", "{:.1f}"),
    ("idle stmt/s", "idle_statements_per_s", "{:.1f}"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    table = [[title for title, _key, _fmt in COLUMNS]]
    table += [[fmt.format(row[key]) for _title, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for index, line in enumerate(table):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def server_settings(url: str) -> dict[str, str]:
    names = (
        "server_version",
        "max_connections",
        "shared_buffers",
        "synchronous_commit",
        "wal_level",
        "checkpoint_timeout",
        "max_wal_size",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        return {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}  # type: ignore[index]
