"""The in-memory backend of ``errands.testing``: what the contract suite cannot show.

``test_backend_contract`` runs on this backend too; the tests here cover what it
leaves out for memory (rescues and staleness, which it arranges through SQL, and
concurrent callers, which it gives a second connection), and behaviour of the
dashboard's operations: throughput buckets, bulk cancel, stop and delete on
selections, schedules' withdrawal.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from errands import lifecycle
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    NewRequest,
    Outcome,
    PageSpec,
    Requeue,
    Selection,
    Status,
    WorkerInfo,
)
from errands.testing.memory import NO_MIGRATION, MemoryBackend
from errands.testing.memory_reader import bucket_start

UTC = datetime.UTC
ALL = Selection()


@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    b = MemoryBackend(mode="test")
    try:
        yield b
    finally:
        b.close()


# -- helpers -------------------------------------------------------------------------


def new(**fields: Any) -> NewRequest:
    return NewRequest(**{"job_class": "tests.Job", "parameters": {}, **fields})


def enqueue(backend: MemoryBackend, *requests: NewRequest) -> list[JobRequest]:
    with backend.enqueue_transaction() as tx:
        return tx.insert_requests(list(requests))


def claim_all(backend: MemoryBackend, worker_id: uuid.UUID | None = None) -> list[JobProcess]:
    return backend.claim(worker_id=worker_id or uuid.uuid4(), queues=[], limit=1000)


def finish(
    backend: MemoryBackend,
    process: JobProcess,
    status: Status = Status.SUCCESSFUL,
    *,
    ended_at: datetime.datetime,
    requeue: Requeue | None = None,
) -> JobResult:
    outcome = Outcome(process.uuid, status, None, ended_at, requeue=requeue)
    (result,) = backend.complete_many(outcomes=[outcome])
    return result


def register(backend: MemoryBackend) -> uuid.UUID:
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="test-host", pid=1, queues=[])
    )
    return worker_id


def backdate_heartbeat(backend: MemoryBackend, worker_id: uuid.UUID, seconds: float) -> None:
    """What ``staleness.backdate_heartbeat`` does to a database's row."""
    with backend.lock:
        row = backend.heartbeats.rows[worker_id]
        moment = backend.now() - datetime.timedelta(seconds=seconds)
        backend.heartbeats.rows[worker_id] = dataclasses.replace(row, last_heartbeat_at=moment)


def backdate_claims(backend: MemoryBackend, worker_id: uuid.UUID, seconds: float) -> None:
    """What ``staleness.backdate_claims`` does to a database's rows."""
    moment = backend.now() - datetime.timedelta(seconds=seconds)
    with backend.lock:
        for process in backend.processes_of_worker(worker_id=worker_id):
            backend.processes[process.uuid] = dataclasses.replace(process, created_at=moment)


def in_threads(count: int, target: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    values: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        values[i] = target(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return values


# -- schema and the testing helpers' modes ---------------------------------------------


def test_there_is_no_schema_to_migrate() -> None:
    backend = MemoryBackend(mode="capture")
    assert backend.migrate() == []
    assert backend.migration_sql() == NO_MIGRATION
    assert NO_MIGRATION.startswith("--") and "CREATE" not in NO_MIGRATION
    assert backend.schema_version() == backend.latest_schema_version()


def test_without_a_registered_worker_there_are_no_workers(backend: MemoryBackend) -> None:
    enqueue(backend, new())
    assert backend.run_next(include_delayed=False) is not None
    assert backend.workers(timeout_seconds=60) == []
    stats = backend.stats(heartbeat_timeout_seconds=60)
    assert (stats.workers_active, stats.workers_stale) == (0, 0)


# -- throughput ----------------------------------------------------------------------


def test_bucket_starts_are_whole_multiples_since_the_epoch() -> None:
    moment = datetime.datetime(2030, 1, 1, 12, 34, 56, 789, tzinfo=UTC)
    assert bucket_start(moment, 60) == datetime.datetime(2030, 1, 1, 12, 34, tzinfo=UTC)
    assert bucket_start(moment, 3600) == datetime.datetime(2030, 1, 1, 12, tzinfo=UTC)
    on_the_edge = datetime.datetime(2030, 1, 1, 12, 35, tzinfo=UTC)
    assert bucket_start(on_the_edge, 60) == on_the_edge


def test_throughput_counts_per_bucket_and_status_in_order(backend: MemoryBackend) -> None:
    base = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    at = [base + datetime.timedelta(seconds=s) for s in (5, 50, 65, 70, 130)]
    enqueue(backend, *[new() for _ in at], new())
    *processes, too_early = claim_all(backend)
    statuses = [
        Status.SUCCESSFUL,
        Status.ERRORED,
        Status.SUCCESSFUL,
        Status.SUCCESSFUL,
        Status.LOST,
    ]
    for process, status, ended in zip(processes, statuses, at, strict=True):
        finish(backend, process, status, ended_at=ended)
    finish(backend, too_early, ended_at=base - datetime.timedelta(seconds=1))

    rows = backend.throughput(since=base, bucket_seconds=60)

    assert [(r.bucket_start - base, r.status, r.count) for r in rows] == [
        (datetime.timedelta(0), Status.ERRORED, 1),
        (datetime.timedelta(0), Status.SUCCESSFUL, 1),
        (datetime.timedelta(minutes=1), Status.SUCCESSFUL, 2),
        (datetime.timedelta(minutes=2), Status.LOST, 1),
    ]
    assert (
        backend.throughput(since=at[-1] + datetime.timedelta(microseconds=1), bucket_seconds=60)
        == []
    )
    (last,) = backend.throughput(since=at[-1], bucket_seconds=60)  # since is inclusive
    assert last.status == Status.LOST


def test_throughput_counts_retries_but_not_deferrals(backend: MemoryBackend) -> None:
    now = backend.now()
    enqueue(backend, new(), new(), new())
    retried, deferred, plain = claim_all(backend)
    finish(backend, retried, Status.ERRORED, ended_at=now, requeue=Requeue(0, 1))
    finish(backend, deferred, Status.DEFERRED, ended_at=now, requeue=Requeue(0, 0))
    finish(backend, plain, Status.ERRORED, ended_at=now)

    rows = backend.throughput(since=now - datetime.timedelta(hours=1), bucket_seconds=3600)

    assert {(r.status, r.count, r.retried) for r in rows} == {
        (Status.ERRORED, 2, 1),
        (Status.DEFERRED, 1, 0),
    }


# -- bulk operations on selections -----------------------------------------------------


def test_cancel_pending_selected_cancels_soonest_due_first_up_to_the_limit(
    backend: MemoryBackend,
) -> None:
    now = backend.now()
    later, soon, soonest = enqueue(
        backend,
        *[new(queue="q", start_at=now + datetime.timedelta(hours=h)) for h in (3, 2, 1)],
    )
    (other,) = enqueue(backend, new(queue="other", delay_seconds=3600))

    results = backend.cancel_pending_selected(selection=Selection(queue="q"), limit=2)

    assert [r.request_uuid for r in results] == [soonest.uuid, soon.uuid]
    ending = lifecycle.CANCELLED_PENDING
    assert all((r.status, r.error_type, r.error) == ending[:3] for r in results)
    assert all(r.worker_id is None and r.started_at is None for r in results)
    remaining = backend.next_requests(selection=ALL, limit=10)
    assert [r.uuid for r in remaining] == [other.uuid, later.uuid]  # due in 1 h, in 3 h
    assert backend.cancel_pending_selected(selection=Selection(queue="q"), limit=0) == []


def test_cancel_pending_selected_leaves_claimed_jobs_alone(backend: MemoryBackend) -> None:
    (claimed,) = enqueue(backend, new())
    claim_all(backend)
    (pending,) = enqueue(backend, new())
    results = backend.cancel_pending_selected(selection=ALL, limit=10)
    assert [r.request_uuid for r in results] == [pending.uuid]
    assert backend.count(kind=Kind.PROCESS, selection=Selection(uuid=claimed.uuid)) == 1


def test_flag_to_stop_selected_flags_every_selected_process(backend: MemoryBackend) -> None:
    worker_id = uuid.uuid4()
    enqueue(backend, new(queue="a"), new(queue="a"), new(queue="b"))
    first, second, other = backend.claim(worker_id=worker_id, queues=[], limit=3)

    assert backend.flag_to_stop_selected(selection=Selection(queue="a")) == 2
    assert sorted(backend.flagged_to_stop(worker_id=worker_id)) == sorted([first.uuid, second.uuid])
    # Flagged again, they count again (an SQL UPDATE counts every row it matches).
    assert backend.flag_to_stop_selected(selection=Selection(queue="a")) == 2
    assert backend.flag_to_stop_selected(selection=Selection(queue="none")) == 0
    (listed,) = backend.page_processes(selection=Selection(queue="b"), page=PageSpec())
    assert listed.uuid == other.uuid and not listed.cancel_requested


def test_delete_removes_selected_requests_without_results(backend: MemoryBackend) -> None:
    enqueue(backend, *[new(queue="gone") for _ in range(3)], new(queue="kept"))
    assert backend.delete(kind=Kind.REQUEST, selection=Selection(queue="gone"), limit=2) == 2
    assert backend.delete(kind=Kind.REQUEST, selection=Selection(queue="gone"), limit=2) == 1
    assert [r.queue for r in backend.next_requests(selection=ALL, limit=10)] == ["kept"]
    assert backend.page_results(selection=ALL, page=PageSpec()) == []


def test_delete_removes_selected_results_oldest_first(backend: MemoryBackend) -> None:
    now = backend.now()
    enqueue(backend, *[new() for _ in range(3)])
    old, older, recent = claim_all(backend)
    finish(backend, old, Status.ERRORED, ended_at=now - datetime.timedelta(hours=1))
    finish(backend, older, Status.ERRORED, ended_at=now - datetime.timedelta(hours=2))
    kept = finish(backend, recent, ended_at=now)

    assert (
        backend.delete(kind=Kind.RESULT, selection=Selection(status=Status.ERRORED), limit=1) == 1
    )
    remaining = backend.page_results(selection=ALL, page=PageSpec())
    assert [r.process_uuid for r in remaining] == [kept.process_uuid, old.uuid]
    assert backend.delete(kind=Kind.RESULT, selection=ALL, limit=10) == 2


def test_processes_cannot_be_deleted(backend: MemoryBackend) -> None:
    enqueue(backend, new())
    claim_all(backend)
    with pytest.raises(ValueError, match="cancel them instead"):
        backend.delete(kind=Kind.PROCESS, selection=ALL, limit=10)
    assert backend.count(kind=Kind.PROCESS, selection=ALL) == 1


# -- workers, staleness and rescue (arranged without SQL) -------------------------------


def test_workers_are_marked_stale_after_the_timeout(backend: MemoryBackend) -> None:
    worker_id = register(backend)
    backdate_heartbeat(backend, worker_id, 120)
    assert [w.stale for w in backend.workers(timeout_seconds=60)] == [True]
    assert [w.stale for w in backend.workers(timeout_seconds=600)] == [False]
    stats = backend.stats(heartbeat_timeout_seconds=60)
    assert (stats.workers_active, stats.workers_stale) == (0, 1)


def test_registering_again_keeps_the_start_and_refreshes_the_beat(backend: MemoryBackend) -> None:
    worker_id = register(backend)
    (first,) = backend.workers(timeout_seconds=60)
    backdate_heartbeat(backend, worker_id, 120)
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="elsewhere", pid=2, queues=["q"])
    )
    (again,) = backend.workers(timeout_seconds=60)
    assert (again.hostname, again.pid, again.queues) == ("elsewhere", 2, ["q"])
    assert again.started_at == first.started_at and not again.stale


def test_rescue_turns_a_silent_workers_processes_into_lost_results(
    backend: MemoryBackend,
) -> None:
    dead, alive = register(backend), register(backend)
    enqueue(backend, new(), new(), new())
    dead_processes = backend.claim(worker_id=dead, queues=[], limit=2)
    (alive_process,) = claim_all(backend, alive)
    assert backend.rescue_stale_workers(timeout_seconds=60) == []
    for worker_id in (dead, alive):
        backdate_heartbeat(backend, worker_id, 120)
    assert backend.heartbeat(worker_id=alive)

    lost = backend.rescue_stale_workers(timeout_seconds=60)

    expected = lifecycle.lost_with_worker(dead, 60)
    assert {r.process_uuid for r in lost} == {p.uuid for p in dead_processes}
    assert all((r.status, r.error_type, r.error) == expected[:3] for r in lost)
    assert all(r.worker_id == dead and r.retry_request_uuid is None for r in lost)
    assert backend.page_processes(selection=ALL, page=PageSpec()) == [alive_process]
    assert not backend.heartbeat(worker_id=dead)
    assert [w.worker_id for w in backend.workers(timeout_seconds=60)] == [alive]
    # A late completion of a rescued process writes nothing.
    ended = backend.now()
    late = Outcome(dead_processes[0].uuid, Status.SUCCESSFUL, None, ended)
    assert backend.complete_many(outcomes=[late]) == []


def test_concurrent_rescuers_rescue_a_worker_exactly_once(backend: MemoryBackend) -> None:
    dead = register(backend)
    enqueue(backend, *[new() for _ in range(20)])
    processes = claim_all(backend, dead)
    backdate_heartbeat(backend, dead, 120)

    found = in_threads(5, lambda i: backend.rescue_stale_workers(timeout_seconds=60))

    lost = [r.process_uuid for per_rescuer in found for r in per_rescuer]
    assert sorted(lost) == sorted(p.uuid for p in processes)
    assert sum(1 for per_rescuer in found if per_rescuer) == 1


def test_processes_of_a_worker_without_heartbeat_row_are_rescued(
    backend: MemoryBackend,
) -> None:
    enqueue(backend, new())
    unregistered = uuid.uuid4()
    (process,) = claim_all(backend, unregistered)
    assert backend.rescue_stale_workers(timeout_seconds=60) == []  # claimed too recently
    backdate_claims(backend, unregistered, 120)

    (lost,) = backend.rescue_stale_workers(timeout_seconds=60)

    expected = lifecycle.lost_without_heartbeat_row(unregistered)
    assert lost.process_uuid == process.uuid
    assert (lost.status, lost.error_type, lost.error) == expected[:3]
    assert backend.page_processes(selection=ALL, page=PageSpec()) == []


def test_lose_processes_writes_the_orphaned_ending(backend: MemoryBackend) -> None:
    worker_id = register(backend)
    enqueue(backend, new())
    (process,) = claim_all(backend, worker_id)
    (lost,) = backend.lose_processes(worker_id=worker_id, process_uuids=[process.uuid])
    expected = lifecycle.orphaned(worker_id)
    assert (lost.status, lost.error_type, lost.error) == expected[:3]


def test_concurrent_claimers_never_claim_the_same_request(backend: MemoryBackend) -> None:
    requests = enqueue(backend, *[new(parameters={"n": i}) for i in range(300)])

    def claim_until_empty(i: int) -> list[uuid.UUID]:
        mine: list[uuid.UUID] = []
        while batch := backend.claim(worker_id=uuid.uuid4(), queues=[], limit=7):
            mine += [p.request_uuid for p in batch]
        return mine

    claimed = [u for mine in in_threads(4, claim_until_empty) for u in mine]
    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == {r.uuid for r in requests}


# -- pruning, releasing, schedules and wake-ups -------------------------------------------


def test_prune_results_deletes_the_oldest_in_batches(backend: MemoryBackend) -> None:
    now = backend.now()
    enqueue(backend, *[new() for _ in range(4)])
    ages = (5, 2, 3, 0)  # days
    for process, days in zip(claim_all(backend), ages, strict=True):
        finish(backend, process, ended_at=now - datetime.timedelta(days=days))
    day = 24 * 3600
    assert backend.prune_results(older_than_seconds=day, batch_size=2) == 2
    (old,) = [r for r in backend.results if r.ended_at < now - datetime.timedelta(days=1)]
    assert old.ended_at == now - datetime.timedelta(days=2)  # the oldest went first
    assert backend.prune_results(older_than_seconds=day, batch_size=2) == 1
    assert backend.prune_results(older_than_seconds=day, batch_size=2) == 0
    assert len(backend.results) == 1


def test_release_and_resume_wake_listeners(backend: MemoryBackend) -> None:
    enqueue(backend, new(queue="q"), new(queue="q"))
    first, _ = claim_all(backend)
    woken: list[str] = []
    listener = backend.listen(on_wake=lambda: woken.append("woken"))
    assert backend.release(process_uuids=[first.uuid, first.uuid]) == 1
    assert woken == ["woken"]
    backend.pause_queue(queue="q")
    assert backend.claim(worker_id=uuid.uuid4(), queues=[], limit=10) == []
    assert backend.resume_queue(queue="q")
    assert woken == ["woken", "woken"]
    listener.close()
    enqueue(backend, new())
    assert woken == ["woken", "woken"]


def test_withdraw_forgets_entries_and_trims_the_rest(backend: MemoryBackend) -> None:
    base = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    runs = {
        key: [base + datetime.timedelta(hours=h) for h in (1, 2, 3)] for key in ("kept", "gone")
    }
    with backend.enqueue_transaction() as tx:
        for key, run_ats in runs.items():
            assert tx.reserve_occurrences([(key, at) for at in run_ats]) == {
                (key, at) for at in run_ats
            }
            for at in run_ats:
                (request,) = tx.insert_requests([new(start_at=at, parameters={"key": key})])
                tx.link_occurrence(key=key, run_at=at, request_uuid=request.uuid)

    withdrawn = backend.withdraw_occurrences(
        keep=["kept"], trim_before=base + datetime.timedelta(days=1)
    )

    assert withdrawn == 3
    assert {r.parameters["key"] for r in backend.next_requests(selection=ALL, limit=10)} == {"kept"}
    assert set(backend.last_occurrences()) == {"kept"}
    assert list(backend.occurrences) == [("kept", runs["kept"][-1])]  # the latest is kept
