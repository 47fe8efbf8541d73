"""errands scaling benchmark: 1, 2, 4 ... N worker groups on one PostgreSQL (issue 24).

Run it against a PostgreSQL server it may create databases on::

    python bench/scaling.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/scaling.py --database-url ... --workers 1,2,4 --quick --json out.json

For each N it creates a fresh database, migrates it, starts N separate worker
groups (``bench/worker_process.py`` subprocesses, as separate hosts would run
them), each with ONE child process and ONE thread, so that one group runs at
most ~50 jobs/s of 20 ms sleeps and linear scaling is well defined. Once all N
are registered (errands_worker rows), started (their CPU quiet) and warm (a
small no-op drain), each run measures:

* io: 400*N jobs of a 20 ms sleep (about 8 s of work at the linear rate),
  enqueued into a paused queue, then released at once; the drain rate is read
  from the results' write times (first to last, as bench/run.py does), and
  efficiency = rate(N) / (N * rate(1)).
* noop: the same with 20,000 no-op jobs: what errands and PostgreSQL cost per job.
* latency: single no-op jobs enqueued one at a time with 20-50 ms pauses, on N
  idle groups: enqueue commit to job start (p50, p95). Every insert notifies
  every listening group, so this shows what waking N groups costs.
* idle: N idle groups for a few seconds: PostgreSQL CPU and transactions per
  second (heartbeats, polls, maintenance: the load that multiplies with N).

During each drain it records: connections to the bench database (sampled from
pg_stat_activity every 50 ms, the benchmark's own excluded: max, and per group),
what the active backends wait on (wait_event_type:wait_event, "CPU" for none),
the CPU seconds of all PostgreSQL server processes (utime+stime from /proc, plus
the postmaster's reaped children) and of the worker groups, the machine's busy
share (/proc/stat), WAL bytes, records and full-page images (pg_stat_wal,
pg_current_wal_lsn; server-wide), and committed transactions in the bench
database (pg_stat_database). Each is divided by the jobs drained.

Every worker subprocess (and its process group) is killed at the end, also on
error or interrupt, and the databases are dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import bench_jobs
import psycopg
from databases import PostgresBenchDatabase
from harness import CLOCK_TICKS, WorkerProcess

import errands

QUEUE = "default"
MONITOR_APP = "errands_scaling_monitor"  # the benchmark's own connections (not counted)
CLIENT_APP = "errands_scaling_client"
SAMPLE_SECONDS = 0.05
DRAIN_TIMEOUT = 600.0
START_TIMEOUT = 300.0
ENQUEUE_CHUNK = 10_000
FIRST_GUESS_CONNECTIONS = 5.0  # per group, before one was measured (errands as of issue 24)
OWN_CONNECTIONS = 5  # the benchmark's: monitor, sampler, enqueuer, database admin


@dataclass(frozen=True)
class Scale:
    runs: int
    io_seconds: float  # of work per drain at the linear rate (N / sleep jobs per second)
    noop_jobs: int
    latency_samples: int
    idle_seconds: float


FULL = Scale(runs=2, io_seconds=8.0, noop_jobs=20_000, latency_samples=30, idle_seconds=3.0)
QUICK = Scale(runs=1, io_seconds=2.0, noop_jobs=2_000, latency_samples=10, idle_seconds=1.0)


# -- /proc: CPU of PostgreSQL, of the worker groups, of the machine -----------------------


def _proc_table() -> dict[int, tuple[str, int, list[str]]]:
    """pid -> (command name, parent pid, stat fields after the command)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry.name)] = (name, int(fields[1]), fields)
    return table


def server_cpu(postmaster: int) -> tuple[float, dict[int, float]]:
    """CPU seconds of the PostgreSQL server whose postmaster is ``postmaster``: the
    total of its process tree (utime+stime) plus the children it reaped (cutime+cstime:
    backends that exited), and each live process's own share by pid."""
    table = _proc_table()
    by_pid = {}
    total = 0
    for pid, (_name, parent, fields) in table.items():
        if pid == postmaster or parent == postmaster:
            own = int(fields[11]) + int(fields[12])
            by_pid[pid] = own / CLOCK_TICKS
            total += own
            if pid == postmaster:
                total += int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS, by_pid


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds of these processes and all their descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (_name, parent, _fields) in table.items():
        children.setdefault(parent, []).append(pid)
    total = 0
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid in table:
            fields = table[pid][2]
            total += int(fields[11]) + int(fields[12])
        pending += children.get(pid, [])
    return total / CLOCK_TICKS


def tree_sizes(roots: Sequence[int]) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (_name, parent, _fields) in table.items():
        children.setdefault(parent, []).append(pid)
    sizes = []
    for root in roots:
        pending, size = [root], 0
        while pending:
            pid = pending.pop()
            size += pid in table
            pending += children.get(pid, [])
        sizes.append(size)
    return sizes


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # steal included, guest counted in user already
    return total - idle, total


# -- the benchmark's view of the database -----------------------------------------------


CLAIM_LABEL = "The jobs without limits (limited jobs: see claim_limited below)."


def statement_label(query: str) -> str:
    for line in query.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("--").strip()[:70]
    return ""


def with_application_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"application_name": name})))


class Monitor:
    """One persistent connection to the bench database for polling (a connection per
    poll would add backends, and their start-up CPU, to what is measured)."""

    def __init__(self, db: PostgresBenchDatabase) -> None:
        self.db = db
        self.conn = psycopg.connect(with_application_name(db.url, MONITOR_APP), autocommit=True)
        backend = int(self.value("SELECT pg_backend_pid()"))
        self.postmaster = _proc_table()[backend][1]  # a backend's parent (server on this host)
        self.statements = bool(
            self.value(
                "SELECT 'pg_stat_statements' = ANY(string_to_array("
                "replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
            )
        )
        if self.statements:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def reset_statements(self) -> None:
        """Forget this database's statement statistics (pg_stat_statements, if loaded)."""
        if self.statements:
            self.conn.execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
                " WHERE datname = current_database()), 0)"
            )

    def statement_stats(self, jobs: int) -> dict[str, dict[str, float]]:
        """Top-level statements of the groups since the reset, per job: calls, rows, and
        execution ms, labelled by the first line of their text (errands' statements
        start with the comment of their named block in queries.sql)."""
        if not self.statements:
            return {}
        rows = self.conn.execute(
            "SELECT query, calls, rows, total_exec_time FROM pg_stat_statements AS s"
            " JOIN pg_database AS d ON d.oid = s.dbid"
            " WHERE d.datname = current_database() AND s.toplevel"
            " AND s.query NOT LIKE %s ORDER BY total_exec_time DESC",
            ("%pg_stat%",),
        ).fetchall()
        stats: dict[str, dict[str, float]] = {}
        for query, calls, returned, total_ms in rows:
            label = statement_label(query)
            entry = stats.setdefault(label, {"calls": 0, "rows": 0, "ms": 0.0})
            entry["calls"] += calls
            entry["rows"] += returned
            entry["ms"] += total_ms
        return {
            label: {
                "calls_per_job": round(e["calls"] / jobs, 3),
                "rows_per_call": round(e["rows"] / e["calls"], 2) if e["calls"] else 0,
                "exec_ms_per_job": round(e["ms"] / jobs, 4),
                "mean_ms": round(e["ms"] / e["calls"], 3) if e["calls"] else 0,
            }
            for label, e in list(stats.items())[:12]
        }

    def close(self) -> None:
        self.conn.close()

    def value(self, query: str, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    def workers(self) -> int:
        return int(self.value("SELECT count(*) FROM errands_worker"))

    def remaining(self) -> int:
        return int(
            self.value(
                "SELECT (SELECT count(*) FROM errands_request WHERE start_at <= now())"
                " + (SELECT count(*) FROM errands_process)"
            )
        )

    def started_at(self, request_uuid: Any) -> float | None:
        row = self.conn.execute(
            "SELECT extract(epoch FROM started_at)::float8 FROM errands_result"
            " WHERE request_uuid = %s",
            (request_uuid,),
        ).fetchone()
        return None if row is None else float(row[0])

    def pause(self) -> None:
        self.conn.execute(
            "INSERT INTO errands_paused_queue (queue) VALUES (%s) ON CONFLICT DO NOTHING",
            (QUEUE,),
        )

    def resume(self) -> None:
        """Resume the queue and wake every listening worker in the same transaction
        (resume_queue itself sends no notification: workers would wait for their poll)."""
        with self.conn.transaction():
            self.conn.execute("DELETE FROM errands_paused_queue WHERE queue = %s", (QUEUE,))
            self.conn.execute("SELECT pg_notify('errands_jobs', %s)", (QUEUE,))

    def clear_results(self) -> None:
        self.conn.execute("DELETE FROM errands_result")
        self.conn.execute("VACUUM ANALYZE errands_request")
        self.conn.execute("VACUUM ANALYZE errands_process")
        self.conn.execute("VACUUM ANALYZE errands_result")

    def checkpoint(self) -> None:
        self.conn.execute("CHECKPOINT")

    def counters(self) -> dict[str, float]:
        """Server and database counters, read in one statement."""
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,"
            " w.wal_records::float8, w.wal_fpi::float8, w.wal_bytes::float8,"
            " d.xact_commit::float8, d.xact_rollback::float8"
            " FROM pg_stat_wal AS w, pg_stat_database AS d WHERE d.datname = current_database()"
        ).fetchone()
        assert row is not None
        # pg_stat_database is cached for the transaction (autocommit: for the statement)
        keys = ("wal_lsn", "wal_records", "wal_fpi", "wal_bytes", "commits", "rollbacks")
        return dict(zip(keys, row, strict=True))

    def drain_window(self) -> tuple[int, int, float, float]:
        row = self.conn.execute(
            "SELECT count(*), extract(epoch FROM min(created_at))::float8,"
            " extract(epoch FROM max(created_at))::float8 FROM errands_result"
            " WHERE status = 'SUCCESSFUL'"
        ).fetchone()
        assert row is not None
        first = self.value(
            "SELECT count(*) FROM errands_result WHERE created_at = to_timestamp(%s)", (row[1],)
        )
        return int(row[0]), int(first), float(row[1]), float(row[2])

    def per_group(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT count(*) FROM errands_result GROUP BY worker_id ORDER BY 1"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def failed(self) -> int:
        return int(self.value("SELECT count(*) FROM errands_result WHERE status <> 'SUCCESSFUL'"))


class ActivitySampler:
    """pg_stat_activity of the bench database every ``SAMPLE_SECONDS`` on a thread:
    connections (the benchmark's own left out) and what the active ones wait on."""

    def __init__(self, db: PostgresBenchDatabase) -> None:
        self.conn = psycopg.connect(with_application_name(db.url, MONITOR_APP), autocommit=True)
        self.stop_event = threading.Event()
        self.connections: list[int] = []
        self.active: list[int] = []
        self.waits: Counter[str] = Counter()
        self.pids: set[int] = set()  # the bench database's backends, and background ones
        self.groups_active: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActivitySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self.conn.close()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            rows = self.conn.execute(
                "SELECT pid, backend_type = 'client backend', state, wait_event_type,"
                " wait_event FROM pg_stat_activity"
                " WHERE (datname = current_database() AND backend_type = 'client backend'"
                " AND application_name NOT IN (%s, %s))"
                " OR backend_type <> 'client backend'",
                (MONITOR_APP, CLIENT_APP),
            ).fetchall()
            self.pids.update(r[0] for r in rows)
            clients = [r for r in rows if r[1]]
            self.connections.append(len(clients))
            active = [r for r in clients if r[2] == "active"]
            self.active.append(len(active))
            for *_rest, kind, event in active:
                self.waits["CPU" if kind is None else f"{kind}:{event}"] += 1
            self.stop_event.wait(SAMPLE_SECONDS)


# -- worker groups -------------------------------------------------------------------------


class Groups:
    """N worker groups (one child, one thread each), always stopped and killed."""

    def __init__(self, url: str, count: int, settings: dict[str, Any]) -> None:
        self.workers: list[WorkerProcess] = []
        for _ in range(count):
            self.workers.append(WorkerProcess(url, settings))

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pids)

    def alive(self) -> bool:
        return all(w.process.poll() is None for w in self.workers)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to all at once, then wait; SIGKILL to whatever is left, groups included."""
        for worker in self.workers:
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)  # no child may outlive the run


def wait_for(condition: Any, *, timeout: float, step: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(step)


def wait_until_ready(monitor: Monitor, groups: Groups, count: int) -> float:
    """Until all ``count`` groups are registered, have their child and are quiet
    (start-up imports done). Returns the seconds it took."""
    began = time.monotonic()

    def registered() -> bool:
        if not groups.alive():
            raise RuntimeError("a worker group exited during start-up")
        return monitor.workers() >= count

    wait_for(registered, timeout=START_TIMEOUT, step=0.2, what=f"{count} workers registered")
    wait_for(
        lambda: min(tree_sizes(groups.pids)) >= 2,
        timeout=START_TIMEOUT,
        step=0.2,
        what="every group's child process started",
    )
    quiet = max(0.1, 0.01 * count)  # cores: idle groups poll and beat, little else

    def is_quiet() -> bool:
        before = groups.cpu_seconds()
        time.sleep(1.0)
        return groups.cpu_seconds() - before < quiet

    wait_for(is_quiet, timeout=START_TIMEOUT, step=0, what="worker groups quiet")
    return time.monotonic() - began


# -- one measurement -----------------------------------------------------------------------


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


def fill(jobs: list[errands.Job]) -> None:
    for start in range(0, len(jobs), ENQUEUE_CHUNK):
        errands.enqueue_many(jobs[start : start + ENQUEUE_CHUNK])


def drain(db: PostgresBenchDatabase, monitor: Monitor, groups: Groups, jobs: list[Any]) -> Drain:
    """Fill a paused queue, release it to the idle groups at once, wait until it is empty."""
    monitor.clear_results()
    monitor.pause()
    fill(jobs)
    monitor.checkpoint()  # every drain starts from the same WAL state
    monitor.reset_statements()
    before = monitor.counters()
    pg_before, pids_before = server_cpu(monitor.postmaster)
    workers_before, busy_before = groups.cpu_seconds(), machine_ticks()
    start = time.monotonic()
    with ActivitySampler(db) as sampler:
        monitor.resume()

        def drained() -> bool:
            if not groups.alive():
                raise RuntimeError("a worker group exited during a drain")
            return monitor.remaining() == 0

        wait_for(drained, timeout=DRAIN_TIMEOUT, step=0.05, what="drain")
    wall = time.monotonic() - start
    pg_after, pids_after = server_cpu(monitor.postmaster)
    pg_cpu = pg_after - pg_before
    bench_cpu = sum(pids_after.get(p, 0) - pids_before.get(p, 0) for p in sampler.pids)
    worker_cpu = groups.cpu_seconds() - workers_before
    busy_after = machine_ticks()
    after = monitor.counters()
    count, first_count, first, last = monitor.drain_window()
    rate = (count - first_count) / (last - first) if last > first else float("nan")
    return Drain(
        jobs=len(jobs),
        rate=rate,
        wall=wall,
        pg_cpu=bench_cpu,
        server_cpu=pg_cpu,
        worker_cpu=worker_cpu,
        machine_busy=(busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]),
        wal={k: after[k] - before[k] for k in ("wal_lsn", "wal_records", "wal_fpi", "wal_bytes")},
        # the monitor's own statements are autocommit transactions too: not subtracted
        # (a few hundred over a drain; see the docs)
        commits=after["commits"] - before["commits"],
        max_connections=max(sampler.connections, default=0),
        mean_connections=statistics.fmean(sampler.connections) if sampler.connections else 0,
        mean_active=statistics.fmean(sampler.active) if sampler.active else 0,
        waits=dict(sampler.waits.most_common(8)),
        failed=monitor.failed(),
        per_group=monitor.per_group(),
        statements=monitor.statement_stats(len(jobs)),
    )


def pickup_latency(monitor: Monitor, samples: int) -> tuple[list[float], dict[str, Any]]:
    """Seconds from an enqueue's commit to its job's start, groups idle between samples;
    and the statements the groups ran per job meanwhile (pg_stat_statements, if loaded)."""
    monitor.reset_statements()
    latencies = []
    for _ in range(samples):
        time.sleep(random.uniform(0.02, 0.05))
        request = bench_jobs.Noop().run_in_worker()
        committed = time.time()
        assert request is not None
        deadline = time.monotonic() + 60
        while (started := monitor.started_at(request.uuid)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("a job's start: not seen within 60 s")
            time.sleep(0.002)
        latencies.append(started - committed)
    return latencies, monitor.statement_stats(samples)


def idle_load(
    db: PostgresBenchDatabase, monitor: Monitor, groups: Groups, seconds: float
) -> dict[str, float]:
    """PostgreSQL CPU and transactions per second with every group idle."""
    time.sleep(0.5)
    monitor.reset_statements()
    before = monitor.counters()
    pg_before, pids_before = server_cpu(monitor.postmaster)
    workers_before = groups.cpu_seconds()
    start = time.monotonic()
    with ActivitySampler(db) as sampler:
        time.sleep(seconds)
    elapsed = time.monotonic() - start
    pg_after, pids_after = server_cpu(monitor.postmaster)
    pg = sum(pids_after.get(p, 0) - pids_before.get(p, 0) for p in sampler.pids)
    workers = groups.cpu_seconds() - workers_before
    after = monitor.counters()
    return {
        "pg_cpu_pct": round(100 * pg / elapsed, 2),
        "server_cpu_pct": round(100 * (pg_after - pg_before) / elapsed, 2),
        "connections": max(sampler.connections, default=0),
        "worker_cpu_pct": round(100 * workers / elapsed, 2),
        # pg_stat_database lags (an idle backend reports up to 10 s late): a rough figure
        "commits_per_s": round((after["commits"] - before["commits"]) / elapsed, 1),
        "statements_per_s": round(
            sum(e["calls_per_job"] for e in monitor.statement_stats(1).values()) / elapsed, 1
        ),
    }


# -- per N ---------------------------------------------------------------------------------


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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(
    server_url: str, count: int, scale: Scale, sleep: float, *, result_notify: bool = True
) -> Step:
    step = Step(groups=count)
    db = PostgresBenchDatabase(server_url)
    db.create()
    groups: Groups | None = None
    monitor: Monitor | None = None
    try:
        errands.configure(database_url=with_application_name(db.url, CLIENT_APP))
        monitor = Monitor(db)
        if not result_notify:  # the diagnostic of --no-result-notify (see parse_args)
            monitor.conn.execute("ALTER TABLE errands_result DISABLE TRIGGER errands_result_notify")
        settings = {"worker_max_processes": 1, "worker_threads": 1}
        groups = Groups(db.url, count, settings)
        step.start_seconds = wait_until_ready(monitor, groups, count)
        print(f"  {count} groups ready in {step.start_seconds:.1f} s", flush=True)
        # Warm-up with the I/O-bound job: fresh groups hold the floor of their claim-ahead
        # (10 jobs), which 20 ms jobs keep. The no-op drains come last: after them the
        # adaptive claim-ahead is at its ceiling (200 per group), and the first group
        # woken would take 200 sleeps (4 s of work) alone (see docs/scaling.md).
        io_jobs = round(scale.io_seconds * count / sleep)
        drain(db, monitor, groups, [bench_jobs.SleepIO(sleep) for _ in range(2 * count)])
        for run in range(scale.runs):
            io = drain(db, monitor, groups, [bench_jobs.SleepIO(sleep) for _ in range(io_jobs)])
            step.io.append(io)
            print(
                f"  N={count} io run {run + 1}: {io.rate:,.1f} jobs/s, {io.wall:.1f} s,"
                f" pg {1000 * io.pg_cpu / io.jobs:.2f} ms/job, {io.max_connections} conns,"
                f" groups {len(io.per_group)} ({io.per_group[0]}..{io.per_group[-1]} jobs),"
                f" busy {100 * io.machine_busy:.0f}%, claims/job {io.claims_per_job:.2f}",
                flush=True,
            )
        for run in range(scale.runs):
            monitor.clear_results()
            latencies, statements = pickup_latency(monitor, scale.latency_samples)
            step.latency.append(latencies)
            step.latency_statements.append(statements)
            step.idle.append(idle_load(db, monitor, groups, scale.idle_seconds))
            step.idle_connections = max(step.idle_connections, int(step.idle[-1]["connections"]))
            lat = step.latency[-1]
            print(
                f"  N={count} latency run {run + 1}: p50 {1000 * percentile(lat, 0.5):.1f} ms"
                f" p95 {1000 * percentile(lat, 0.95):.1f} ms,"
                f" claims/job {claims_per_job(step.latency_statements[-1]):.1f};"
                f" idle {step.idle[-1]}",
                flush=True,
            )
        for run in range(scale.runs):
            noop = drain(db, monitor, groups, [bench_jobs.Noop() for _ in range(scale.noop_jobs)])
            step.noop.append(noop)
            print(
                f"  N={count} noop run {run + 1}: {noop.rate:,.0f} jobs/s,"
                f" pg {1000 * noop.pg_cpu / noop.jobs:.3f} ms/job"
                f" ({noop.pg_cpu / noop.wall:.2f} cores), workers"
                f" {noop.worker_cpu / noop.wall:.2f} cores,"
                f" wal {noop.wal['wal_lsn'] / noop.jobs:,.0f} B/job,"
                f" busy {100 * noop.machine_busy:.0f}%",
                flush=True,
            )
    finally:
        if groups is not None:
            groups.stop()
        if monitor is not None:
            monitor.close()
        errands.configure(database_url="")
        db.drop()
    return step


# -- report --------------------------------------------------------------------------------


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


def free_connections(url: str) -> int:
    """Client connections the server would still accept (for a superuser, which the
    benchmark's role is; the groups use it too)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    return int(row[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/scaling.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        required=True,
        help="PostgreSQL server (postgresql://user@host:port/any_db): a new database is "
        "created there for each N and dropped afterwards",
    )
    parser.add_argument(
        "--workers",
        default="1,2,4,8,16,32",
        help="comma-separated numbers of worker groups (default 1,2,4,8,16,32)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run, ~2 s of I/O-bound work, 2,000 no-op jobs, 10 latency samples: a "
        "smoke test, not figures to publish",
    )
    parser.add_argument("--runs", type=int, help="runs per N (median taken; default 2)")
    parser.add_argument(
        "--sleep", type=float, default=0.02, help="seconds each I/O-bound job sleeps (0.02)"
    )
    parser.add_argument("--noop-jobs", type=int, help="no-op jobs per drain (default 20,000)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--no-result-notify",
        action="store_true",
        help="diagnostic, not a configuration: disable the trigger that sends NOTIFY "
        "errands_results for every statement writing results (in the bench database "
        "only), to measure what the server-wide NOTIFY lock taken at each completion's "
        "commit costs; waiting for a result then falls back to polling",
    )
    args = parser.parse_args(argv)
    try:
        args.workers = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error("--workers: expected comma-separated whole numbers")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers: every number must be at least 1")
    if not args.database_url.startswith(("postgresql://", "postgres://")):
        parser.error("--database-url: a postgresql:// URL (the scaling bench is PostgreSQL only)")
    return args


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: workers killed, database dropped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.runs:
        scale = Scale(**{**scale.__dict__, "runs": args.runs})
    if args.noop_jobs:
        scale = Scale(**{**scale.__dict__, "noop_jobs": args.noop_jobs})
    signal.signal(signal.SIGTERM, _terminated)
    started = time.time()
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/scaling.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "server": server_settings(args.database_url),
        "scale": scale.__dict__,
        "sleep": args.sleep,
        "result_notify": not args.no_result_notify,
    }
    steps: list[Step] = []
    skipped = []
    per_group = FIRST_GUESS_CONNECTIONS
    for count in args.workers:
        free = free_connections(args.database_url)
        needed = math.ceil(per_group * count) + OWN_CONNECTIONS
        if needed > free:
            # Running out would fail the groups' start-up, and other clients of a shared
            # server (a test suite) with "too many clients": measure nothing instead.
            why = (
                f"needs about {needed} connections ({per_group:.2f} per group, as measured"
                f" at the previous N, + {OWN_CONNECTIONS}), the server has {free} free"
            )
            print(f"N={count}: skipped: {why}", flush=True)
            skipped.append({"groups": count, "reason": why})
            continue
        print(f"N={count} ...", flush=True)
        steps.append(
            measure(
                args.database_url,
                count,
                scale,
                args.sleep,
                result_notify=not args.no_result_notify,
            )
        )
        per_group = max(d.max_connections for d in steps[-1].io) / count
    rows = summarize(steps, args.sleep)
    report["skipped"] = skipped
    report["seconds"] = round(time.time() - started, 1)
    report["results"] = rows
    print()
    print_table(rows)
    for skip in skipped:
        print(f"N={skip['groups']} skipped: {skip['reason']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
