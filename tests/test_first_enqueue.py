"""A process's first enqueue (issue 23, target 4): what it no longer pays for.

The job-class facts of a class without a constructor of its own come without
``inspect.signature`` (which parses ``object.__init__``'s text signature, about 10 ms
once per process); the SQL file is read and split once and a statement is made when
first asked for; a pool's first connection is the one made to say a server's
errors at once, not a second one.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import pytest

import errands
from errands import registry
from errands.backends.postgres import PostgresBackend
from errands.backends.postgres import pools as postgres_pools
from errands.backends.postgres.connection import in_schema, queries
from errands.backends.sql import files


class NoConstructor(errands.Job):
    def run(self) -> None:
        pass


class WithConstructor(errands.Job):
    def __init__(self, a: int, b: str = "", *rest: int, c: int = 0) -> None:
        self.a = a

    def run(self) -> None:
        pass


def test_a_class_without_its_own_constructor_skips_inspect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect.signature called")

    monkeypatch.setattr(registry.inspect, "signature", refuse)
    registry._class_facts_cache.pop(NoConstructor, None)
    path, names = registry.class_facts(NoConstructor)
    assert names == ()
    assert path.endswith("NoConstructor")


def test_a_constructor_still_gives_its_positional_names() -> None:
    registry._class_facts_cache.pop(WithConstructor, None)
    assert registry.class_facts(WithConstructor)[1] == ("a", "b")
    assert inspect.signature(object.__init__)  # the path above is not taken for it


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_the_sql_file_is_split_once_and_each_statement_made_once(dialect: str) -> None:
    loaded = files.load_queries(dialect)
    assert files.load_queries(dialect) is loaded
    name = next(iter(loaded))
    assert loaded[name] is loaded[name]
    assert name in loaded and "no_such_statement" not in loaded
    with pytest.raises(KeyError):
        loaded["no_such_statement"]


def test_statements_are_made_on_first_use() -> None:
    made: list[str] = []

    def make(name: str) -> str:
        made.append(name)
        return name.upper()

    statements = files.Statements(["a", "b"], make)
    assert list(statements) == ["a", "b"] and len(statements) == 2
    assert made == []
    assert statements["a"] == "A" and statements["a"] == "A"
    assert made == ["a"]
    shouted = statements.derived(lambda text: text + "!")
    assert shouted["b"] == "B!" and made == ["a", "b"]


def test_a_schemas_statements_are_renamed_as_when_made_eagerly() -> None:
    plain = queries()
    tenant = queries("tenant_x")
    assert list(tenant) == list(plain)
    assert {name: tenant[name] for name in tenant} == {
        name: in_schema(plain[name], "tenant_x") for name in plain
    }


def test_the_pools_first_connection_is_the_direct_one(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    direct = postgres_pools.first_connection

    def recording(*args: Any, **kwargs: Any) -> Any:
        conn = direct(*args, **kwargs)
        made.append(conn)
        return conn

    monkeypatch.setattr(postgres_pools, "first_connection", recording)
    backend = PostgresBackend(pg_url)
    try:
        with backend._connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert made == [conn]
        pool = backend._pool
        assert pool is not None
        assert pool.get_stats().get("connections_num", 0) == 0  # none of the pool's own
        assert conn.autocommit
    finally:
        backend.close()


def test_a_fresh_processs_first_enqueue_is_quick(pg_url: str) -> None:
    """Generous (the target is 20 ms on a quiet machine): catches a return of the
    probe's second connection or a parse of every statement only as a gross regression,
    never by the noise of a loaded machine."""
    program = (
        "import time, errands\n"
        "class Noop(errands.Job):\n"
        "    def run(self): pass\n"
        f"errands.configure(database_url={pg_url!r})\n"
        "import errands.backends.postgres\n"
        "began = time.perf_counter()\n"
        "Noop().run_in_worker()\n"
        "print(time.perf_counter() - began)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert float(done.stdout) < 2.0, done.stdout
