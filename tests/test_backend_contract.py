"""The Backend interface, capability by capability, on each backend.

Every test here runs on PostgreSQL, SQLite and the in-memory backend of
``errands.testing`` (this module's ``db_url`` and ``backend`` fixtures); those marked
``postgres_only`` exist for PostgreSQL alone, those marked ``sql_only`` need a real
database (SQL access, a second connection, migrations) and are not generated for
the in-memory one. Jobs are plain rows here: ``job_class`` is any string.
"""

from __future__ import annotations

import datetime
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from staleness import backdate_claims, backdate_heartbeat

from conftest import SERVER_URL, _configured, database_url, empty_postgres
from errands.backends import Backend, open_backend
from errands.backends.base import TABLES, Listener
from errands.backends.postgres import PostgresBackend, PostgresListener
from errands.backends.postgres import queries as postgres_queries
from errands.errors import SchemaOutOfDate
from errands.limiting import Limit
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
from errands.testing.databases import TestDatabases
from errands.testing.memory import MemoryBackend

UTC = datetime.UTC
ANY_QUEUE: Sequence[str] = ()


# -- helpers -------------------------------------------------------------------------


def new(**fields: Any) -> NewRequest:
    values: dict[str, Any] = {"job_class": "tests.Job", "parameters": {"n": 1}}
    values.update(fields)
    return NewRequest(**values)


def enqueue(backend: Backend, *requests: NewRequest) -> list[JobRequest]:
    with backend.enqueue_transaction() as tx:
        return tx.insert_requests(list(requests))


def claim_all(
    backend: Backend, worker_id: uuid.UUID | None = None, queues: Sequence[str] = ANY_QUEUE
) -> list[JobProcess]:
    return backend.claim(worker_id=worker_id or uuid.uuid4(), queues=queues, limit=1000)


def outcome(
    process: JobProcess,
    status: Status = Status.SUCCESSFUL,
    *,
    ended_at: datetime.datetime | None = None,
    **fields: Any,
) -> Outcome:
    now = datetime.datetime.now(UTC)
    return Outcome(
        process_uuid=process.uuid,
        status=status,
        started_at=now,
        ended_at=ended_at or now,
        **fields,
    )


def register(backend: Backend, worker_id: uuid.UUID | None = None) -> uuid.UUID:
    worker_id = worker_id or uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="test-host", pid=1234, queues=["a"])
    )
    return worker_id


def in_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads released together; return their values."""
    barrier = threading.Barrier(count)
    values: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            values[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return values


MEMORY_URL = "memory://contract"


@pytest.fixture(params=["postgresql", "sqlite", "memory"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """conftest's ``db_url`` plus "memory": the in-memory backend keeps the contract too."""
    if request.param == "memory":
        yield MEMORY_URL
    elif request.param == "sqlite":
        with TestDatabases(None).database(tmp_path) as url:
            yield from _configured(url)
    else:
        url = request.getfixturevalue("pg_url")
        try:
            yield from _configured(url)
        finally:
            empty_postgres(url)


@pytest.fixture
def backend(db_url: str) -> Iterator[Backend]:
    b = MemoryBackend(mode="contract") if db_url == MEMORY_URL else open_backend(db_url)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def fresh_pg_url(db_url: str) -> Iterator[str]:
    """An empty, unmigrated PostgreSQL database (for ``postgres_only`` tests)."""
    name = f"errands_fresh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url(SERVER_URL, name)
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def wait_until_listening(listener: Listener) -> None:
    assert isinstance(listener, PostgresListener)
    assert listener.ready.wait(10), "the listener never connected"


# -- schema --------------------------------------------------------------------------


@pytest.mark.slow
def test_migrate_twice_applies_nothing_the_second_time(backend: Backend) -> None:
    assert backend.migrate() == []
    assert backend.schema_version() == backend.latest_schema_version()


@pytest.mark.sql_only
def test_migration_sql_creates_every_table(backend: Backend) -> None:
    created = re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(errands_\w+)", backend.migration_sql())
    # TABLES is what tests and the benchmark empty: it must name every data table.
    assert sorted(created) == sorted([*TABLES, "errands_schema"])


@pytest.mark.postgres_only
@pytest.mark.slow
def test_concurrent_migrators_apply_each_version_exactly_once(fresh_pg_url: str) -> None:
    backends = [open_backend(fresh_pg_url) for _ in range(3)]
    try:
        assert backends[0].schema_version() is None
        applied = in_threads(3, lambda i: backends[i].migrate())
        versions = sorted(v for per_thread in applied for v in per_thread)
        latest = backends[0].latest_schema_version()
        assert versions == list(range(1, latest + 1))
        assert backends[0].schema_version() == latest
        assert backends[1].migrate() == []
    finally:
        for b in backends:
            b.close()


@pytest.mark.postgres_only
def test_results_written_before_version_5_keep_no_due_time(fresh_pg_url: str) -> None:
    backend = open_backend(fresh_pg_url)
    try:
        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
            conn.execute(postgres_queries()["create_schema_table"])
            for version, migration in backend._migrations():
                if version <= 4:
                    conn.execute(migration)
            conn.execute(
                "INSERT INTO errands_result (uuid, process_uuid, request_uuid, requested_at,"
                " ended_at, status, job_class, parameters, queue, priority, retries,"
                " retry_attempt) VALUES (gen_random_uuid(), gen_random_uuid(),"
                " gen_random_uuid(), now(), now(), 'SUCCESSFUL', 'tests.Job', '{}', 'default',"
                " 0, 0, 0)"
            )
        assert backend.schema_version() == 4

        assert backend.migrate() == [5, 6, 7, 8, 9, 10, 11]

        (old,) = backend.page_results(selection=Selection(), page=PageSpec(limit=100))
        assert (old.status, old.start_at) == (Status.SUCCESSFUL, None)
    finally:
        backend.close()


@pytest.mark.postgres_only
def test_missing_tables_raise_schema_out_of_date(fresh_pg_url: str) -> None:
    backend = open_backend(fresh_pg_url)
    try:
        with pytest.raises(SchemaOutOfDate, match="errands migrate"):
            backend.claim(worker_id=uuid.uuid4(), queues=[], limit=1)
        with pytest.raises(SchemaOutOfDate, match="errands migrate"):
            enqueue(backend, new())
    finally:
        backend.close()


# -- enqueueing ----------------------------------------------------------------------


def test_insert_returns_requests_in_input_order_due_by_the_database_clock(
    backend: Backend,
) -> None:
    before = backend.now()
    wanted = [new(parameters={"n": i}, delay_seconds=float(i * 60)) for i in range(5)]
    requests = enqueue(backend, *wanted)
    after = backend.now()
    assert [r.uuid for r in requests] == [w.uuid for w in wanted]
    assert [r.parameters for r in requests] == [{"n": i} for i in range(5)]
    for i, request in enumerate(requests):
        offset = datetime.timedelta(seconds=i * 60)
        assert before + offset - datetime.timedelta(seconds=1) <= request.start_at
        assert request.start_at <= after + offset
        assert request.start_at.utcoffset() == datetime.timedelta(0)


def test_insert_keeps_every_field(backend: Backend) -> None:
    start = backend.now() + datetime.timedelta(hours=1)
    wanted = new(
        queue="q",
        priority=-3,
        retries=4,
        retry_attempt=2,
        concurrency_key="k",
        start_at=start,
        timeout=1.5,
        source="here.py:1",
        trace_id="t",
        span_id="s",
    )
    (request,) = enqueue(backend, wanted)
    assert (request.queue, request.priority, request.retries, request.retry_attempt) == (
        "q",
        -3,
        4,
        2,
    )
    assert (request.concurrency_key, request.timeout, request.source) == ("k", 1.5, "here.py:1")
    assert (request.trace_id, request.span_id) == ("t", "s")
    assert abs((request.start_at - start).total_seconds()) < 0.001
    assert backend.next_requests(selection=Selection(), limit=100) == [request]


def test_a_failed_enqueue_transaction_leaves_no_request(backend: Backend) -> None:
    with pytest.raises(RuntimeError), backend.enqueue_transaction() as tx:
        tx.insert_requests([new()])
        raise RuntimeError("roll back")
    assert backend.next_requests(selection=Selection(), limit=100) == []


def test_slots_in_use_counts_pending_and_claimed_jobs(backend: Backend) -> None:
    enqueue(backend, new(concurrency_key="pending"))
    enqueue(backend, new(concurrency_key="claimed"))
    claimed = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=2)
    assert len(claimed) == 2
    enqueue(backend, new(concurrency_key="pending-again"))
    slots = [("tests.Job", k) for k in ("pending-again", "claimed", "free")] + [
        ("tests.Other", "pending-again")
    ]
    with backend.enqueue_transaction() as tx:
        tx.lock_slots(sorted(slots))
        assert tx.slots_in_use(slots) == {
            ("tests.Job", "pending-again"),
            ("tests.Job", "claimed"),
        }
        assert [
            r.concurrency_key for r in tx.requests_for_slot(("tests.Job", "pending-again"))
        ] == ["pending-again"]
        assert len(tx.processes_for_slot(("tests.Job", "claimed"))) == 1


@pytest.mark.postgres_only
def test_enqueue_on_an_idle_callers_connection_waits_for_its_commit(backend: Backend) -> None:
    with psycopg.connect(backend.url) as conn:
        with backend.enqueue_transaction(connection=conn) as tx:
            tx.insert_requests([new()])
        assert backend.next_requests(selection=Selection(), limit=100) == []
        conn.commit()
        assert len(backend.next_requests(selection=Selection(), limit=100)) == 1


@pytest.mark.postgres_only
def test_enqueue_on_an_autocommit_connection_commits_at_once(backend: Backend) -> None:
    with psycopg.connect(backend.url, autocommit=True) as conn:
        with backend.enqueue_transaction(connection=conn) as tx:
            tx.insert_requests([new(), new()])
        assert len(backend.next_requests(selection=Selection(), limit=100)) == 2


@pytest.mark.postgres_only
def test_a_failed_enqueue_in_the_callers_transaction_undoes_only_itself(
    backend: Backend,
) -> None:
    with psycopg.connect(backend.url) as conn, conn.transaction():
        with backend.enqueue_transaction(connection=conn) as tx:
            tx.insert_requests([new(parameters={"n": "kept"})])
        with pytest.raises(RuntimeError), backend.enqueue_transaction(connection=conn) as tx:
            tx.insert_requests([new(parameters={"n": "undone"})])
            raise RuntimeError("roll back the savepoint")
    assert [r.parameters for r in backend.next_requests(selection=Selection(), limit=100)] == [
        {"n": "kept"}
    ]


# -- claiming ------------------------------------------------------------------------


def test_claim_order_is_priority_then_due_time_then_fifo(backend: Backend) -> None:
    now = backend.now()
    due_earlier = now - datetime.timedelta(seconds=20)
    due_later = now - datetime.timedelta(seconds=10)
    (fifo_second,) = enqueue(backend, new(parameters={"n": "fifo-2"}, start_at=due_later))
    (low,) = enqueue(backend, new(parameters={"n": "low"}, priority=-1, start_at=due_earlier))
    (earlier,) = enqueue(backend, new(parameters={"n": "earlier"}, start_at=due_earlier))
    (high,) = enqueue(backend, new(parameters={"n": "high"}, priority=5, start_at=due_later))
    # created after fifo_second with the same due time: FIFO puts it after.
    time.sleep(0.01)
    (fifo_third,) = enqueue(backend, new(parameters={"n": "fifo-3"}, start_at=due_later))
    expected = [high.uuid, earlier.uuid, fifo_second.uuid, fifo_third.uuid, low.uuid]

    assert [r.uuid for r in backend.next_requests(selection=Selection(), limit=100)] == expected
    one_by_one = [claim_all_one(backend).request_uuid for _ in expected]
    assert one_by_one == expected


def claim_all_one(backend: Backend) -> JobProcess:
    (process,) = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=1)
    return process


def test_a_batch_claim_returns_processes_in_claim_order(backend: Backend) -> None:
    requests = enqueue(backend, *[new(priority=p) for p in (0, 3, 1, 2, -1)])
    by_priority = sorted(requests, key=lambda r: -r.priority)
    processes = claim_all(backend)
    assert [p.request_uuid for p in processes] == [r.uuid for r in by_priority]


def test_claim_copies_the_request_into_a_process_of_the_worker(backend: Backend) -> None:
    (request,) = enqueue(backend, new(queue="a", retries=2, concurrency_key="k", timeout=3.0))
    worker_id = uuid.uuid4()
    (process,) = backend.claim(worker_id=worker_id, queues=["a"], limit=5)
    assert process.request_uuid == request.uuid
    assert process.uuid != request.uuid
    assert process.worker_id == worker_id
    assert process.requested_at == request.created_at
    assert process.started_at is None
    assert (process.job_class, process.parameters, process.queue) == (
        request.job_class,
        request.parameters,
        "a",
    )
    assert (process.retries, process.concurrency_key, process.timeout) == (2, "k", 3.0)
    assert backend.next_requests(selection=Selection(), limit=100) == []
    assert backend.processes_of_worker(worker_id=worker_id) == [process]


def test_claim_takes_only_the_named_queues(backend: Backend) -> None:
    enqueue(backend, new(queue="a"), new(queue="b"), new(queue="c"))
    assert {p.queue for p in claim_all(backend, queues=["a", "c"])} == {"a", "c"}
    assert [p.queue for p in claim_all(backend, queues=["a"])] == []
    assert [p.queue for p in claim_all(backend, queues=[])] == ["b"]


def test_claim_skips_requests_not_yet_due(backend: Backend) -> None:
    in_an_hour = backend.now() + datetime.timedelta(hours=1)
    enqueue(backend, new(delay_seconds=3600), new(start_at=in_an_hour))
    (due,) = enqueue(backend, new())
    assert [p.request_uuid for p in claim_all(backend)] == [due.uuid]
    assert len(backend.next_requests(selection=Selection(), limit=100)) == 2


def test_claim_takes_at_most_limit(backend: Backend) -> None:
    enqueue(backend, *[new() for _ in range(5)])
    assert len(backend.claim(worker_id=uuid.uuid4(), queues=[], limit=3)) == 3
    assert len(backend.claim(worker_id=uuid.uuid4(), queues=[], limit=3)) == 2
    assert backend.claim(worker_id=uuid.uuid4(), queues=[], limit=3) == []


@pytest.mark.sql_only
def test_concurrent_claimers_never_claim_the_same_request(backend: Backend) -> None:
    requests = enqueue(backend, *[new(parameters={"n": i}) for i in range(300)])
    claimers = [open_backend(backend.url) for _ in range(4)]

    def claim_until_empty(i: int) -> list[uuid.UUID]:
        mine: list[uuid.UUID] = []
        while batch := claimers[i].claim(worker_id=uuid.uuid4(), queues=[], limit=7):
            mine += [p.request_uuid for p in batch]
        return mine

    try:
        per_claimer = in_threads(4, claim_until_empty)
    finally:
        for claimer in claimers:
            claimer.close()
    claimed = [u for mine in per_claimer for u in mine]
    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == {r.uuid for r in requests}


# -- completing ----------------------------------------------------------------------


def test_complete_many_writes_one_result_per_process(backend: Backend) -> None:
    worker_id = uuid.uuid4()
    enqueue(backend, new(parameters={"n": 1}), new(parameters={"n": 2}))
    first, second = claim_all(backend, worker_id)
    ended = backend.now()
    results = backend.complete_many(
        outcomes=[
            outcome(first, return_value={"ok": [1, 2]}, ended_at=ended),
            outcome(
                second,
                Status.ERRORED,
                error_type="ValueError",
                error="bad",
                traceback="Traceback ...",
            ),
            outcome(first),  # a duplicate in the batch
            Outcome(uuid.uuid4(), Status.SUCCESSFUL, None, ended),  # no such process
        ]
    )
    assert [r.process_uuid for r in results] == [first.uuid, second.uuid]
    ok, failed = results
    assert (ok.status, ok.return_value, ok.worker_id) == (
        Status.SUCCESSFUL,
        {"ok": [1, 2]},
        worker_id,
    )
    assert (ok.request_uuid, ok.requested_at, ok.ended_at) == (
        first.request_uuid,
        first.requested_at,
        ended,
    )
    assert isinstance(ok.status, Status)
    assert (failed.status, failed.error_type, failed.error) == (Status.ERRORED, "ValueError", "bad")
    assert failed.traceback == "Traceback ..."
    assert backend.page_processes(selection=Selection(), page=PageSpec(limit=100)) == []
    assert {
        r.uuid for r in backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    } == {ok.uuid, failed.uuid}


def test_complete_many_keeps_every_field_of_mixed_outcomes(backend: Backend) -> None:
    """Plain successes and outcomes with details, in one batch, each written as given."""
    enqueue(backend, *[new(parameters={"n": i}) for i in range(4)])
    plain, never_started, returned, failed = claim_all(backend)
    ended = backend.now()
    results = backend.complete_many(
        outcomes=[
            outcome(plain),
            Outcome(never_started.uuid, Status.CANCELLED, None, ended),
            outcome(returned, return_value="a string\ttab"),
            outcome(
                failed,
                Status.ERRORED,
                error_type="ValueError",
                error="NUL \x00 in a message",
                traceback="Traceback \u00e9",
            ),
        ]
    )
    by_process = {r.process_uuid: r for r in results}
    assert by_process[plain.uuid].status == Status.SUCCESSFUL
    assert (by_process[plain.uuid].error, by_process[plain.uuid].return_value) == ("", None)
    assert by_process[never_started.uuid].started_at is None
    assert by_process[never_started.uuid].ended_at == ended
    assert by_process[returned.uuid].return_value == "a string\ttab"
    assert by_process[failed.uuid].error_type == "ValueError"
    assert by_process[failed.uuid].error.startswith("NUL ")
    assert by_process[failed.uuid].traceback == "Traceback \u00e9"


def test_complete_many_writes_outcomes_that_never_started(backend: Backend) -> None:
    enqueue(backend, new(), new())
    processes = claim_all(backend)
    ended = backend.now()
    results = backend.complete_many(
        outcomes=[Outcome(p.uuid, Status.CANCELLED, None, ended) for p in processes]
    )
    assert [(r.status, r.started_at) for r in results] == [(Status.CANCELLED, None)] * 2


def test_complete_many_can_return_only_the_aborted_results(backend: Backend) -> None:
    enqueue(backend, *[new(parameters={"n": i}) for i in range(4)])
    done, failed, cancelled, lost = claim_all(backend)
    returned = backend.complete_many(
        outcomes=[
            outcome(done),
            outcome(failed, Status.ERRORED, requeue=Requeue(delay_seconds=0, retry_attempt=1)),
            outcome(cancelled, Status.CANCELLED),
            outcome(lost, Status.LOST),
        ],
        aborted_only=True,
    )
    assert [(r.process_uuid, r.status) for r in returned] == [
        (cancelled.uuid, Status.CANCELLED),
        (lost.uuid, Status.LOST),
    ]
    # Every result is written all the same, and the requeue with it.
    assert len(backend.page_results(selection=Selection(), page=PageSpec(limit=100))) == 4
    assert len(backend.next_requests(selection=Selection(), limit=100)) == 1


def test_completing_a_process_twice_writes_nothing_the_second_time(backend: Backend) -> None:
    enqueue(backend, new())
    (process,) = claim_all(backend)
    assert len(backend.complete_many(outcomes=[outcome(process)])) == 1
    assert backend.complete_many(outcomes=[outcome(process, Status.ERRORED)]) == []
    (result,) = backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    assert result.status == Status.SUCCESSFUL


@pytest.mark.sql_only
def test_a_late_completion_after_a_rescue_writes_nothing(backend: Backend) -> None:
    worker_id = register(backend)
    enqueue(backend, new())
    (process,) = claim_all(backend, worker_id)
    backdate_heartbeat(backend.url, worker_id, 120)
    (lost,) = backend.rescue_stale_workers(timeout_seconds=60)
    assert lost.process_uuid == process.uuid
    assert backend.complete_many(outcomes=[outcome(process)]) == []
    assert [
        r.status for r in backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    ] == [Status.LOST]


def test_a_requeue_enqueues_a_new_request_linked_from_the_result(backend: Backend) -> None:
    enqueue(backend, new(queue="a", priority=2, retries=3, concurrency_key="k"))
    (process,) = claim_all(backend)
    before = backend.now()
    (result,) = backend.complete_many(
        outcomes=[
            outcome(process, Status.ERRORED, requeue=Requeue(delay_seconds=60, retry_attempt=1))
        ]
    )
    (retry,) = backend.next_requests(selection=Selection(), limit=100)
    assert result.retry_request_uuid == retry.uuid
    assert retry.uuid not in (process.uuid, process.request_uuid)
    assert result.retry_attempt == 0
    assert retry.retry_attempt == 1
    assert (retry.queue, retry.priority, retry.retries, retry.concurrency_key) == ("a", 2, 3, "k")
    assert retry.parameters == process.parameters
    assert 59 <= (retry.start_at - before).total_seconds() <= 65


def test_mark_started_stamps_a_process_once(backend: Backend) -> None:
    enqueue(backend, new())
    (process,) = claim_all(backend)
    first = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    backend.mark_started(started=[(process.uuid, first)])
    backend.mark_started(started=[(process.uuid, first + datetime.timedelta(hours=1))])
    (stamped,) = backend.page_processes(selection=Selection(), page=PageSpec(limit=100))
    assert stamped.started_at == first
    (result,) = backend.complete_many(
        outcomes=[Outcome(process.uuid, Status.SUCCESSFUL, None, backend.now())]
    )
    assert result.started_at == first


def test_release_puts_unstarted_processes_back_as_they_were(backend: Backend) -> None:
    requests = enqueue(backend, new(parameters={"n": 1}), new(parameters={"n": 2}, priority=1))
    processes = claim_all(backend)
    started = processes[0]
    backend.mark_started(started=[(started.uuid, backend.now())])
    assert backend.release(process_uuids=[p.uuid for p in processes]) == 1
    (back,) = backend.next_requests(selection=Selection(), limit=100)
    original = next(r for r in requests if r.uuid == processes[1].request_uuid)
    assert back == original
    assert [
        p.uuid for p in backend.page_processes(selection=Selection(), page=PageSpec(limit=100))
    ] == [started.uuid]
    assert backend.release(process_uuids=[uuid.uuid4()]) == 0


# -- workers and rescue --------------------------------------------------------------


def test_heartbeat_register_and_deregister(backend: Backend) -> None:
    worker_id = register(backend)
    assert backend.heartbeat(worker_id=worker_id)
    (info,) = backend.workers(timeout_seconds=60)
    assert (info.worker_id, info.hostname, info.pid, info.queues) == (
        worker_id,
        "test-host",
        1234,
        ["a"],
    )
    assert info.last_heartbeat_at is not None and not info.stale
    register(backend, worker_id)  # registering again is an upsert
    assert len(backend.workers(timeout_seconds=60)) == 1
    backend.deregister_worker(worker_id=worker_id)
    assert backend.workers(timeout_seconds=60) == []
    assert not backend.heartbeat(worker_id=worker_id)


@pytest.mark.sql_only
def test_workers_are_marked_stale_after_the_timeout(backend: Backend) -> None:
    worker_id = register(backend)
    backdate_heartbeat(backend.url, worker_id, 120)
    assert [w.stale for w in backend.workers(timeout_seconds=60)] == [True]
    assert [w.stale for w in backend.workers(timeout_seconds=600)] == [False]


@pytest.mark.sql_only
def test_rescue_turns_a_silent_workers_processes_into_lost_results(backend: Backend) -> None:
    dead, alive = register(backend), register(backend)
    enqueue(backend, new(), new(), new())
    dead_processes = backend.claim(worker_id=dead, queues=[], limit=2)
    (alive_process,) = claim_all(backend, alive)
    assert backend.rescue_stale_workers(timeout_seconds=60) == []
    for worker_id in (dead, alive):
        backdate_heartbeat(backend.url, worker_id, 120)
    assert backend.heartbeat(worker_id=alive)

    lost = backend.rescue_stale_workers(timeout_seconds=60)

    assert {r.process_uuid for r in lost} == {p.uuid for p in dead_processes}
    assert all(r.status == Status.LOST and r.error_type == "WorkerLost" for r in lost)
    assert all(str(dead) in r.error and r.worker_id == dead for r in lost)
    assert all(r.retry_request_uuid is None for r in lost)
    assert backend.page_processes(selection=Selection(), page=PageSpec(limit=100)) == [
        alive_process
    ]
    assert not backend.heartbeat(worker_id=dead)  # its row is gone
    assert [w.worker_id for w in backend.workers(timeout_seconds=60)] == [alive]


@pytest.mark.postgres_only
def test_rescue_judges_staleness_by_the_database_clock(backend: Backend) -> None:
    worker_id = register(backend)
    enqueue(backend, new())
    claim_all(backend, worker_id)
    backdate_heartbeat(backend.url, worker_id, 50)
    assert backend.rescue_stale_workers(timeout_seconds=60) == []
    backdate_heartbeat(backend.url, worker_id, 70)
    assert len(backend.rescue_stale_workers(timeout_seconds=60)) == 1


@pytest.mark.sql_only
def test_concurrent_rescuers_rescue_a_worker_exactly_once(backend: Backend) -> None:
    dead = register(backend)
    enqueue(backend, *[new() for _ in range(20)])
    processes = claim_all(backend, dead)
    backdate_heartbeat(backend.url, dead, 120)
    rescuers = [open_backend(backend.url) for _ in range(5)]
    try:
        found = in_threads(5, lambda i: rescuers[i].rescue_stale_workers(timeout_seconds=60))
    finally:
        for rescuer in rescuers:
            rescuer.close()
    lost = [r.process_uuid for per_rescuer in found for r in per_rescuer]
    assert sorted(lost) == sorted(p.uuid for p in processes)
    assert sum(1 for per_rescuer in found if per_rescuer) == 1
    assert len(backend.page_results(selection=Selection(), page=PageSpec(limit=100))) == 20


@pytest.mark.sql_only
def test_processes_of_a_worker_without_heartbeat_row_are_rescued(backend: Backend) -> None:
    enqueue(backend, new())
    unregistered = uuid.uuid4()
    (process,) = claim_all(backend, unregistered)  # this worker never registered
    assert backend.rescue_stale_workers(timeout_seconds=60) == []  # claimed too recently
    backdate_claims(backend.url, unregistered, 120)
    (lost,) = backend.rescue_stale_workers(timeout_seconds=60)
    assert (lost.process_uuid, lost.status) == (process.uuid, Status.LOST)
    assert backend.page_processes(selection=Selection(), page=PageSpec(limit=100)) == []


def test_lose_processes_converts_only_the_named_processes_of_the_worker(backend: Backend) -> None:
    worker_id, other = register(backend), register(backend)
    enqueue(backend, new(), new(), new())
    orphan, kept = backend.claim(worker_id=worker_id, queues=[], limit=2)
    (others,) = claim_all(backend, other)
    lost = backend.lose_processes(worker_id=worker_id, process_uuids=[orphan.uuid, others.uuid])
    assert [(r.process_uuid, r.status) for r in lost] == [(orphan.uuid, Status.LOST)]
    assert lost[0].error_type in ("Orphaned", "WorkerLost")
    remaining = {
        p.uuid for p in backend.page_processes(selection=Selection(), page=PageSpec(limit=100))
    }
    assert remaining == {kept.uuid, others.uuid}
    assert backend.lose_processes(worker_id=worker_id, process_uuids=[orphan.uuid]) == []


@pytest.mark.slow
def test_processes_and_results_keep_the_requests_due_time(backend: Backend) -> None:
    """The due time travels request -> process -> result, whichever way the job ends."""
    worker_id = register(backend)
    done, lost = enqueue(backend, new(delay_seconds=0.3), new(delay_seconds=0.3))
    (never_run,) = enqueue(backend, new(delay_seconds=3600))
    due = {done.uuid: done.start_at, lost.uuid: lost.start_at}
    assert all(at > r.created_at for at, r in zip(due.values(), (done, lost), strict=True))
    wait_for_due(backend, max(due.values()))
    processes = backend.claim(worker_id=worker_id, queues=[], limit=10)
    assert {p.request_uuid: p.start_at for p in processes} == due
    by_request = {p.request_uuid: p for p in processes}

    (finished,) = backend.complete_many(outcomes=[outcome(by_request[done.uuid])])
    (rescued,) = backend.lose_processes(
        worker_id=worker_id, process_uuids=[by_request[lost.uuid].uuid]
    )
    cancelled = backend.cancel_pending(uuid=never_run.uuid)

    assert cancelled is not None
    assert (finished.start_at, rescued.start_at, cancelled.start_at) == (
        done.start_at,
        lost.start_at,
        never_run.start_at,
    )
    listed = {
        r.request_uuid: r.start_at
        for r in backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    }
    assert listed == {r.uuid: r.start_at for r in (done, lost, never_run)}


def wait_for_due(backend: Backend, moment: datetime.datetime) -> None:
    """Sleep until the database clock has passed ``moment``."""
    while (late := (moment - backend.now()).total_seconds()) >= 0:
        time.sleep(late + 0.01)


# -- pruning -------------------------------------------------------------------------


def finish(backend: Backend, count: int, *, ended_at: datetime.datetime) -> list[JobResult]:
    enqueue(backend, *[new() for _ in range(count)])
    return backend.complete_many(
        outcomes=[outcome(p, ended_at=ended_at) for p in claim_all(backend)]
    )


def test_prune_results_deletes_old_results_in_batches(backend: Backend) -> None:
    old = finish(backend, 5, ended_at=backend.now() - datetime.timedelta(days=2))
    (recent,) = finish(backend, 1, ended_at=backend.now())
    assert len(old) == 5
    day = 24 * 3600
    assert [backend.prune_results(older_than_seconds=day, batch_size=2) for _ in range(4)] == [
        2,
        2,
        1,
        0,
    ]
    assert [
        r.uuid for r in backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    ] == [recent.uuid]


def test_purge_deletes_results_older_than_the_cutoff_or_all(backend: Backend) -> None:
    finish(backend, 2, ended_at=backend.now() - datetime.timedelta(hours=2))
    finish(backend, 1, ended_at=backend.now())
    assert backend.purge(older_than_seconds=3600) == 2
    assert backend.purge() == 1
    assert backend.page_results(selection=Selection(), page=PageSpec(limit=100)) == []


# -- cancelling ----------------------------------------------------------------------


def test_cancel_request_turns_a_pending_request_into_a_cancelled_result(backend: Backend) -> None:
    (request,) = enqueue(backend, new(delay_seconds=3600))
    result = backend.cancel_pending(uuid=request.uuid)
    assert result is not None
    assert (result.status, result.request_uuid, result.worker_id) == (
        Status.CANCELLED,
        request.uuid,
        None,
    )
    assert result.started_at is None
    assert result.process_uuid not in (request.uuid, result.uuid)
    assert backend.next_requests(selection=Selection(), limit=100) == []
    assert backend.page_results(selection=Selection(), page=PageSpec(limit=100)) == [result]
    assert backend.cancel_pending(uuid=request.uuid) is None


def test_cancel_request_leaves_a_claimed_job_alone(backend: Backend) -> None:
    (request,) = enqueue(backend, new())
    claim_all(backend)
    assert backend.cancel_pending(uuid=request.uuid) is None
    assert len(backend.page_processes(selection=Selection(), page=PageSpec(limit=100))) == 1


def test_request_cancel_flags_a_process_for_its_worker(backend: Backend) -> None:
    worker_id, other = uuid.uuid4(), uuid.uuid4()
    enqueue(backend, new(), new(), new())
    by_uuid, by_request, unflagged = backend.claim(worker_id=worker_id, queues=[], limit=3)
    assert backend.flagged_to_stop(worker_id=worker_id) == []
    assert backend.flag_to_stop(uuid=by_uuid.uuid)
    assert backend.flag_to_stop(uuid=by_request.request_uuid)
    assert not backend.flag_to_stop(uuid=uuid.uuid4())
    flagged = backend.flagged_to_stop(worker_id=worker_id)
    assert sorted(flagged) == sorted([by_uuid.uuid, by_request.uuid])
    assert backend.flagged_to_stop(worker_id=other) == []
    assert unflagged.uuid not in flagged


# -- listing and looking up ------------------------------------------------------------


def test_list_filters_narrow_each_listing(backend: Backend) -> None:
    enqueue(
        backend,
        new(queue="a", job_class="tests.A", concurrency_key="x"),
        new(queue="b", job_class="tests.B"),
        new(queue="a", job_class="tests.B", delay_seconds=3600),
    )
    assert len(backend.next_requests(selection=Selection(queue="a"), limit=100)) == 2
    assert len(backend.next_requests(selection=Selection(job_class="tests.B"), limit=100)) == 2
    assert len(backend.next_requests(selection=Selection(concurrency_key="x"), limit=100)) == 1
    assert len(backend.next_requests(selection=Selection(), limit=1)) == 1
    a, b = claim_all(backend)
    assert [
        p.uuid
        for p in backend.page_processes(selection=Selection(queue="b"), page=PageSpec(limit=100))
    ] == [b.uuid]
    backend.complete_many(outcomes=[outcome(a), outcome(b, Status.ERRORED)])
    assert [
        r.process_uuid
        for r in backend.page_results(
            selection=Selection(status=Status.ERRORED), page=PageSpec(limit=100)
        )
    ] == [b.uuid]
    assert [
        r.process_uuid
        for r in backend.page_results(
            selection=Selection(job_class="tests.A"), page=PageSpec(limit=100)
        )
    ] == [a.uuid]


def test_results_are_listed_newest_first(backend: Backend) -> None:
    now = backend.now()
    enqueue(backend, *[new(parameters={"n": i}) for i in range(3)])
    processes = claim_all(backend)
    backend.complete_many(
        outcomes=[
            outcome(p, ended_at=now - datetime.timedelta(minutes=m))
            for p, m in zip(processes, (5, 1, 3), strict=True)
        ]
    )
    listed = backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    assert [r.ended_at for r in listed] == sorted((r.ended_at for r in listed), reverse=True)
    assert [r.process_uuid for r in listed] == [processes[i].uuid for i in (1, 2, 0)]


def test_get_finds_each_kind_of_uuid(backend: Backend) -> None:
    (request,) = enqueue(backend, new())
    assert backend.get(uuid=request.uuid) == request
    (process,) = claim_all(backend)
    assert backend.get(uuid=process.uuid) == process
    assert backend.get(uuid=request.uuid) == process
    (result,) = backend.complete_many(
        outcomes=[outcome(process, Status.ERRORED, requeue=Requeue(0, 1))]
    )
    assert backend.get(uuid=result.uuid) == result
    assert backend.get(uuid=process.uuid) == result
    assert backend.get(uuid=request.uuid) == result  # the request's (latest) result
    assert result.retry_request_uuid is not None
    assert isinstance(backend.get(uuid=result.retry_request_uuid), JobRequest)
    assert backend.get(uuid=uuid.uuid4()) is None


def test_link_retry_records_the_retry_on_the_result(backend: Backend) -> None:
    enqueue(backend, new())
    (process,) = claim_all(backend)
    (result,) = backend.complete_many(outcomes=[outcome(process, Status.ERRORED)])
    with backend.enqueue_transaction() as tx:
        (retry,) = tx.insert_requests([new(retry_attempt=1)])
        tx.link_retry(result_uuid=result.uuid, request_uuid=retry.uuid)
    linked = backend.get(uuid=result.uuid)
    assert isinstance(linked, JobResult) and linked.retry_request_uuid == retry.uuid


def test_stats_count_pending_scheduled_running_results_and_workers(backend: Backend) -> None:
    register(backend)
    enqueue(backend, new(queue="b"), new(queue="b"))
    claim_all(backend)
    enqueue(backend, new(queue="b"))
    enqueue(backend, new(queue="a", start_at=backend.now() - datetime.timedelta(seconds=30)))
    enqueue(backend, new(queue="a", delay_seconds=3600))
    processes = backend.page_processes(selection=Selection(), page=PageSpec(limit=100))
    backend.complete_many(outcomes=[outcome(processes[0], Status.ERRORED)])

    stats = backend.stats(heartbeat_timeout_seconds=60)

    by_queue = {q.queue: q for q in stats.queues}
    assert set(by_queue) == {"a", "b"}
    a, b = by_queue["a"], by_queue["b"]
    assert (a.pending, a.scheduled, a.running) == (1, 1, 0)
    assert a.oldest_pending_age is not None and 29 <= a.oldest_pending_age <= 60
    assert (b.pending, b.scheduled, b.running) == (1, 0, 1)
    assert stats.results_by_status == {"ERRORED": 1}
    assert (stats.workers_active, stats.workers_stale) == (1, 0)


def test_now_is_the_database_clock_in_utc(backend: Backend) -> None:
    first, second = backend.now(), backend.now()
    assert first.utcoffset() == datetime.timedelta(0)
    assert first <= second
    assert abs((first - datetime.datetime.now(UTC)).total_seconds()) < 5


# -- notifications -----------------------------------------------------------------------


@pytest.mark.postgres_only
@pytest.mark.slow
def test_listen_wakes_soon_after_a_committed_enqueue_only(backend: Backend) -> None:
    woken = threading.Event()
    listener = backend.listen(on_wake=woken.set)
    try:
        wait_until_listening(listener)
        with pytest.raises(RuntimeError), backend.enqueue_transaction() as tx:
            tx.insert_requests([new()])
            raise RuntimeError("roll back")
        assert not woken.wait(0.5)

        enqueue(backend, new(delay_seconds=3600))  # nothing due yet: no wake-up
        assert not woken.wait(0.5)

        enqueue(backend, new())
        assert woken.wait(10)
    finally:
        started = time.monotonic()
        listener.close()
        assert time.monotonic() - started < 3


@pytest.mark.postgres_only
@pytest.mark.slow
def test_a_requeue_and_a_release_wake_listeners(backend: Backend) -> None:
    enqueue(backend, new(), new())
    first, second = claim_all(backend)
    woken = threading.Event()
    listener = backend.listen(on_wake=woken.set)
    try:
        wait_until_listening(listener)
        backend.complete_many(outcomes=[outcome(first, Status.ERRORED, requeue=Requeue(0, 1))])
        assert woken.wait(10)
        woken.clear()
        backend.release(process_uuids=[second.uuid])
        assert woken.wait(10)
    finally:
        listener.close()


@pytest.mark.postgres_only
@pytest.mark.parametrize(
    "planner",
    ["", "-c enable_nestloop=off", "-c enable_hashjoin=off -c enable_mergejoin=off"],
    ids=["default-plan", "hash-or-merge-join", "nested-loop"],
)
def test_a_completion_wakes_listeners_whatever_its_plan_and_what_it_returns(
    db_url: str, monkeypatch: pytest.MonkeyPatch, planner: str
) -> None:
    """A worker asks complete_many for its LOST and CANCELLED results only, so most
    completions return no row. The slot of a limited job that ended, and a requeue due
    now, must wake the workers all the same, whichever join the planner picks (a hash
    join once skipped the notification, and held jobs waited for the next poll)."""
    monkeypatch.setenv("PGOPTIONS", planner)  # libpq: the session settings of new connections
    backend = open_backend(db_url)
    woken = threading.Event()
    listener = backend.listen(on_wake=woken.set)
    try:
        wait_until_listening(listener)
        limited = (Limit("wake-key", concurrency=1),)
        for _ in range(3):  # past psycopg's prepared statement and the generic plan
            enqueue(backend, new(limits=limited), new())
            held_slot, requeued = sorted(claim_all(backend), key=lambda p: p.limits == ())
            woken.clear()
            done = [outcome(held_slot)]
            assert backend.complete_many(outcomes=done, aborted_only=True) == []
            assert woken.wait(10), "a freed slot woke nobody"
            woken.clear()
            again = [outcome(requeued, Status.ERRORED, requeue=Requeue(0, 1))]
            assert backend.complete_many(outcomes=again, aborted_only=True) == []
            assert woken.wait(10), "a due requeue woke nobody"
            (retry,) = claim_all(backend)
            backend.complete_many(outcomes=[outcome(retry)], aborted_only=True)
    finally:
        listener.close()
        backend.close()


@pytest.mark.postgres_only
@pytest.mark.slow
def test_listener_reconnects_and_wakes_after_losing_its_connection(backend: Backend) -> None:
    woken = threading.Event()
    listener = backend.listen(on_wake=woken.set)
    try:
        wait_until_listening(listener)
        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN errands_jobs%' AND datname = current_database()"
            )
        assert woken.wait(10)  # woken after reconnecting: notifications may be lost
        woken.clear()
        enqueue(backend, new())
        assert woken.wait(10)
    finally:
        listener.close()


# -- what LOST results are owed: follow-ups ---------------------------------------------


def lost_result(backend: Backend, **fields: Any) -> JobResult:
    """A LOST result, written as every rescue writes one (here: an orphan lost)."""
    worker_id = register(backend)
    enqueue(backend, new(**fields))
    (process,) = claim_all(backend, worker_id)
    (lost,) = backend.lose_processes(worker_id=worker_id, process_uuids=[process.uuid])
    return lost


def test_a_lost_result_is_owed_its_followup_in_the_rescues_transaction(backend: Backend) -> None:
    lost = lost_result(backend, retries=2)
    assert [r.uuid for r in backend.followups(limit=10)] == [lost.uuid]
    assert backend.followups(limit=10)[0] == lost


def test_a_followup_is_settled_once_with_the_retry_in_the_same_transaction(
    backend: Backend,
) -> None:
    lost = lost_result(backend, retries=1)
    with backend.enqueue_transaction() as tx:
        assert tx.settle_followup(result_uuid=lost.uuid)
        (retry,) = tx.insert_requests([new(retry_attempt=1, retries=1)])
        tx.link_retry(result_uuid=lost.uuid, request_uuid=retry.uuid)
    assert backend.followups(limit=10) == []
    with backend.enqueue_transaction() as tx:
        assert not tx.settle_followup(result_uuid=lost.uuid)  # already settled
    (linked,) = backend.page_results(selection=Selection(), page=PageSpec(limit=10))
    assert linked.retry_request_uuid == retry.uuid


def test_a_settlement_that_fails_leaves_the_followup_owed(backend: Backend) -> None:
    lost = lost_result(backend, retries=1)
    with pytest.raises(RuntimeError), backend.enqueue_transaction() as tx:
        assert tx.settle_followup(result_uuid=lost.uuid)
        tx.insert_requests([new(retry_attempt=1, retries=1)])
        raise RuntimeError("the worker failed before committing")
    assert [r.uuid for r in backend.followups(limit=10)] == [lost.uuid]
    assert backend.next_requests(selection=Selection(), limit=10) == []


@pytest.mark.sql_only
def test_concurrent_settlers_take_a_followup_exactly_once(backend: Backend) -> None:
    lost = lost_result(backend, retries=1)
    settlers = [open_backend(backend.url) for _ in range(4)]

    def settle(i: int) -> bool:
        with settlers[i].enqueue_transaction() as tx:
            if not tx.settle_followup(result_uuid=lost.uuid):
                return False
            tx.insert_requests([new(retry_attempt=1, retries=1)])
            return True

    try:
        taken = in_threads(4, settle)
    finally:
        for settler in settlers:
            settler.close()
    assert sorted(taken) == [False, False, False, True]
    assert len(backend.next_requests(selection=Selection(), limit=10)) == 1
    assert backend.followups(limit=10) == []


def test_pruning_a_result_forgets_what_it_was_owed(backend: Backend) -> None:
    lost_result(backend)
    time.sleep(0.01)
    assert backend.prune_results(older_than_seconds=0) == 1
    assert backend.followups(limit=10) == []


@pytest.mark.sql_only
def test_a_rescuer_never_rescues_itself(backend: Backend) -> None:
    rescuer = register(backend)
    enqueue(backend, new(), new())
    mine = claim_all(backend, rescuer)
    backdate_heartbeat(backend.url, rescuer, 120)  # its own beat is late (cut off, or back)
    assert backend.rescue_stale_workers(timeout_seconds=60, rescuer=rescuer) == []
    assert len(backend.page_processes(selection=Selection(), page=PageSpec(limit=10))) == 2
    lost = backend.rescue_stale_workers(timeout_seconds=60, rescuer=register(backend))
    assert sorted(r.process_uuid for r in lost) == sorted(p.uuid for p in mine)


@pytest.mark.sql_only
def test_a_rescuer_never_rescues_its_own_processes_without_a_heartbeat_row(
    backend: Backend,
) -> None:
    enqueue(backend, new())
    rescuer = uuid.uuid4()  # its heartbeat row is gone (a peer took it)
    claim_all(backend, rescuer)
    backdate_claims(backend.url, rescuer, 120)
    assert backend.rescue_stale_workers(timeout_seconds=60, rescuer=rescuer) == []
    assert len(backend.rescue_stale_workers(timeout_seconds=60)) == 1


# -- short ids: uuids by prefix (issue 19, item 7) ---------------------------------------


def keyed(hex_start: str) -> uuid.UUID:
    """A uuid starting with ``hex_start``, the rest random."""
    return uuid.UUID(hex_start + uuid.uuid4().hex[len(hex_start) :])


def test_find_prefix_finds_a_request_by_the_start_of_its_uuid(backend: Backend) -> None:
    (request,) = enqueue(backend, new(uuid=keyed("abcdef12")))
    enqueue(backend, new(uuid=keyed("abcdef34")), new(uuid=keyed("12345678")))
    assert backend.find_prefix(prefix="abcdef12", limit=10) == [request]
    assert backend.find_prefix(prefix="ABCDEF1", limit=10) == [request]  # case ignored
    assert [r.uuid.hex[:8] for r in backend.find_prefix(prefix="abcdef", limit=10)] == [
        "abcdef12",
        "abcdef34",
    ]
    assert backend.find_prefix(prefix="fedcba", limit=10) == []


def test_find_prefix_takes_hyphens_and_a_whole_uuid(backend: Backend) -> None:
    (request,) = enqueue(backend, new(uuid=keyed("0123456789ab")))
    text = str(request.uuid)
    assert backend.find_prefix(prefix=text[:13], limit=10) == [request]  # "01234567-89ab"
    assert backend.find_prefix(prefix=text, limit=10) == [request]
    assert backend.find_prefix(prefix=request.uuid.hex, limit=10) == [request]


def test_find_prefix_finds_processes_by_theirs_or_their_requests_uuid(backend: Backend) -> None:
    enqueue(backend, new(uuid=keyed("aaaaaa")))
    (process,) = claim_all(backend)
    assert backend.find_prefix(prefix="aaaaaa", limit=10) == [process]
    assert backend.find_prefix(prefix=process.uuid.hex[:12], limit=10) == [process]


def test_find_prefix_finds_results_by_their_request_process_or_own_uuid(
    backend: Backend,
) -> None:
    enqueue(backend, new(uuid=keyed("bbbbbb")))
    (process,) = claim_all(backend)
    (result,) = backend.complete_many(outcomes=[outcome(process)])
    for key in (result.uuid, result.process_uuid, result.request_uuid):
        assert backend.find_prefix(prefix=key.hex[:12], limit=10) == [result]


def test_find_prefix_returns_at_most_limit_rows_of_each_table(backend: Backend) -> None:
    enqueue(backend, *(new(uuid=keyed("cccccc")) for _ in range(5)))
    found = backend.find_prefix(prefix="cccccc", limit=3)
    assert len(found) == 3
    assert [r.uuid for r in found] == sorted(r.uuid for r in found)


def test_find_prefix_refuses_what_is_not_hex(backend: Backend) -> None:
    for prefix in ("xyz123", "", "0" * 33, "abc%"):
        with pytest.raises(ValueError, match="not the start of a uuid"):
            backend.find_prefix(prefix=prefix, limit=10)


# -- completing one process with enqueues in the same transaction (deferrals) -----------


def test_completing_writes_the_result_and_the_blocks_enqueues_together(backend: Backend) -> None:
    enqueue(backend, new(concurrency_key="k"))
    (process,) = claim_all(backend)
    deferred = outcome(process, Status.DEFERRED, requeue=Requeue(delay_seconds=0, retry_attempt=0))
    with backend.completing(outcome=deferred) as (result, tx):
        assert result is not None and result.status == Status.DEFERRED
        assert result.retry_request_uuid is None  # the requeue is the block's to decide
        assert tx.slots_in_use([("tests.Job", "k")]) == set()  # the process is gone
        (again,) = tx.insert_requests([new(concurrency_key="k")])
        assert tx.link_retry(result_uuid=result.uuid, request_uuid=again.uuid)
    assert backend.page_processes(selection=Selection(), page=PageSpec(limit=10)) == []
    (linked,) = backend.page_results(selection=Selection(), page=PageSpec(limit=10))
    assert linked.retry_request_uuid == again.uuid
    assert [r.uuid for r in backend.next_requests(selection=Selection(), limit=10)] == [again.uuid]


def test_completing_writes_nothing_when_the_block_raises(backend: Backend) -> None:
    enqueue(backend, new())
    (process,) = claim_all(backend)
    with pytest.raises(RuntimeError), backend.completing(outcome=outcome(process)) as (_, tx):
        tx.insert_requests([new()])
        raise RuntimeError("should_enqueue failed")
    assert backend.page_processes(selection=Selection(), page=PageSpec(limit=10)) == [process]
    assert backend.page_results(selection=Selection(), page=PageSpec(limit=10)) == []
    assert backend.next_requests(selection=Selection(), limit=10) == []


def test_completing_a_process_that_is_gone_yields_no_result(backend: Backend) -> None:
    enqueue(backend, new())
    (process,) = claim_all(backend)
    backend.complete_many(outcomes=[outcome(process)])
    with backend.completing(outcome=outcome(process)) as (result, _):
        assert result is None


# -- expiry (errands.expiry) and final failures ------------------------------------------


def test_claim_ends_expired_requests_as_cancelled_expired(backend: Backend) -> None:
    now = datetime.datetime.now(UTC)
    past, future = now - datetime.timedelta(seconds=1), now + datetime.timedelta(hours=1)
    limited = (Limit("expiry-key", concurrency=5),)
    expired, delayed, held, kept, plain = enqueue(
        backend,
        new(expires_at=past),
        new(expires_at=past, delay_seconds=3600),  # not due yet: it ends all the same
        new(expires_at=past, limits=limited),  # a limited job too
        new(expires_at=future, limits=limited),
        new(),
    )
    claimed = claim_all(backend)
    assert sorted(p.request_uuid for p in claimed) == sorted([kept.uuid, plain.uuid])
    assert {p.request_uuid: p.expires_at for p in claimed}[kept.uuid] == future
    results = backend.page_results(selection=Selection(), page=PageSpec(limit=10))
    assert {r.request_uuid for r in results} == {expired.uuid, delayed.uuid, held.uuid}
    for result in results:
        assert (result.status, result.error_type, result.error) == (
            Status.CANCELLED,
            "errands.Expired",
            "expired",
        )
        assert (result.started_at, result.worker_id, result.expires_at) == (None, None, past)
    assert backend.next_requests(selection=Selection(), limit=10) == []


def test_expiry_travels_to_the_result_and_to_a_requeue(backend: Backend) -> None:
    future = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    enqueue(backend, new(expires_at=future, retries=1))
    (process,) = claim_all(backend)
    failed = outcome(process, Status.ERRORED, requeue=Requeue(delay_seconds=0, retry_attempt=1))
    (result,) = backend.complete_many(outcomes=[failed])
    assert result.expires_at == future
    (retry,) = backend.next_requests(selection=Selection(), limit=10)
    assert retry.expires_at == future


def test_selection_final_picks_failures_without_attempts_left(backend: Backend) -> None:
    enqueue(backend, new(retries=0), new(retries=1), new(retries=0), new(retries=0))
    last, more_left, fine, retried = claim_all(backend)
    backend.complete_many(
        outcomes=[
            outcome(last, Status.ERRORED),
            outcome(more_left, Status.ERRORED),
            outcome(fine),
            outcome(retried, Status.ERRORED),
        ]
    )
    retried_result = backend.get(uuid=retried.uuid)
    assert isinstance(retried_result, JobResult)
    with backend.enqueue_transaction() as tx:
        (again,) = tx.insert_requests([new(retry_attempt=1)])
        assert tx.link_retry(result_uuid=retried_result.uuid, request_uuid=again.uuid)
    final = backend.page_results(selection=Selection(final=True), page=PageSpec(limit=10))
    assert [r.process_uuid for r in final] == [last.uuid]
    assert backend.count(kind=Kind.RESULT, selection=Selection(final=True)) == 1
    others = backend.page_results(selection=Selection(final=False), page=PageSpec(limit=10))
    assert len(others) == 3
