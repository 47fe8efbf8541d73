"""Async producers: ``await job.run_in_worker_async(...)`` and
``await errands.enqueue_many_async(...)`` on PostgreSQL (an AsyncConnection, the
caller's or pooled) and SQLite (a thread)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest

import errands
from errands import EnqueueOptions, api
from errands.backends import Backend, open_backend
from errands.backends.postgres import async_enqueue as pg_async
from errands.errors import ParameterError
from errands.models import Selection


@errands.register_job
class Greet(errands.Job):
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self) -> None:
        pass


@errands.register_job
class OncePerName(errands.Job):
    """Asks the database through the enqueue transaction (sync user code)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def should_enqueue(self, concurrency_key: str | None) -> bool:
        return not self.get_requested_jobs(concurrency_key)

    def run(self) -> None:
        pass


def pending(backend: Backend) -> list[Any]:
    return backend.next_requests(selection=Selection(), limit=100)


def run(coroutine: Any) -> Any:
    async def main() -> Any:
        try:
            return await coroutine
        finally:
            await pg_async.close_pools()

    return asyncio.run(main())


def test_run_in_worker_async_and_enqueue_many_async(backend: Backend) -> None:
    request = run(Greet("ada").run_in_worker_async(queue="mail", priority=3))
    assert (request.job_class, request.queue, request.priority) == (
        f"{__name__}.Greet",
        "mail",
        3,
    )
    assert request.parameters["args"] == ["ada"]
    assert request.source is not None and "test_async_enqueue.py" in request.source
    many = run(errands.enqueue_many_async([Greet(n) for n in "abc"], options=EnqueueOptions()))
    assert [r.parameters["args"] for r in many] == [["a"], ["b"], ["c"]]
    assert len(pending(backend)) == 4
    assert run(errands.enqueue_many_async([])) == []


def test_validation_happens_before_any_io(backend: Backend) -> None:
    with pytest.raises(ParameterError):
        run(Greet("x").run_in_worker_async(priority="high"))
    with pytest.raises(ParameterError):
        run(Greet(object()).run_in_worker_async())  # type: ignore[arg-type]
    assert pending(backend) == []


def test_decisions_are_those_of_enqueue_many(backend: Backend) -> None:
    first = run(Greet("a").run_in_worker_async(concurrency_key="k"))
    assert first is not None
    assert run(Greet("b").run_in_worker_async(concurrency_key="k")) is None
    unique = errands.Unique(key="one")
    assert run(Greet("c").run_in_worker_async(unique=unique)) is not None
    assert run(Greet("d").run_in_worker_async(unique=unique)) is None
    # should_enqueue (sync, querying through the transaction) sees the batch's own inserts
    batch = run(
        errands.enqueue_many_async(
            [OncePerName("x"), OncePerName("x")], options=EnqueueOptions(concurrency_key="x")
        )
    )
    assert batch[0] is not None and batch[1] is None
    assert len(pending(backend)) == 3


def test_the_hot_path_on_postgres_takes_no_thread(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a thread hop")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    requests = run(errands.enqueue_many_async([Greet("a"), Greet("b")]))
    assert len(requests) == 2
    assert len(pending(pg_backend)) == 2


def test_joins_the_callers_async_transaction(pg_url: str, pg_backend: Backend) -> None:
    async def enqueue(commit: bool) -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            await Greet("in tx").run_in_worker_async(connection=conn)
            await errands.enqueue_many_async(
                [OncePerName("y"), OncePerName("y")],
                options=EnqueueOptions(concurrency_key="y"),
                connection=conn,
            )
            await (conn.commit() if commit else conn.rollback())

    run(enqueue(commit=False))
    assert pending(pg_backend) == []
    run(enqueue(commit=True))
    assert sorted(r.job_class for r in pending(pg_backend)) == [
        f"{__name__}.Greet",
        f"{__name__}.OncePerName",
    ]

    # a failed enqueue undoes only itself (a savepoint) inside the caller's transaction
    async def failing() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            await conn.execute("SELECT 1")
            with pytest.raises(TypeError):
                await Greet("z").run_in_worker_async(connection=object())
            await conn.commit()

    run(failing())


def test_sqlite_takes_no_async_connection(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite:///{tmp_path / 'errands.sqlite3'}")
    backend.migrate()
    try:
        with api.use_backend(backend), pytest.raises(TypeError, match="PostgreSQL only"):
            run(Greet("a").run_in_worker_async(connection=object()))
        assert backend.next_requests(selection=Selection(), limit=10) == []
    finally:
        backend.close()
