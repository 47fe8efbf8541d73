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
import math
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_jobs
import psycopg
from databases import PostgresBenchDatabase
from harness import wait_until, write_report
from measures import percentile
from scaling_probes import (
    CLIENT_APP,
    ActivitySampler,
    Groups,
    Monitor,
    machine_ticks,
    server_cpu,
    tree_sizes,
    with_application_name,
)
from scaling_report import (
    Drain,
    Step,
    claims_per_job,
    machine,
    print_table,
    server_settings,
    summarize,
)

import errands

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


def wait_until_ready(monitor: Monitor, groups: Groups, count: int) -> float:
    """Until all ``count`` groups are registered, have their child and are quiet
    (start-up imports done). Returns the seconds it took."""
    began = time.monotonic()

    def registered() -> bool:
        if not groups.alive():
            raise RuntimeError("a worker group exited during start-up")
        return monitor.workers() >= count

    wait_until(registered, timeout=START_TIMEOUT, step=0.2, what=f"{count} workers registered")
    wait_until(
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

    wait_until(is_quiet, timeout=START_TIMEOUT, step=0, what="worker groups quiet")
    return time.monotonic() - began


# -- one measurement -----------------------------------------------------------------------


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

        wait_until(drained, timeout=DRAIN_TIMEOUT, step=0.05, what="drain")
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
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
