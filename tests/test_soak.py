"""A soak: random faults under real workers over mixed jobs, then an accounting (issue 18).

Three ``worker_main.py`` workers (heartbeat every 1 s, dead after 5 s) run on this
module's throwaway PostgreSQL cluster (``tests/support/cluster.py``) while the test
enqueues a mix of jobs (fast; slow; failing every time; failing once) with retries,
and every 3 to 6 s strikes with one fault at random:

* ``kill``: SIGKILL a worker's whole process group (its running jobs die), and start
  a replacement;
* ``term``: SIGTERM a worker (a graceful stop) and start a replacement;
* ``stop``: SIGSTOP a worker's group for longer than the heartbeat timeout (peers
  rescue its jobs), then SIGCONT;
* ``connections``: ``pg_terminate_backend`` every connection to the database.

The faults last 2 minutes (``--soak-minutes N`` for longer). Then the workers drain
the queue and the accounting (``fault_jobs.account``) checks every job: exactly one
final outcome, retries as configured, no duplicate execution that its own attempt
(after a LOST or an ERRORED) does not explain; and each kind ends as it must. The
counts are printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fault_jobs
import psycopg
import pytest
from cluster import Cluster, pg_cluster  # noqa: F401  (the fixture)
from fault_jobs import Step, account, rows, unfinished
from worker_process import WorkerProcess

import errands
from conftest import wait_for
from errands import EnqueueOptions, enqueue_many
from errands.testing.databases import TestDatabases

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0)]  # bounded by its own deadlines

SETTINGS: dict[str, object] = {
    "import_modules": ("fault_jobs",),
    "worker_max_processes": 2,
    "heartbeat_interval": 1,
    "heartbeat_timeout": 5,
    "poll_interval": 0.1,
}
HEARTBEAT_TIMEOUT = 5.0
WORKERS = 3

#: kind: (share of the jobs enqueued, retries, Step arguments)
KINDS: dict[str, tuple[float, int, dict[str, Any]]] = {
    "fast": (0.5, 1, {}),
    "slow": (0.25, 2, {"seconds": None}),  # 0.5 to 3 s, drawn per job
    "fail": (0.125, 2, {"seconds": 0.1, "ending": "fail"}),
    "fail-once": (0.125, 2, {"ending": "fail-once"}),
}


@pytest.fixture
def soak_url(pg_cluster: Cluster, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    databases = TestDatabases(pg_cluster.url())
    try:
        with databases.database(tmp_path) as url:
            errands.configure(database_url=url)
            try:
                yield url
            finally:
                errands.configure(database_url=None)
    finally:
        databases.close()


class Soak:
    def __init__(self, cluster: Cluster, url: str, directory: Path, seed: int) -> None:
        self.cluster = cluster
        self.url = url
        self.dbname = url.rsplit("/", 1)[1].split("?")[0]
        self.directory = directory
        self.trail = directory / "trail"
        self.random = random.Random(seed)
        self.workers: list[WorkerProcess] = []  # every one started
        self.live: list[WorkerProcess] = []  # neither killed nor told to stop
        self.paused: tuple[WorkerProcess, float] | None = None  # SIGSTOPped, until
        self.jobs: dict[str, int] = {}  # token: retries
        self.kinds: dict[str, str] = {}  # token: kind
        self.faults: collections.Counter[str] = collections.Counter()

    # -- workers -------------------------------------------------------------------------
    def spawn(self) -> WorkerProcess:
        log = self.directory / f"worker{len(self.workers)}.log"
        worker = WorkerProcess.main(self.url, log, **SETTINGS)
        self.workers.append(worker)
        self.live.append(worker)
        return worker

    def victim(self) -> WorkerProcess:
        running = [w for w in self.live if self.paused is None or w is not self.paused[0]]
        return self.random.choice(running)

    # -- jobs --------------------------------------------------------------------------------
    def enqueue_some(self) -> None:
        shares = [share for share, _, _ in KINDS.values()]
        for kind in self.random.choices(list(KINDS), weights=shares, k=3):
            _, retries, arguments = KINDS[kind]
            if "seconds" in arguments and arguments["seconds"] is None:
                arguments = {**arguments, "seconds": round(self.random.uniform(0.5, 3), 2)}
            token = fault_jobs.new_token()
            self._enqueue(Step(str(self.trail), token, **arguments), retries)
            self.jobs[token] = retries
            self.kinds[token] = kind

    def _enqueue(self, job: Step, retries: int) -> None:
        for _ in range(5):
            try:
                enqueue_many([job], options=EnqueueOptions(retries=retries))
                return
            except Exception:  # our pooled connection was terminated by a fault
                if self._stored(job.token):
                    return  # the commit went through; its answer did not
                time.sleep(0.2)
        raise AssertionError(f"could not enqueue {job.token}")

    def _stored(self, token: str) -> bool:
        with psycopg.connect(self.url) as conn:
            for table in ("errands_request", "errands_process", "errands_result"):
                query = f"SELECT 1 FROM {table} WHERE parameters->'args'->>1 = %s"
                if conn.execute(query, (token,)).fetchone():
                    return True
        return False

    # -- faults ------------------------------------------------------------------------------
    def strike(self) -> str:
        choices = ["kill", "term", "connections"]
        if self.paused is None:
            choices.append("stop")
        fault = self.random.choice(choices)
        if fault == "kill":
            worker = self.victim()
            worker.signal_group(signal.SIGKILL)
            self.live.remove(worker)
            self.spawn()
        elif fault == "term":
            worker = self.victim()
            worker.signal(signal.SIGTERM)
            self.live.remove(worker)
            self.spawn()
        elif fault == "stop":
            worker = self.victim()
            worker.signal_group(signal.SIGSTOP)
            self.paused = (worker, time.monotonic() + HEARTBEAT_TIMEOUT + 2)
        else:
            self.cluster.terminate_backends(dbname=self.dbname)
        self.faults[fault] += 1
        return fault

    def resume_due(self, *, now: float | None = None) -> None:
        if self.paused is not None and (now is None or now >= self.paused[1]):
            os.killpg(self.paused[0].pid, signal.SIGCONT)
            self.paused = None

    def drained(self) -> bool:
        try:
            return unfinished(self.url) == 0 and not rows(
                self.url, "SELECT 1 FROM errands_followup LIMIT 1"
            )
        except psycopg.OperationalError:
            return False


def test_soak_random_faults_over_mixed_jobs(
    pg_cluster: Cluster,  # noqa: F811
    soak_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    minutes = float(request.config.getoption("--soak-minutes"))
    seed = int(os.environ.get("ERRANDS_SOAK_SEED", random.randrange(1 << 30)))
    soak = Soak(pg_cluster, soak_url, tmp_path, seed)
    try:
        for _ in range(WORKERS):
            soak.spawn()
        for worker in soak.live:
            worker.wait_registered()
        began = time.monotonic()
        end = began + minutes * 60
        next_fault = began + soak.random.uniform(3, 6)
        while time.monotonic() < end:
            soak.enqueue_some()
            now = time.monotonic()
            soak.resume_due(now=now)
            if now >= next_fault:
                soak.strike()
                next_fault = now + soak.random.uniform(3, 6)
            time.sleep(0.5)
        soak.resume_due()
        faulted = time.monotonic()
        wait_for(soak.drained, timeout=120, step=lambda: time.sleep(0.5))
        drain_seconds = time.monotonic() - faulted
        for worker in soak.live:
            worker.signal(signal.SIGTERM)
        exits = [w.wait(60) for w in soak.live]
        for worker in soak.workers:
            if worker.alive() and worker not in soak.live:
                worker.wait(60)  # told to stop earlier, graceful
    finally:
        soak.resume_due()
        for worker in soak.workers:
            worker.close()

    acc = account(soak_url, soak.trail, soak.jobs)
    kinds_ending: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    chains = fault_jobs.results_by_token(soak_url)
    misfits = []
    for token, kind in soak.kinds.items():
        final = [r for r in chains.get(token, []) if r["retry_request_uuid"] is None]
        status = final[0]["status"] if final else "none"
        kinds_ending[kind][status] += 1
        if (kind == "fail" and status == "SUCCESSFUL") or (
            kind in ("fast", "fail-once") and status == "ERRORED"
        ):
            misfits.append((token, kind, status))
    print(
        f"\n[soak] seed {seed}, {minutes:g} min of faults, drained {drain_seconds:.1f} s after:"
        f" faults {sum(soak.faults.values())} ({dict(soak.faults)}), workers started"
        f" {len(soak.workers)}; {acc.summary()}; final outcome by kind"
        f" { {k: dict(v) for k, v in kinds_ending.items()} }; exit codes on the last SIGTERM"
        f" {exits}"
    )
    assert acc.problems == [], acc.problems[:20]
    assert misfits == [], misfits[:20]
    assert sum(soak.faults.values()) >= minutes * 60 / 6 - 1
    assert acc.jobs >= 100
