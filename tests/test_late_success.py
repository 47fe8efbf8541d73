"""A late success is not thrown away (issue 18, item 4).

A worker cut off (or paused, or without its database) past the heartbeat timeout is
declared dead and its jobs are recorded LOST; the jobs it was running may still run
to their end. Their outcome, when it finally arrives, is kept on the LOST result (its
error says what really happened, its start time is filled in), and a late SUCCESSFUL
withdraws the retry the LOST result got if that retry has not started yet (or the
retry still owed), so the job does not run twice.

The backend rules on PostgreSQL, SQLite and the in-memory backend; then the whole
story with real workers on a cluster of the test's own, the late worker behind a
black-holing proxy.
"""

from __future__ import annotations

import datetime
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sample_jobs
from cluster import Cluster, throwaway_cluster
from proxy import proxy_to
from worker_process import WorkerProcess, settings_environ

import errands
from conftest import _configured, empty_postgres, wait_for
from errands import Status
from errands.backends import Backend, open_backend
from errands.models import (
    JobProcess,
    JobResult,
    NewRequest,
    Outcome,
    PageSpec,
    Selection,
    WorkerInfo,
)
from errands.testing.databases import TestDatabases
from errands.testing.memory import MemoryBackend

UTC = datetime.UTC


@pytest.fixture(params=["postgresql", "sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        memory = MemoryBackend(mode="contract")
        yield memory
        memory.close()
        return
    if request.param == "sqlite":
        with TestDatabases(None).database(tmp_path) as url:
            backend = open_backend(url)
            yield backend
            backend.close()
        return
    url = request.getfixturevalue("pg_url")
    backend = open_backend(url)
    try:
        yield backend
    finally:
        backend.close()
        empty_postgres(url)


# -- the backends' rule ------------------------------------------------------------------


def lost_while_running(store: Backend, *, retries: int) -> tuple[JobProcess, JobResult]:
    """A job claimed and started by a worker, then recorded LOST (its worker found
    dead): the process and the LOST result, which is owed its follow-up."""
    worker_id = uuid.uuid4()
    store.register_worker(worker=WorkerInfo(worker_id=worker_id, hostname="h", pid=1, queues=[]))
    with store.enqueue_transaction() as tx:
        tx.insert_requests([NewRequest(job_class="tests.Job", parameters={}, retries=retries)])
    (process,) = store.claim(worker_id=worker_id, queues=(), limit=10)
    (lost,) = store.lose_processes(worker_id=worker_id, process_uuids=[process.uuid])
    assert lost.status == Status.LOST and lost.started_at is None
    return process, lost


def retry_later(store: Backend, lost: JobResult) -> uuid.UUID:
    """What a worker's follow-up does for a LOST job with attempts left: settle the
    follow-up, enqueue the retry (an hour away here) and link it, in one transaction."""
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    with store.enqueue_transaction() as tx:
        assert tx.settle_followup(result_uuid=lost.uuid)
        (retry,) = tx.insert_requests(
            [
                NewRequest(
                    job_class="tests.Job", parameters={}, retries=1, retry_attempt=1, start_at=later
                )
            ]
        )
        assert tx.link_retry(result_uuid=lost.uuid, request_uuid=retry.uuid)
    return retry.uuid


def late(process: JobProcess, status: Status = Status.SUCCESSFUL, **fields: Any) -> Outcome:
    now = datetime.datetime.now(UTC)
    return Outcome(
        process_uuid=process.uuid,
        status=status,
        started_at=now - datetime.timedelta(seconds=3),
        ended_at=now,
        **fields,
    )


def only_result(store: Backend) -> JobResult:
    results = [r for r in store.page_results(selection=_everything(), page=_page())]
    assert len(results) == 1, results
    return results[0]


def _everything() -> Selection:
    return Selection()


def _page() -> PageSpec:
    return PageSpec(limit=100)


def pending(store: Backend) -> list[uuid.UUID]:
    return [r.uuid for r in store.next_requests(selection=_everything(), limit=100)]


def test_a_late_success_withdraws_the_retry_that_has_not_started(store: Backend) -> None:
    process, lost = lost_while_running(store, retries=1)
    retry = retry_later(store, lost)
    assert store.complete_many(outcomes=[late(process)]) == []
    kept = only_result(store)
    assert kept.status == Status.LOST  # the record stays one result per process
    assert "late outcome: SUCCESSFUL at" in kept.error
    assert f"its retry {retry} was withdrawn before it started" in kept.error
    assert kept.error.startswith(lost.error)
    assert kept.started_at is not None  # it did run
    assert kept.retry_request_uuid is None
    assert pending(store) == []


def test_a_late_success_before_the_follow_up_leaves_nothing_owed(store: Backend) -> None:
    process, _ = lost_while_running(store, retries=1)
    store.complete_many(outcomes=[late(process)])
    kept = only_result(store)
    assert "nothing more is owed (no retry, no on_aborted)" in kept.error
    assert store.followups(limit=10) == []
    assert pending(store) == []


def test_a_late_success_keeps_a_retry_that_was_claimed_already(store: Backend) -> None:
    process, lost = lost_while_running(store, retries=1)
    later = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
    with store.enqueue_transaction() as tx:
        tx.settle_followup(result_uuid=lost.uuid)
        (retry,) = tx.insert_requests(
            [NewRequest(job_class="tests.Job", parameters={}, retry_attempt=1, start_at=later)]
        )
        tx.link_retry(result_uuid=lost.uuid, request_uuid=retry.uuid)
    (claimed,) = store.claim(worker_id=uuid.uuid4(), queues=(), limit=10)
    store.complete_many(outcomes=[late(process)])
    kept = [r for r in store.page_results(selection=_everything(), page=_page())]
    (annotated,) = kept
    assert f"its retry {retry.uuid} had been claimed already and runs anyway" in annotated.error
    assert annotated.retry_request_uuid == retry.uuid
    assert store.processes_of_worker(worker_id=claimed.worker_id) == [claimed]


def test_a_late_failure_is_kept_and_keeps_the_retry(store: Backend) -> None:
    process, lost = lost_while_running(store, retries=1)
    retry = retry_later(store, lost)
    store.complete_many(
        outcomes=[late(process, Status.ERRORED, error_type="ValueError", error="bad input")]
    )
    kept = only_result(store)
    assert "late outcome: ERRORED at" in kept.error
    assert "(ValueError: bad input)" in kept.error
    assert kept.retry_request_uuid == retry
    assert pending(store) == [retry]


def test_a_late_outcome_is_kept_once(store: Backend) -> None:
    """A batch written again (its answer was lost) adds nothing a second time."""
    process, _ = lost_while_running(store, retries=0)
    store.complete_many(outcomes=[late(process)])
    first = only_result(store).error
    store.complete_many(outcomes=[late(process)])
    assert only_result(store).error == first
    assert first.count("late outcome:") == 1


def test_an_outcome_written_twice_is_not_a_late_one(store: Backend) -> None:
    worker_id = uuid.uuid4()
    with store.enqueue_transaction() as tx:
        tx.insert_requests([NewRequest(job_class="tests.Job", parameters={})])
    (process,) = store.claim(worker_id=worker_id, queues=(), limit=10)
    store.complete_many(outcomes=[late(process)])
    store.complete_many(outcomes=[late(process)])
    result = only_result(store)
    assert (result.status, result.error) == (Status.SUCCESSFUL, "")


# -- with real workers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as started:
        yield started


@pytest.fixture
def cluster_url(cluster: Cluster) -> Iterator[str]:
    name = f"late_{os.urandom(4).hex()}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = cluster.url(name)
    backend = open_backend(url)
    backend.migrate()
    backend.close()
    yield from _configured(url)


def environ() -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ERRANDS_") or k.startswith("ERRANDS_TEST_")
    }
    support = str(Path(__file__).parent / "support")
    return {**base, "PYTHONPATH": support, **settings_environ({"database_timeout": 2})}


def worker(url: str, log: Path) -> WorkerProcess:
    return WorkerProcess.errands(
        url,
        log,
        *("--import", "sample_jobs", "worker", "--max-processes", "1"),
        *("--heartbeat-interval", "0.5", "--heartbeat-timeout", "4", "--poll-interval", "0.2"),
        env=environ(),
    )


@pytest.mark.slow
def test_a_job_that_succeeded_while_its_worker_was_cut_off_is_recorded_so(
    cluster: Cluster, cluster_url: str, tmp_path: Path
) -> None:
    """The worker runs a 6 s job with retries=1 (its retries wait an hour) and is cut
    off from the database 1 s in; a peer records it LOST and enqueues its retry; the
    job succeeds; when the partition heals the late SUCCESSFUL is kept on the LOST
    result and the retry, not started, is withdrawn: the job ran once."""
    marks = tmp_path / "marks"
    request = sample_jobs.SlowRetry(str(marks), seconds=6).run_in_worker(retries=1)
    assert request is not None
    with (
        proxy_to(cluster.port) as proxy,
        worker(proxy.url(cluster_url), tmp_path / "late.log") as cut,
    ):
        wait_for(marks.exists, timeout=30)
        time.sleep(1)
        proxy.black_hole()
        with worker(cluster_url, tmp_path / "peer.log") as peer:
            wait_for(lambda: _lost_with_retry(), timeout=30)
            wait_for(lambda: "finished" in marks.read_text(), timeout=30)
            proxy.heal()
            healed = time.monotonic()
            wait_for(lambda: "late outcome" in errands.results()[0].error, timeout=30)
            kept_after = time.monotonic() - healed
            peer.stop()
        cut.stop()
    (result,) = errands.results()
    print(f"late success kept {kept_after:.1f} s after the partition healed")
    assert result.status == Status.LOST
    assert "late outcome: SUCCESSFUL" in result.error
    assert "was withdrawn before it started" in result.error
    assert result.retry_request_uuid is None
    assert errands.requests() == []
    assert marks.read_text().split("\n").count("started") == 1  # ran once
    assert "aborted LOST" in marks.read_text()  # the peer ran on_aborted with the retry


def _lost_with_retry() -> bool:
    results = errands.results()
    return bool(results) and results[0].retry_request_uuid is not None


@pytest.mark.slow
def test_a_job_that_succeeded_while_postgresql_was_down_is_recorded_so(
    cluster: Cluster, cluster_url: str, tmp_path: Path
) -> None:
    """PostgreSQL stopped for longer than the heartbeat timeout while a 4 s job with
    retries=1 runs; when it is back a peer (this test) finds the worker silent and
    records the job LOST before the worker writes again; the job's late SUCCESSFUL is
    kept on that result, and no retry runs it again."""
    marks = tmp_path / "marks"
    request = sample_jobs.SlowRetry(str(marks), seconds=4).run_in_worker(retries=1)
    assert request is not None
    with worker(cluster_url, tmp_path / "late.log") as late_worker:
        wait_for(marks.exists, timeout=30)
        late_worker_id = late_worker.wait_registered().worker_id
        cluster.stop()
        time.sleep(7)  # past the 4 s heartbeat timeout; the job ends meanwhile
        assert "finished" in marks.read_text()
        cluster.start()
        peer = open_backend(cluster_url)
        try:
            rescued = peer.rescue_stale_workers(timeout_seconds=4, rescuer=uuid.uuid4())
        finally:
            peer.close()
        assert [r.worker_id for r in rescued] == [late_worker_id]
        back = time.monotonic()
        wait_for(lambda: "late outcome" in errands.results()[0].error, timeout=30)
        kept_after = time.monotonic() - back
        time.sleep(2)  # a retry, if one were left, would be claimed by now
        late_worker.stop()
        log = late_worker.log()
    (result,) = errands.results()
    print(f"late success kept {kept_after:.1f} s after PostgreSQL was back")
    assert result.status == Status.LOST
    assert "late outcome: SUCCESSFUL" in result.error
    assert (
        "was withdrawn before it started" in result.error or "nothing more is owed" in result.error
    ), result.error
    assert result.started_at is not None
    assert errands.requests() == []
    assert marks.read_text().split("\n").count("started") == 1, log  # ran once
