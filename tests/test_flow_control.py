"""Flow control on real worker processes, on PostgreSQL and SQLite: concurrency and
rate limits hold across workers, held jobs block nobody, a killed worker's slots
come back, and per-queue caps hold in one worker and across all of them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from flow_jobs import PerCustomer, Timed, most_at_once, most_starts_in, read_trail

import errands
from conftest import SpawnWorker, wait_for
from errands import EnqueueOptions, Limit
from errands.models import Status

pytestmark = pytest.mark.slow

FLOW = {"import_modules": ("sample_jobs", "flow_jobs")}


def _finished(count: int) -> bool:
    return errands.stats().results_by_status.get(Status.SUCCESSFUL, 0) >= count


def _enqueue(trail: Path, count: int, *, seconds: float = 0.0, **options: object) -> None:
    jobs = [Timed(str(trail), f"t{i}", seconds) for i in range(count)]
    errands.enqueue_many(jobs, options=EnqueueOptions(**options))  # type: ignore[arg-type]


def test_concurrency_limit_holds_across_four_workers(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    _enqueue(trail, 200, seconds=0.02, limits=[Limit("api", concurrency=2)])
    workers = [spawn_worker(worker_threads=2, **FLOW) for _ in range(4)]
    for worker in workers:
        worker.wait_registered()
    wait_for(lambda: _finished(200), timeout=120)
    runs = read_trail(trail)
    assert len(runs) == 200
    assert most_at_once(runs) == 2
    # 200 jobs of 20 ms, two at a time: 2 s at best.
    drain = max(run.end or 0 for run in runs) - runs[0].start
    print(f"concurrency=2: at most {most_at_once(runs)} at once, drained in {drain:.2f} s")
    assert drain < 2 * 2.0, f"the drain took {drain:.2f} s"


def test_rate_limit_holds_in_every_window(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    _enqueue(trail, 100, limits=[Limit("mail", rate="20/s")])
    for _ in range(2):
        spawn_worker(worker_threads=4, **FLOW).wait_registered()
    wait_for(lambda: _finished(100), timeout=60)
    runs = read_trail(trail)
    assert len(runs) == 100
    assert most_starts_in(runs, 1.0) <= 20
    # 20 at once, then 20 more each second: the hundredth starts after about 4 s.
    span = runs[-1].start - runs[0].start
    print(f"rate=20/s: at most {most_starts_in(runs, 1.0)} starts in 1 s, span {span:.2f} s")
    assert 3.9 < span < 6.0, f"100 starts took {span:.2f} s"


def test_unlimited_jobs_start_at_once_behind_held_ones(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    held = Limit("held", concurrency=1)
    # One job holds the key's only slot for the whole test; 1,000 wait behind it.
    Timed(str(trail), "blocker", 30).run_in_worker(limits=[held], priority=10)
    jobs = [Timed(str(trail), f"held{i}") for i in range(1000)]
    errands.enqueue_many(jobs, options=EnqueueOptions(limits=[held], priority=5))
    spawn_worker(worker_threads=4, **FLOW).wait_registered()
    wait_for(lambda: any(run.token == "blocker" for run in read_trail(trail)), timeout=30)
    enqueued = time.monotonic()
    errands.enqueue_many([Timed(str(trail), f"free{i}") for i in range(20)])
    wait_for(lambda: _finished(20), timeout=30)
    assert time.monotonic() - enqueued < 5
    tokens = {run.token for run in read_trail(trail)}
    assert not any(token.startswith("held") for token in tokens)


def test_slots_of_a_killed_worker_come_back_after_its_rescue(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    one = Limit("one", concurrency=1)
    Timed(str(trail), "first", 60).run_in_worker(limits=[one])
    doomed = spawn_worker(**FLOW)
    wait_for(lambda: any(run.token == "first" for run in read_trail(trail)), timeout=30)
    Timed(str(trail), "second").run_in_worker(limits=[one])
    doomed.signal_group(signal.SIGKILL)
    survivor = spawn_worker(heartbeat_timeout=2, **FLOW)
    survivor.wait_registered()
    wait_for(lambda: _finished(1), timeout=30)
    runs = {run.token: run for run in read_trail(trail)}
    assert runs["second"].end is not None
    lost = errands.results(status=Status.LOST)
    assert [result.parameters["args"][1] for result in lost] == ["first"]


def test_a_callable_key_limits_each_customer_on_its_own(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    jobs = [PerCustomer(str(trail), f"{c}-{i}", 0.05) for c in ("a", "b", "c") for i in range(6)]
    errands.enqueue_many(jobs)
    assert {r.limits[0].key for r in errands.requests(limit=100)} == {
        "customer:a",
        "customer:b",
        "customer:c",
    }
    spawn_worker(worker_threads=6, **FLOW).wait_registered()
    wait_for(lambda: _finished(18), timeout=60)
    runs = read_trail(trail)
    for customer in "abc":
        assert most_at_once([r for r in runs if r.token.startswith(customer)]) == 1
    # The customers ran side by side: three at a time overall.
    assert most_at_once(runs) == 3


def test_a_worker_queue_cap_holds_beside_other_queues(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    mail, other = tmp_path / "mail", tmp_path / "other"
    _enqueue(mail, 12, seconds=0.1, queue="mail")
    _enqueue(other, 12, seconds=0.1, queue="default")
    spawn_worker(queues=["mail:1", "default"], worker_threads=4, **FLOW).wait_registered()
    wait_for(lambda: _finished(24), timeout=60)
    assert most_at_once(read_trail(mail)) == 1
    assert most_at_once(read_trail(other)) >= 2


def test_queue_limits_hold_across_workers(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    _enqueue(trail, 30, seconds=0.05, queue="mail")
    for _ in range(3):
        spawn_worker(worker_threads=3, queue_limits="mail=2", **FLOW).wait_registered()
    wait_for(lambda: _finished(30), timeout=60)
    assert most_at_once(read_trail(trail)) == 2


def test_limits_are_kept_by_retries_and_shown_on_results(
    db_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    request = Timed(str(trail), "once").run_in_worker(limits=[Limit("api", concurrency=3)])
    assert request is not None
    spawn_worker(**FLOW).wait_registered()
    wait_for(lambda: _finished(1), timeout=30)
    (result,) = errands.results()
    assert result.limits == (Limit("api", concurrency=3),)
    retried = errands.retry(result.uuid)
    assert retried is not None and retried.limits == result.limits
