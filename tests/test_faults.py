"""Faults under real workers on a PostgreSQL cluster of the test's own (issue 18, item 7).

Each test starts ``worker_main.py`` workers (heartbeat every 1 s, dead after 5 s)
on a fresh database of this module's throwaway cluster (``tests/support/cluster.py``:
initdb/pg_ctl on its own port, so that stopping it touches nothing else), some
through a TCP proxy that can cut or black-hole their connections
(``tests/support/proxy.py``). The jobs (``tests/support/fault_jobs.py``) append each
execution to a trail, and every test ends with an accounting of the trail against
the database: every job exactly one final result, retries as configured, no
execution that no attempt of its own explains. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fault_jobs
import psycopg
import pytest
from cluster import Cluster, pg_cluster  # noqa: F401  (the fixture)
from fault_jobs import Step, account, executions, rows, unfinished
from proxy import Proxy
from worker_process import WorkerProcess

import errands
from conftest import wait_for
from errands import EnqueueOptions, enqueue_many
from errands.backends import open_backend
from errands.testing.databases import TestDatabases

pytestmark = pytest.mark.slow  # real workers, a real cluster stopped and restarted

#: The issue's settings: a heartbeat every second, dead after 5 s of silence.
FAULT_SETTINGS: dict[str, object] = {
    "import_modules": ("fault_jobs",),
    "worker_max_processes": 2,
    "heartbeat_interval": 1,
    "heartbeat_timeout": 5,
    "poll_interval": 0.1,
}
HEARTBEAT_TIMEOUT = 5.0
PARTITION_SECONDS = 14.0


@dataclass
class Rig:
    """A fresh database on the module's cluster, its workers, proxies and job trail."""

    cluster: Cluster
    url: str
    directory: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)

    @property
    def trail(self) -> Path:
        return self.directory / "trail"

    @property
    def dbname(self) -> str:
        return self.url.rsplit("/", 1)[1].split("?")[0]

    def proxy(self) -> Proxy:
        proxy = Proxy(self.cluster.port)
        self.proxies.append(proxy)
        return proxy

    def spawn(self, *, through: Proxy | None = None, **values: Any) -> WorkerProcess:
        url = through.url(self.url) if through is not None else self.url
        log = self.directory / f"worker{len(self.workers)}.log"
        worker = WorkerProcess.main(url, log, **{**FAULT_SETTINGS, **values})
        self.workers.append(worker)
        return worker

    def worker_id(self, worker: WorkerProcess) -> uuid.UUID:
        return worker.wait_registered(url=self.url).worker_id

    def enqueue(self, count: int, *, retries: int = 0, **step: Any) -> dict[str, int]:
        """``count`` Step jobs; their tokens with the retries they were given."""
        tokens = [fault_jobs.new_token() for _ in range(count)]
        jobs = [Step(str(self.trail), token, **step) for token in tokens]
        enqueue_many(jobs, options=EnqueueOptions(retries=retries))
        return dict.fromkeys(tokens, retries)

    def results(self) -> int:
        return int(rows(self.url, "SELECT count(*) AS n FROM errands_result")[0]["n"])

    def drained(self) -> bool:
        try:
            return unfinished(self.url) == 0 and not rows(
                self.url, "SELECT 1 FROM errands_followup LIMIT 1"
            )
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        for proxy in self.proxies:
            proxy.close()


@pytest.fixture(scope="module")
def databases(pg_cluster: Cluster) -> Iterator[TestDatabases]:  # noqa: F811
    databases = TestDatabases(pg_cluster.url())
    try:
        yield databases
    finally:
        if not pg_cluster.running():
            pg_cluster.start()
        databases.close()


@pytest.fixture
def rig(
    pg_cluster: Cluster,  # noqa: F811
    databases: TestDatabases,
    tmp_path: Path,
) -> Iterator[Rig]:
    if not pg_cluster.running():
        pg_cluster.start()
    with databases.database(tmp_path) as url:
        errands.configure(database_url=url)
        rig = Rig(pg_cluster, url, tmp_path)
        try:
            yield rig
        finally:
            rig.close()
            errands.configure(database_url=None)
            if not pg_cluster.running():
                pg_cluster.start()  # to drop the database


def stop_all(workers: list[WorkerProcess]) -> None:
    """SIGTERM every live worker and wait: each must exit 0."""
    for worker in workers:
        if worker.alive():
            worker.signal(signal.SIGTERM)
    for worker in workers:
        code = worker.wait(60)
        assert code == 0, f"worker exited {code}; its log:\n{worker.log()}"


def report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k} {v}" for k, v in figures.items()))


def result_times(url: str) -> list[float]:
    found = rows(url, "SELECT extract(epoch FROM created_at) AS t FROM errands_result ORDER BY 1")
    return [float(r["t"]) for r in found]


def lost_times(url: str) -> list[float]:
    """When each distinct rescue wrote its LOST results (epoch seconds)."""
    found = rows(
        url,
        "SELECT DISTINCT extract(epoch FROM created_at) AS t FROM errands_result"
        " WHERE status = 'LOST' ORDER BY 1",
    )
    return [float(r["t"]) for r in found]


# -- PostgreSQL restarted mid-drain ----------------------------------------------------------


def test_two_restarts_during_a_drain_lose_and_repeat_nothing(rig: Rig) -> None:
    jobs = rig.enqueue(3000)
    workers = [rig.spawn(), rig.spawn()]
    for worker in workers:
        rig.worker_id(worker)
    restarts: list[tuple[float, float]] = []
    started = time.monotonic()
    for threshold in (600, 1800):
        wait_for(lambda t=threshold: rig.results() >= t, timeout=60, step=lambda: time.sleep(0.02))
        before = time.time()
        rig.cluster.restart()
        restarts.append((before, time.time()))
    wait_for(rig.drained, timeout=90, step=lambda: time.sleep(0.1))
    drain_seconds = time.monotonic() - started

    assert all(w.alive() for w in workers), "a worker exited during the restarts"
    acc = account(rig.url, rig.trail, jobs)
    # How long result writes paused around each restart: the longest gap between
    # two results written from just before the restart on.
    times = result_times(rig.url)
    pauses = []
    for n, (before, _after) in enumerate(restarts):
        until = restarts[n + 1][0] if n + 1 < len(restarts) else float("inf")
        around = [t for t in times if before - 0.5 <= t < until]
        pauses.append(max(b - a for a, b in itertools.pairwise(around)))
    report(
        "restart twice mid-drain",
        jobs=len(jobs),
        restarts=len(restarts),
        executions=acc.executions,
        duplicates=acc.duplicates_explained,
        drain_s=f"{drain_seconds:.1f}",
        restart_s=[f"{b - a:.2f}" for a, b in restarts],
        longest_write_pause_s=[f"{p:.2f}" for p in pauses],
        summary=acc.summary(),
        rescued_s_after_each_restart=[
            f"{t - a:.2f}"
            for t in lost_times(rig.url)
            for a in [max((a for _, a in restarts if a <= t), default=started)]
        ][:3],
    )
    assert acc.problems == [], acc.problems[:20]
    assert acc.by_status == {"SUCCESSFUL": 3000}, acc.summary()
    assert acc.executions == 3000 and acc.duplicates_explained == 0, acc.summary()
    # Stopped after the restarts, each exits 0: its last act (deregister_worker) does not
    # fail on a pooled connection the restarts closed.
    stop_all(workers)
    assert rows(rig.url, "SELECT * FROM errands_worker") == []


# -- PostgreSQL down for longer than the heartbeat timeout -------------------------------------


def test_an_outage_longer_than_the_heartbeat_timeout_keeps_late_outcomes(rig: Rig) -> None:
    """Issue 18 item 4, as the README's "Late outcomes" says: a job that ran to success
    during the outage, after a peer recorded it LOST, stays LOST with its success on
    the record, and its retry, not started yet, is withdrawn: it runs once."""
    # 3 s jobs: those running when the server stops end during the outage. Half
    # have a retry, due 8 s after the rescue: later than the late outcomes arrive.
    jobs: dict[str, int] = {}
    for _ in range(6):
        jobs |= rig.enqueue(1, retries=0, seconds=3)
        jobs |= rig.enqueue(1, retries=1, seconds=3, delay=8)
    workers = [rig.spawn(worker_max_pending_per_process=1) for _ in range(2)]
    ids = [rig.worker_id(w) for w in workers]
    wait_for(lambda: len(executions(rig.trail)) >= 4, timeout=30)
    stopped = time.time()
    rig.cluster.stop()
    time.sleep(HEARTBEAT_TIMEOUT + 3)
    rig.cluster.start()
    outage = time.time() - stopped
    # The peer that gets through first: every worker is silent for more than the
    # heartbeat timeout, so it rescues them all (a worker of another host would).
    peer = open_backend(rig.url)
    try:
        rescued = peer.rescue_stale_workers(timeout_seconds=HEARTBEAT_TIMEOUT, rescuer=uuid.uuid4())
    finally:
        peer.close()
    assert {r.worker_id for r in rescued} <= set(ids) and rescued
    back = time.time()
    wait_for(rig.drained, timeout=60, step=lambda: time.sleep(0.2))
    recovered = time.time() - back
    stop_all(workers)

    acc = account(rig.url, rig.trail, jobs)
    late_successes = [(r, e) for r, e in acc.late if e.outcome == "end"]
    report(
        "outage past the heartbeat timeout",
        jobs=len(jobs),
        outage_s=f"{outage:.1f}",
        rescued=len(rescued),
        rescued_with_a_retry=sum(jobs[fault_jobs.token_of(r.parameters) or ""] for r in rescued),
        late_successes=len(late_successes),
        drained_after_s=f"{recovered:.1f}",
        summary=acc.summary(),
    )
    assert late_successes, "no job ran to its end during the outage: nothing was tested"
    assert acc.problems == [], acc.problems
    for result, execution in late_successes:
        # The record says what happened: the job succeeded (LOST annotated with it).
        assert fault_jobs.late_success_noted(result), result
        # A late SUCCESSFUL withdraws the retry that had not started: one execution.
        ran = [e for e in executions(rig.trail) if e.token == execution.token]
        assert len(ran) == 1, (result, ran)


# -- a partition of one worker ---------------------------------------------------------------


def test_a_partitioned_worker_is_rescued_and_runs_nothing_it_held_once_healed(rig: Rig) -> None:
    """Issue 18 item 2: a worker cut off (its packets held, nothing refused) is rescued
    by a peer after the heartbeat timeout, says in its log that it is cut off, and once
    healed runs none of the jobs it held that the peer rescued."""
    jobs = rig.enqueue(14, retries=1, seconds=3)
    proxy = rig.proxy()
    # The worker cut off: one job process, three more jobs held in hand.
    cut_off = rig.spawn(through=proxy, worker_max_processes=1, worker_max_pending_per_process=3)
    cut_off_id = rig.worker_id(cut_off)

    def held() -> list[dict[str, Any]]:
        return rows(rig.url, f"SELECT * FROM errands_process WHERE worker_id = '{cut_off_id}'")

    wait_for(lambda: len(held()) >= 3 and any(p["started_at"] for p in held()), timeout=30)
    peer = rig.spawn(worker_max_pending_per_process=1)
    rig.worker_id(peer)
    proxy.black_hole()
    partitioned = time.time()
    log_before = len(cut_off.log())
    time.sleep(0.5)  # a write in flight lands or never does
    held_before = {str(p["uuid"]) for p in held()}

    def rescued() -> list[dict[str, Any]]:
        return rows(
            rig.url,
            "SELECT process_uuid, extract(epoch FROM created_at) AS t FROM errands_result"
            f" WHERE status = 'LOST' AND worker_id = '{cut_off_id}'",
        )

    wait_for(lambda: bool(rescued()), timeout=30, step=lambda: time.sleep(0.1))
    detected = min(float(r["t"]) for r in rescued()) - partitioned
    # Longer than the worker takes to notice (database_timeout, 10 s by default) and
    # than the heartbeat timeout: it is declared dead before the partition heals.
    time.sleep(max(0.0, partitioned + PARTITION_SECONDS - time.time()))
    said = cut_off.log()[log_before:]  # what the worker logged while cut off
    proxy.heal()
    healed = time.time()
    wait_for(rig.drained, timeout=60, step=lambda: time.sleep(0.2))
    recovered = time.time() - healed
    assert cut_off.alive(), f"the healed worker exited; its log:\n{cut_off.log()}"
    stop_all([cut_off, peer])

    acc = account(rig.url, rig.trail, jobs)
    lost = {str(r["process_uuid"]) for r in rescued()}
    report(
        "partition of one worker",
        jobs=len(jobs),
        held=len(held_before),
        rescued=len(lost),
        detection_s=f"{detected:.1f}",
        partition_s=f"{healed - partitioned:.1f}",
        drained_after_heal_s=f"{recovered:.1f}",
        summary=acc.summary(),
    )
    assert lost == held_before, "the peer rescued other jobs than those the worker held"
    assert detected < HEARTBEAT_TIMEOUT + 3
    assert acc.problems == [], acc.problems
    # Cut off, it notices (its calls have deadlines) and says so before the partition ends.
    assert said.strip(), "the worker logged nothing while it was cut off"
    # Healed, the worker learns it was declared dead: what it held and had not
    # started was rescued, and it must not run it now.
    assert [e for e in acc.after_rescue if e.started >= healed] == [], cut_off.log()


# -- the LISTEN connection killed ------------------------------------------------------------


def pickup_seconds(rig: Rig) -> float:
    """Enqueue one job; seconds from the enqueue call to the job's start."""
    enqueued = time.time()
    token = next(iter(rig.enqueue(1)))
    wait_for(lambda: any(e.token == token for e in executions(rig.trail)), timeout=30)
    (run,) = [e for e in executions(rig.trail) if e.token == token]
    return run.started - enqueued


def test_a_killed_listen_connection_leaves_the_next_pickup_fast(rig: Rig) -> None:
    # Polls 30 s apart: a pickup within a second comes from a notification.
    worker = rig.spawn(poll_interval=30)
    rig.worker_id(worker)
    before = [pickup_seconds(rig) for _ in range(3)]

    def listeners() -> list[dict[str, Any]]:
        return rows(
            rig.cluster.url(),
            "SELECT pid FROM pg_stat_activity WHERE query ILIKE 'listen%'"
            f" AND datname = '{rig.dbname}'",
        )

    wait_for(lambda: len(listeners()) == 1, timeout=10)
    killed = rig.cluster.terminate_backends(
        dbname=rig.dbname, where="query ILIKE %s", params=("listen%",)
    )
    assert killed == 1
    first = pickup_seconds(rig)
    after = [pickup_seconds(rig) for _ in range(3)]
    assert worker.alive()
    stop_all([worker])
    report(
        "LISTEN connection killed",
        pickups_before_ms=[round(s * 1000) for s in before],
        first_after_ms=round(first * 1000),
        then_ms=[round(s * 1000) for s in after],
    )
    assert first < 1.5
    assert max(after) < 0.5


# -- self-rescue after an outage -------------------------------------------------------------


def test_a_worker_never_records_its_own_jobs_lost_after_an_outage(rig: Rig) -> None:
    jobs = rig.enqueue(24, retries=0, seconds=1)
    # Alone, holding 2 running jobs and up to 20 more: after the outage its own
    # heartbeat is older than the timeout, and the only rescuer is itself.
    worker = rig.spawn(worker_max_pending_per_process=10)
    worker_id = rig.worker_id(worker)
    wait_for(lambda: len(executions(rig.trail)) >= 2, timeout=30)
    held = int(
        rows(rig.url, f"SELECT count(*) AS n FROM errands_process WHERE worker_id = '{worker_id}'")[
            0
        ]["n"]
    )
    rig.cluster.stop()
    time.sleep(HEARTBEAT_TIMEOUT + 2)
    rig.cluster.start()
    back = time.time()
    wait_for(rig.drained, timeout=60, step=lambda: time.sleep(0.2))
    recovered = time.time() - back
    assert worker.alive()
    stop_all([worker])

    acc = account(rig.url, rig.trail, jobs)
    report(
        "self-rescue after an outage",
        jobs=len(jobs),
        held=held,
        outage_s=HEARTBEAT_TIMEOUT + 2,
        drained_after_s=f"{recovered:.1f}",
        summary=acc.summary(),
    )
    assert held >= 10
    assert acc.by_status == {"SUCCESSFUL": len(jobs)}, acc.summary()
    assert acc.problems == [] and acc.executions == len(jobs), acc.problems
