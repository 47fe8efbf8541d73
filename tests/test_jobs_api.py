"""The jobs API: defining jobs, run_in_worker options, enqueue_many, concurrency keys."""

from __future__ import annotations

import contextlib
import datetime
import gc
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sample_jobs

import errands
from errands import Job, ParameterError, register_job, register_type
from errands.backends import Backend
from errands.backends.base import EnqueueTransaction
from errands.jobs import LARGE_BATCH, EnqueueOptions
from errands.models import JobRequest, NewRequest
from errands.registry import build_job


class Unstorable:
    pass


@register_job
class Welcome(Job):
    def __init__(self, user_id: int, when: datetime.datetime) -> None:
        self.user_id = user_id
        self.when = when

    def default_queue(self) -> str:
        return "mail"

    def default_priority(self) -> int:
        return 3

    def default_retries(self) -> int:
        return 2

    def run(self) -> None:
        pass


@register_job
class AtMostTwo(Job):
    """A custom should_enqueue: up to two pending jobs per key."""

    def __init__(self, n: int) -> None:
        self.n = n

    def default_concurrency_key(self) -> str:
        return "pair"

    def should_enqueue(self, concurrency_key: str) -> bool:
        return len(self.get_requested_jobs(concurrency_key)) < 2

    def run(self) -> None:
        pass


NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)


def test_run_in_worker_returns_the_request_with_the_jobs_defaults(backend: Backend) -> None:
    line = sys._getframe().f_lineno + 1
    request = Welcome(42, NOW).run_in_worker()
    assert request is not None
    assert request.job_class == "test_jobs_api.Welcome"
    assert (request.queue, request.priority, request.retries) == ("mail", 3, 2)
    assert request.retry_attempt == 0
    assert request.concurrency_key == ""
    assert request.source == f"{__file__}:{line}"
    assert [r.uuid for r in errands.requests()] == [request.uuid]


def test_run_in_worker_options_override_the_defaults(backend: Backend) -> None:
    request = Welcome(1, NOW).run_in_worker(
        queue="slow", priority=-5, retries=7, retry_attempt=1, concurrency_key="k", timeout=9.5
    )
    assert request is not None
    assert (request.queue, request.priority, request.retries, request.retry_attempt) == (
        "slow",
        -5,
        7,
        1,
    )
    assert (request.concurrency_key, request.timeout) == ("k", 9.5)


@pytest.mark.parametrize(
    "delay", [60, 60.0, datetime.timedelta(seconds=60)], ids=["int", "float", "timedelta"]
)
def test_delay_counts_from_the_database_clock(backend: Backend, delay: object) -> None:
    before = backend.now()
    request = Welcome(1, NOW).run_in_worker(delay=delay)  # type: ignore[arg-type]
    assert request is not None
    offset = (request.start_at - before).total_seconds()
    assert 59 <= offset <= 65


def test_delay_as_datetime_sets_the_start_time(backend: Backend) -> None:
    start = backend.now() + datetime.timedelta(hours=2)
    request = Welcome(1, NOW).run_in_worker(delay=start)
    assert request is not None
    assert abs((request.start_at - start).total_seconds()) < 0.001


@pytest.mark.parametrize("count", [1, 300])  # one INSERT, and a bulk COPY
@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("priority", 2**40, ValueError),
        ("priority", -(2**31) - 1, ValueError),
        ("retries", 2**31, ValueError),
        ("retry_attempt", 2**35, ValueError),
        ("priority", "high", TypeError),
        ("retries", True, TypeError),
    ],
)
def test_options_the_database_cannot_store_are_refused(
    backend: Backend, count: int, option: str, value: object, error: type[Exception]
) -> None:
    options = EnqueueOptions(**{option: value})  # type: ignore[arg-type]
    with pytest.raises(error, match=f"sample_jobs.Noop: {option} "):
        errands.enqueue_many([sample_jobs.Noop() for _ in range(count)], options=options)
    assert errands.requests() == []


def test_the_largest_storable_priority_is_stored_as_given(backend: Backend) -> None:
    top, bottom = 2**31 - 1, -(2**31)
    errands.enqueue_many(
        [sample_jobs.Noop() for _ in range(150)], options=EnqueueOptions(priority=top)
    )
    sample_jobs.Noop().run_in_worker(priority=bottom)
    assert sorted({r.priority for r in errands.requests(limit=500)}) == [bottom, top]


@pytest.mark.parametrize("count", [1, 150])  # one INSERT, and a bulk COPY
def test_a_start_time_in_another_zone_comes_back_in_utc(backend: Backend, count: int) -> None:
    start = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    returned = errands.enqueue_many(
        [sample_jobs.Noop() for _ in range(count)], options=EnqueueOptions(delay=start)
    )
    for request in returned:
        assert request is not None
        assert request.start_at == start and request.start_at.tzinfo == datetime.UTC
        assert request.created_at.tzinfo == datetime.UTC


def test_naive_datetime_delay_is_refused(backend: Backend) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Welcome(1, NOW).run_in_worker(delay=datetime.datetime(2030, 1, 1))
    assert errands.requests() == []


def test_parameters_round_trip_exactly(backend: Backend) -> None:
    job = sample_jobs.Echo({"when": NOW, "amount": Decimal("1.10"), "ids": (1, 2), "raw": b"\x00"})
    request = job.run_in_worker()
    assert request is not None
    stored = errands.get(request.uuid)
    assert stored is not None
    rebuilt = errands.registry.build_job(stored.job_class, stored.parameters)
    assert isinstance(rebuilt, sample_jobs.Echo)
    assert rebuilt.value == {"when": NOW, "amount": Decimal("1.10"), "ids": (1, 2), "raw": b"\x00"}
    assert isinstance(rebuilt.value["ids"], tuple)


def test_unstorable_parameter_fails_at_enqueue_naming_class_and_parameter(backend: Backend) -> None:
    with pytest.raises(ParameterError) as info:
        Welcome(Unstorable(), NOW).run_in_worker()  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert "Welcome" in str(info.value)
    assert "user_id" in str(info.value)
    assert errands.requests() == []


def test_default_should_enqueue_allows_one_job_per_class_and_key(backend: Backend) -> None:
    first = sample_jobs.Mail(7).run_in_worker()
    second = sample_jobs.Mail(7).run_in_worker()
    other_user = sample_jobs.Mail(8).run_in_worker()
    assert first is not None and other_user is not None
    assert second is None
    assert len(errands.requests(job_class="sample_jobs.Mail")) == 2


def test_a_claimed_job_still_holds_its_concurrency_slot(backend: Backend) -> None:
    assert sample_jobs.Mail(7).run_in_worker() is not None
    backend.claim(worker_id=uuid.uuid4(), queues=["mail"], limit=10)
    assert sample_jobs.Mail(7).run_in_worker() is None


def test_empty_concurrency_key_never_blocks(backend: Backend) -> None:
    requests = [sample_jobs.Noop().run_in_worker() for _ in range(3)]
    assert all(r is not None for r in requests)


def test_concurrent_enqueues_of_one_key_create_exactly_one_job(db_url: str) -> None:
    barrier = threading.Barrier(8)
    created: list[object] = []

    def enqueue() -> None:
        barrier.wait()
        created.append(sample_jobs.Mail(99).run_in_worker())

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in created) == 1
    assert len(errands.requests(concurrency_key="user-99")) == 1


def test_custom_should_enqueue_can_count_pending_jobs(backend: Backend) -> None:
    results = [AtMostTwo(n).run_in_worker() for n in range(4)]
    assert [r is not None for r in results] == [True, True, False, False]


def test_get_requested_and_processing_jobs_list_the_slot(backend: Backend) -> None:
    sample_jobs.Mail(5).run_in_worker()
    job = sample_jobs.Mail(5)
    assert [r.concurrency_key for r in job.get_requested_jobs()] == ["user-5"]
    assert job.get_processing_jobs() == []
    backend.claim(worker_id=uuid.uuid4(), queues=[], limit=10)
    assert job.get_requested_jobs() == []
    assert [p.concurrency_key for p in job.get_processing_jobs()] == ["user-5"]


def test_enqueue_many_inserts_all_jobs_in_one_statement(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = type(backend).insert_requests

    def counting(self: Backend, *, requests: list[NewRequest]) -> list[JobRequest]:
        calls.append(len(requests))
        return real(self, requests=requests)

    monkeypatch.setattr(type(backend), "insert_requests", counting)
    jobs = [sample_jobs.Echo(i) for i in range(2000)]
    requests = errands.enqueue_many(jobs, options=EnqueueOptions(queue="bulk", priority=1))
    assert calls == [2000]
    assert all(r is not None and r.queue == "bulk" for r in requests)
    stored = errands.requests(queue="bulk", limit=5000)
    assert len(stored) == 2000
    # Parameters are stored as the JSON documents the worker decodes, not as strings.
    by_uuid = {r.uuid: r for r in stored}
    for job, request in zip(jobs, requests, strict=True):
        assert request is not None
        assert by_uuid[request.uuid].parameters == request.parameters
        stored_request = by_uuid[request.uuid]
        rebuilt = build_job(stored_request.job_class, stored_request.parameters)
        assert isinstance(rebuilt, sample_jobs.Echo) and rebuilt.value == job.value


@register_job
class Varied(Job):
    """A job whose options follow its argument: a batch of them varies every column."""

    def __init__(self, n: int, text: str = "") -> None:
        self.n = n
        self.text = text

    def run(self) -> None:
        pass

    def default_queue(self) -> str:
        return f"varied-{self.n % 3}"

    def default_priority(self) -> int:
        return self.n % 5 - 2

    def default_retries(self) -> int:
        return self.n % 2

    def default_timeout(self) -> float | None:
        return 1.5 * (self.n + 1) if self.n % 4 == 0 else None  # above 0: 0 is refused


def test_a_bulk_enqueue_stores_each_job_with_its_own_options(backend: Backend) -> None:
    texts = ["", "naïve ☃", "tab\there", "line\nbreak", "back\\slash", '"quoted"', "😀" * 50]
    jobs = [Varied(n, texts[n % len(texts)]) for n in range(350)]
    returned = errands.enqueue_many(jobs)
    delayed = errands.enqueue_many(
        [Varied(n) for n in range(150)], options=EnqueueOptions(delay=60, retry_attempt=2)
    )
    stored = {r.uuid: r for r in errands.requests(limit=1000)}
    assert len(stored) == 500
    for request in returned + delayed:
        assert request is not None
        assert stored[request.uuid] == request
    for n, request in enumerate(returned):  # each column holds its own value
        assert request is not None
        assert (request.queue, request.priority, request.retries) == (
            f"varied-{n % 3}",
            n % 5 - 2,
            n % 2,
        )
        assert request.timeout == (1.5 * (n + 1) if n % 4 == 0 else None)
        assert (request.concurrency_key, request.retry_attempt) == ("", 0)
        assert request.start_at == request.created_at
    for request in delayed:
        assert request is not None and request.retry_attempt == 2
        assert request.start_at - request.created_at == datetime.timedelta(seconds=60)
    for n in range(len(texts)):  # each text, as the worker will rebuild the job
        request = returned[n]
        assert request is not None
        rebuilt = build_job(request.job_class, stored[request.uuid].parameters)
        assert isinstance(rebuilt, Varied) and (rebuilt.n, rebuilt.text) == (n, texts[n])


def test_enqueue_many_with_keys_inserts_the_accepted_in_one_statement(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = type(backend).enqueue_transaction

    @contextlib.contextmanager
    def counting(self: Backend, **kwargs: Any) -> Iterator[EnqueueTransaction]:
        with real(self, **kwargs) as tx:
            original = tx.insert_requests

            def insert(requests: Sequence[NewRequest]) -> list[JobRequest]:
                calls.append(len(requests))
                return original(requests)

            tx.insert_requests = insert  # type: ignore[method-assign]
            yield tx

    monkeypatch.setattr(type(backend), "enqueue_transaction", counting)
    jobs = [sample_jobs.Mail(i % 1000) for i in range(2000)]
    requests = errands.enqueue_many(jobs)
    assert calls == [1000]  # the other 1000 share a key with an earlier job of the batch
    assert [r is not None for r in requests] == [True] * 1000 + [False] * 1000


@pytest.mark.postgres_only
def test_a_job_enqueued_alone_opens_no_transaction_block(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No BEGIN/COMMIT round trips around a lone insert: the statement is its own
    transaction, committed when run_in_worker returns."""
    blocks: list[object] = []
    real = psycopg.Connection.transaction

    def recording(self: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
        blocks.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "transaction", recording)
    request = sample_jobs.Echo(1).run_in_worker(delay=60)
    single = errands.enqueue_many([sample_jobs.Echo(2), sample_jobs.Echo(3)])
    assert blocks == []
    assert request is not None and request.start_at > request.created_at
    monkeypatch.undo()
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT uuid FROM errands_request").fetchall()
    assert {row[0] for row in stored} == {request.uuid} | {r.uuid for r in single if r}


def test_enqueue_many_applies_the_key_rule_within_the_batch(backend: Backend) -> None:
    requests = errands.enqueue_many([sample_jobs.Mail(1), sample_jobs.Mail(1), sample_jobs.Mail(2)])
    assert [r is not None for r in requests] == [True, False, True]


@pytest.mark.postgres_only
def test_enqueue_joins_the_callers_transaction(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        with conn.transaction():
            sample_jobs.Noop().run_in_worker(connection=conn)
            sample_jobs.Noop().run_in_worker(connection=conn)
            assert errands.requests() == []  # not visible outside before commit
        assert len(errands.requests()) == 2
    with psycopg.connect(db_url) as conn, pytest.raises(RuntimeError), conn.transaction():
        sample_jobs.Noop().run_in_worker(connection=conn)
        raise RuntimeError("roll back")
    assert len(errands.requests()) == 2


@pytest.mark.slow
def test_a_large_batch_pauses_the_garbage_collector_and_restores_it(backend: Backend) -> None:
    class Probe:
        """A parameter whose encoding notes whether the collector was running."""

    seen: list[bool] = []
    register_type(
        Probe, encode=lambda _: seen.append(gc.isenabled()) or 0, decode=lambda _: Probe()
    )
    errands.enqueue_many([sample_jobs.Echo(Probe()) for _ in range(LARGE_BATCH)])
    assert seen == [False] * LARGE_BATCH and gc.isenabled()
    errands.enqueue_many([sample_jobs.Echo(Probe()) for _ in range(LARGE_BATCH - 1)])
    assert seen[LARGE_BATCH:] == [True] * (LARGE_BATCH - 1)  # a small batch leaves it on
    with pytest.raises(ParameterError):
        errands.enqueue_many([sample_jobs.Echo(object()) for _ in range(LARGE_BATCH)])
    assert gc.isenabled()
    gc.disable()
    try:
        errands.enqueue_many([sample_jobs.Echo(i) for i in range(LARGE_BATCH)])
        assert not gc.isenabled()  # the caller's choice is kept
    finally:
        gc.enable()
    assert len(errands.requests(limit=5000)) == 3 * LARGE_BATCH - 1
