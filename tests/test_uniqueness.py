"""Uniqueness (errands.Unique): each mode, the states, the period, validation, and
concurrent enqueues of one key from several processes, on PostgreSQL and SQLite
(conftest's ``db_url``), and in memory (``errands.testing.capture``) where marked."""

from __future__ import annotations

import datetime
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import errands
import errands.testing
from conftest import _configured, empty_postgres
from errands import Job, ParameterError, Unique, register_job
from errands.backends import Backend
from errands.errors import OptionError
from errands.jobs import EnqueueOptions
from errands.models import JobRequest, NewRequest, Outcome, Status
from errands.registry import job_class_path
from errands.testing.databases import TestDatabases

UTC = datetime.UTC


@register_job
class Refresh(Job):
    """Unique by its arguments, while pending (the defaults)."""

    unique = Unique()

    def __init__(self, n: int) -> None:
        self.n = n

    def run(self) -> None:
        pass


@register_job
class Report(Job):
    """One key per customer, whatever the other arguments."""

    unique = Unique(lambda job: f"customer:{job.customer}", states=("pending", "running"))

    def __init__(self, customer: int, note: str = "") -> None:
        self.customer = customer
        self.note = note

    def run(self) -> None:
        pass


@register_job
class Plain(Job):
    def __init__(self, n: int) -> None:
        self.n = n

    def run(self) -> None:
        pass


@register_job
class BadKey(Job):
    unique = Unique(lambda job: 42)  # type: ignore[arg-type,return-value]

    def run(self) -> None:
        pass


@register_job
class Latest(Job):
    unique = Unique("latest", on_conflict="debounce")

    def __init__(self, n: int) -> None:
        self.n = n

    def run(self) -> None:
        pass


@register_job
class Asks(Job):
    """Overrides should_enqueue: the batch is flushed before it is asked."""

    def should_enqueue(self, concurrency_key: str) -> bool:
        return True

    def run(self) -> None:
        pass


def path(cls: type[Job]) -> str:
    return job_class_path(cls)


def pending(cls: type[Job]) -> list[JobRequest]:
    return errands.requests(job_class=path(cls))


def finish(backend: Backend, status: Status = Status.SUCCESSFUL) -> None:
    """Claim every pending job and end it with ``status``."""
    processes = backend.claim(worker_id=uuid.uuid4(), queues=(), limit=1000)
    now = datetime.datetime.now(UTC)
    outcomes = [
        Outcome(process_uuid=p.uuid, status=status, started_at=now, ended_at=now) for p in processes
    ]
    backend.complete_many(outcomes=outcomes)


def claim(backend: Backend) -> None:
    backend.claim(worker_id=uuid.uuid4(), queues=(), limit=1000)


@pytest.fixture(params=["postgresql", "sqlite", "memory"])
def anywhere(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """conftest's ``db_url`` (PostgreSQL, SQLite), then the in-memory backend."""
    if request.param == "memory":
        with errands.testing.capture():
            yield
    elif request.param == "sqlite":
        with TestDatabases(None).database(tmp_path) as url:
            yield from _configured(url)  # type: ignore[misc]
    else:
        url = request.getfixturevalue("pg_url")
        try:
            yield from _configured(url)  # type: ignore[misc]
        finally:
            empty_postgres(url)


# -- skip ----------------------------------------------------------------------------


def test_skip_by_arguments(anywhere: None) -> None:
    first = Refresh(1).run_in_worker()
    assert first is not None
    assert first.concurrency_key.startswith("errands.unique#")
    assert Refresh(1).run_in_worker() is None
    assert Refresh(n=1).run_in_worker() is None  # the same stored arguments
    assert Refresh(2).run_in_worker() is not None
    assert len(pending(Refresh)) == 2


def test_skip_by_key_and_within_a_batch(anywhere: None) -> None:
    results = errands.enqueue_many([Report(1, "a"), Report(1, "b"), Report(2, "c")])
    assert results[0] is not None and results[2] is not None
    assert results[1] is None
    assert results[0].concurrency_key == "errands.unique:customer:1"
    assert Report(1, "d").run_in_worker() is None


def test_a_per_call_unique_replaces_the_class_one(anywhere: None) -> None:
    assert Plain(1).run_in_worker(unique=Unique("x")) is not None
    assert Plain(2).run_in_worker(unique=Unique("x")) is None
    assert Plain(3).run_in_worker() is not None  # no uniqueness without it
    options = EnqueueOptions(unique=Unique("x"))
    assert errands.enqueue_many([Plain(4)], options=options) == [None]
    assert Refresh(1).run_in_worker() is not None
    assert Refresh(9).run_in_worker(unique=Unique("all")) is not None
    assert Refresh(8).run_in_worker(unique=Unique("all")) is None


# -- states and period -----------------------------------------------------------------


def test_pending_only_lets_a_duplicate_of_a_running_job_in(backend: Backend) -> None:
    assert Refresh(1).run_in_worker() is not None
    claim(backend)
    assert Refresh(1).run_in_worker() is not None
    assert Refresh(1).run_in_worker() is None


def test_running_state_refuses_a_duplicate_of_a_claimed_job(backend: Backend) -> None:
    assert Report(1).run_in_worker() is not None
    claim(backend)
    assert Report(1).run_in_worker() is None
    finish(backend)  # nothing claimed is left to finish: the claimed one still runs
    assert Report(2).run_in_worker() is not None


def test_running_state_frees_the_key_when_the_job_ends(backend: Backend) -> None:
    assert Report(1).run_in_worker() is not None
    finish(backend)
    assert Report(1).run_in_worker() is not None


def test_succeeded_within_the_period(backend: Backend) -> None:
    hour = Unique("daily", states=("pending", "running", "succeeded"), period=3600)
    assert Plain(1).run_in_worker(unique=hour) is not None
    finish(backend)
    assert Plain(2).run_in_worker(unique=hour) is None
    instant = Unique("daily", states=("succeeded",), period=0.001)
    time.sleep(0.01)
    assert Plain(3).run_in_worker(unique=instant) is not None


def test_a_failed_job_does_not_count_as_succeeded(backend: Backend) -> None:
    hour = Unique("daily", states=("pending", "succeeded"), period=datetime.timedelta(hours=1))
    assert Plain(1).run_in_worker(unique=hour) is not None
    finish(backend, Status.ERRORED)
    assert Plain(2).run_in_worker(unique=hour) is not None


# -- replace and debounce ----------------------------------------------------------------


def test_replace_keeps_the_pending_job_and_its_due_time(anywhere: None) -> None:
    replace = Unique("k", on_conflict="replace")
    first = Plain(1).run_in_worker(unique=replace, delay=60, priority=1)
    assert first is not None
    second = Plain(2).run_in_worker(unique=replace, delay=600, priority=5, queue="other")
    assert second is not None
    assert second.uuid == first.uuid
    assert second.created_at == first.created_at
    assert second.start_at == first.start_at
    assert (second.parameters["args"], second.priority, second.queue) == ([2], 5, "other")
    [stored] = errands.requests(job_class=path(Plain))
    assert stored == second


def test_debounce_moves_the_due_time(anywhere: None) -> None:
    debounce = Unique("k", on_conflict="debounce")
    first = Plain(1).run_in_worker(unique=debounce, delay=60)
    assert first is not None
    second = Plain(2).run_in_worker(unique=debounce, delay=600)
    assert second is not None and second.uuid == first.uuid
    assert second.start_at - first.start_at >= datetime.timedelta(seconds=539)
    assert second.parameters["args"] == [2]
    [stored] = errands.requests(job_class=path(Plain))
    assert stored.start_at == second.start_at


def test_replace_and_debounce_within_a_batch(anywhere: None) -> None:
    options = EnqueueOptions(unique=Unique("k", on_conflict="debounce"), delay=30)
    results = errands.enqueue_many([Plain(1), Plain(2), Plain(3)], options=options)
    assert len({r.uuid for r in results if r is not None}) == 1
    assert all(r is not None and r.parameters["args"] == [3] for r in results)
    [stored] = errands.requests(job_class=path(Plain))
    assert stored.parameters["args"] == [3]


def test_a_batch_replaces_its_own_job_once_inserted(anywhere: None) -> None:
    results = errands.enqueue_many([Latest(1), Asks(), Latest(2)])
    first, asked, last = results
    assert asked is not None and first is not None and last is not None
    assert last.uuid == first.uuid and last.parameters["args"] == [2]
    assert [r.parameters["args"] for r in pending(Latest)] == [[2]]


def test_a_running_job_is_not_replaced(backend: Backend) -> None:
    replace = Unique("k", states=("pending", "running"), on_conflict="replace")
    assert Plain(1).run_in_worker(unique=replace) is not None
    claim(backend)
    assert Plain(2).run_in_worker(unique=replace) is None
    assert pending(Plain) == []


def test_replace_of_a_request_claimed_meanwhile_changes_nothing(backend: Backend) -> None:
    request = Plain(1).run_in_worker(unique=Unique("k"))
    assert request is not None
    claim(backend)
    new = NewRequest(job_class=path(Plain), parameters={"args": [2], "kwargs": {}})
    with backend.enqueue_transaction() as tx:
        assert tx.replace_request(request.uuid, new, move_due_time=True) is None
        states = tx.unique_slots([(path(Plain), request.concurrency_key)], successes=True)
    state = states[(path(Plain), request.concurrency_key)]
    assert (state.pending, state.running, state.success_age) == (None, True, None)


def test_concurrency_key_and_should_enqueue_are_unchanged(anywhere: None) -> None:
    assert Plain(1).run_in_worker(concurrency_key="k") is not None
    assert Plain(2).run_in_worker(concurrency_key="k") is None
    assert Plain(3).run_in_worker(unique=Unique("k")) is not None  # another slot


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"key": ""}, "Unique(key=...): expected a non-empty string"),
        ({"key": 3}, "Unique(key=...): expected a non-empty string"),
        ({"key": "x" * 400}, "longer than"),
        ({"states": ("done",)}, "Unique(states=('done',)): expected one or more of"),
        ({"states": ()}, "Unique(states=()): expected one or more of"),
        ({"states": ("succeeded",)}, "give period="),
        ({"period": 60}, "add 'succeeded' to states"),
        ({"states": "succeeded", "period": 0}, "above 0"),
        ({"states": "succeeded", "period": float("nan")}, "above 0"),
        ({"states": "succeeded", "period": True}, "above 0"),
        ({"on_conflict": "merge"}, "Unique(on_conflict='merge'): expected one of"),
        ({"states": "running", "on_conflict": "debounce"}, "must include 'pending'"),
    ],
)
def test_unique_checks_its_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=re_escape(message)):
        Unique(**arguments)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_enqueue_errors_name_the_class_and_write_nothing(anywhere: None) -> None:
    with pytest.raises(ParameterError, match=r"test_uniqueness\.BadKey: unique: .*non-empty"):
        BadKey().run_in_worker()
    with pytest.raises(ValueError, match=r"test_uniqueness\.Plain: unique: expected errands"):
        Plain(1).run_in_worker(unique="k")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"Plain: unique: .*concurrency_key 'mine' too"):
        Plain(1).run_in_worker(unique=Unique("k"), concurrency_key="mine")
    with pytest.raises(OptionError, match=r"Plain: concurrency_key: keys starting with"):
        Plain(1).run_in_worker(concurrency_key="errands.unique:k")
    with pytest.raises(OptionError, match=r"Plain: unique: its key callable raised"):
        Plain(1).run_in_worker(unique=Unique(lambda job: job.missing))
    assert errands.requests() == []


# -- concurrent enqueues from several processes --------------------------------------------

PROCESSES = 4
ENQUEUES = 25


def _burst(url: str, mode: str, rounds: bool, worker: int, barrier: Any, out: Any) -> None:
    errands.configure(database_url=url)
    seen = []
    barrier.wait()
    for i in range(ENQUEUES):
        unique = Unique(f"burst:{i}" if rounds else "burst", on_conflict=mode)
        request = Plain(worker * 100 + i).run_in_worker(unique=unique, delay=60)
        seen.append(None if request is None else (request.uuid, request.start_at))
    out.put(seen)


def burst(
    url: str, mode: str, *, rounds: bool = False
) -> list[tuple[uuid.UUID, datetime.datetime] | None]:
    """What each of PROCESSES processes' ENQUEUES enqueues returned (of one key, or
    with ``rounds`` of one key per round: every round a race for a fresh key)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    out = context.Queue()
    processes = [
        context.Process(target=_burst, args=(url, mode, rounds, n, barrier, out))
        for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    seen = [item for _ in processes for item in out.get(timeout=120)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return seen


@pytest.mark.slow
def test_concurrent_skips_leave_one_pending_job(db_url: str) -> None:
    seen = burst(db_url, "skip")
    assert len(pending(Plain)) == 1
    assert len([s for s in seen if s is not None]) == 1


@pytest.mark.slow
def test_concurrent_skips_of_fresh_keys_leave_one_pending_job_each(db_url: str) -> None:
    seen = burst(db_url, "skip", rounds=True)
    keys = sorted(r.concurrency_key for r in pending(Plain))
    assert keys == sorted(f"errands.unique:burst:{i}" for i in range(ENQUEUES))
    assert len([s for s in seen if s is not None]) == ENQUEUES


@pytest.mark.slow
def test_concurrent_debounces_leave_one_job_due_after_the_last(db_url: str) -> None:
    seen = burst(db_url, "debounce")
    [stored] = pending(Plain)
    assert all(s is not None and s[0] == stored.uuid for s in seen)
    assert stored.start_at == max(s[1] for s in seen if s is not None)
