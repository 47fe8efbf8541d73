"""What ``bench/scaling.py`` reads while it runs: CPU from /proc (the PostgreSQL
server, the worker groups, the machine), the bench database through one persistent
connection and a pg_stat_activity sampler, and the worker groups themselves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
from databases import PostgresBenchDatabase
from harness import CLOCK_TICKS, WorkerProcess

QUEUE = "default"
MONITOR_APP = "errands_scaling_monitor"  # the benchmark's own connections (not counted)
CLIENT_APP = "errands_scaling_client"
SAMPLE_SECONDS = 0.05

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
