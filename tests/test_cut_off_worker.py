"""A worker that was cut off stops acting on what it held (issue 18, item 2).

A worker whose database goes silent (a partition: packets dropped, nothing refused)
notices within ``database_timeout`` (every call has a deadline), says so, and once it
went so long without a heartbeat that a peer may have declared it dead, starts none of
the jobs it holds and claims nothing. When it learns it was declared dead (its beat
finds its row gone) it drops every job it held and had not started: a peer recorded
them LOST and retried them; they must not run twice.

Real workers (``errands worker``) on a throwaway PostgreSQL cluster; the cut-off
worker reaches it through a black-holing proxy (``tests/support/proxy.py``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sample_jobs
from cluster import Cluster, throwaway_cluster
from proxy import proxy_to
from worker_process import WorkerProcess, settings_environ

import errands
from conftest import wait_for
from errands import Status
from errands.backends import open_backend
from errands.backends.postgres import PostgresBackend

pytestmark = pytest.mark.slow  # real workers, a cluster of the test's own

HEARTBEAT = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "4")
DATABASE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as started:
        yield started


@pytest.fixture
def url(cluster: Cluster) -> Iterator[str]:
    """A fresh migrated database on the module's cluster; errands is configured to use it."""
    name = f"cutoff_{os.urandom(4).hex()}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = cluster.url(name)
    backend = open_backend(database)
    backend.migrate()
    backend.close()
    errands.configure(database_url=database)
    try:
        yield database
    finally:
        errands.configure(database_url=None)


def environ() -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ERRANDS_") or k.startswith("ERRANDS_TEST_")
    }
    support = str(Path(__file__).parent / "support")
    return {
        **base,
        "PYTHONPATH": support,
        **settings_environ({"database_timeout": DATABASE_TIMEOUT}),
    }


def worker(url: str, log: Path, *options: str) -> WorkerProcess:
    return WorkerProcess.errands(
        url,
        log,
        *("--import", "sample_jobs", "worker", "--max-processes", "1"),
        *HEARTBEAT,
        *("--poll-interval", "0.2", *options),
        env=environ(),
    )


def tokens(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def hold_jobs(
    url: str, log: Path, tmp_path: Path, proxy_url: str | None = None
) -> tuple[WorkerProcess, Path, list[str]]:
    """A worker running a 6 s job and holding 5 quick ones behind it (retries=1)."""
    slow = tmp_path / "slow"
    done = tmp_path / "done"
    sample_jobs.Sleep(6, str(slow)).run_in_worker(retries=1)
    names = [f"job{i}" for i in range(5)]
    for name in names:
        sample_jobs.Record(str(done), name).run_in_worker(retries=1)
    held = worker(proxy_url or url, log)
    wait_for(lambda: slow.exists(), timeout=30)
    wait_for(lambda: not errands.requests(), timeout=10)  # all claimed
    return held, done, names


def test_a_partitioned_worker_notices_stops_and_drops_what_a_peer_rescued(
    url: str, cluster: Cluster, tmp_path: Path
) -> None:
    with proxy_to(cluster.port) as proxy:
        cut_log = tmp_path / "cut.log"
        cut, done, names = hold_jobs(url, cut_log, tmp_path, proxy.url(url))
        with cut:
            cut.wait_registered(url=url)
            proxy.black_hole()
            partitioned = time.monotonic()
            wait_for(lambda: "database unavailable" in cut.log(), timeout=20)
            noticed = time.monotonic() - partitioned
            wait_for(lambda: "no heartbeat written" in cut.log(), timeout=20)
            holding = time.monotonic() - partitioned
            # A peer declares it dead, records its jobs LOST and retries them.
            with worker(url, tmp_path / "peer.log") as peer:
                wait_for(lambda: all(tokens(done)[n] == 1 for n in names), timeout=60)
                rescued = time.monotonic() - partitioned
                proxy.heal()
                healed = time.monotonic()
                wait_for(lambda: "dropped" in cut.log(), timeout=30)
                dropped_after = time.monotonic() - healed
                time.sleep(3)  # the cut-off worker would have run them by now
                log = cut.log()
                peer.stop()
            cut.stop()
    print(
        f"partition noticed after {noticed:.1f} s, holding back after {holding:.1f} s, "
        f"retried by the peer after {rescued:.1f} s, dropped {dropped_after:.1f} s after healing"
    )
    assert tokens(done) == Counter(dict.fromkeys(names, 1)), "a job ran twice"
    assert noticed < DATABASE_TIMEOUT + 2
    assert "this worker was declared dead by a peer; registering again" in log
    assert "dropped 5 jobs this worker held and had not started" in log, log
    assert "Traceback" not in log, log
    lost = [r for r in errands.results() if r.status == Status.LOST]
    assert len(lost) == 6  # the running job and the five it held


def test_a_paused_worker_drops_what_a_peer_rescued_instead_of_starting_it(
    url: str, tmp_path: Path
) -> None:
    """SIGSTOP past the heartbeat timeout (a frozen VM): on waking it starts nothing
    it held before it learns it was declared dead, then drops those jobs."""
    paused, done, names = hold_jobs(url, tmp_path / "paused.log", tmp_path)
    with paused:
        paused.wait_registered()
        time.sleep(0.5)  # the child running the long job gives back the ones queued behind it
        paused.signal_group(signal.SIGSTOP)
        with worker(url, tmp_path / "peer.log") as peer:
            wait_for(lambda: all(tokens(done)[n] == 1 for n in names), timeout=60)
            paused.signal_group(signal.SIGCONT)
            wait_for(lambda: "dropped" in paused.log(), timeout=30)
            time.sleep(3)
            log = paused.log()
            peer.stop()
        paused.stop()
    assert tokens(done) == Counter(dict.fromkeys(names, 1)), "a job ran twice"
    assert "this worker was declared dead by a peer; registering again" in log
    assert "dropped 5 jobs this worker held and had not started" in log, log


def test_worker_connections_carry_the_timeouts(url: str) -> None:
    """keepalives, tcp_user_timeout and connect_timeout on every pooled connection;
    the worker's also a statement_timeout, all from ``database_timeout``."""
    backend = PostgresBackend(url, database_timeout=3)
    try:
        with backend._worker_connection() as conn:
            params = conn.info.get_parameters()
            statement_timeout = conn.execute("SHOW statement_timeout").fetchone()
        with backend._connection() as conn:
            general = conn.info.get_parameters()
    finally:
        backend.close()
    assert statement_timeout == ("3s",)
    for given in (params, general):
        assert given["tcp_user_timeout"] == "3000"
        assert given["keepalives"] == "1"
        assert (given["keepalives_idle"], given["keepalives_count"]) == ("2", "3")
        assert given["connect_timeout"] == "3"


def test_a_call_without_an_answer_fails_after_its_deadline(url: str, cluster: Cluster) -> None:
    """Bytes acknowledged but never answered (a proxy that holds them): TCP sees
    nothing wrong, the client's own deadline ends the call."""
    with proxy_to(cluster.port) as proxy:
        backend = PostgresBackend(proxy.url(url), database_timeout=2)
        try:
            backend.bound_calls(seconds=1.5)
            backend.heartbeat(worker_id=uuid.uuid4())
            proxy.black_hole()
            began = time.monotonic()
            with pytest.raises(errands.BackendError, match="no answer from the database"):
                backend.heartbeat(worker_id=uuid.uuid4())
            waited = time.monotonic() - began
        finally:
            proxy.heal()
            backend.close()
    assert 1.4 < waited < 2.5
