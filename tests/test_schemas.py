"""Several applications on one PostgreSQL database: the ``schema`` setting puts errands'
tables, functions, notification channels and advisory lock keys in a schema of its
own. Two schemas of one fresh database, each migrated, each with its jobs: a worker,
the API, the CLI and LISTEN of one never see the other's.

The default (``schema = ""``: the search_path's schema, channels ``errands_jobs`` and
``errands_results``) is what the rest of the suite runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sample_jobs
from dashboard_rows import claim, enqueue, finish
from psycopg import sql
from worker_process import WorkerProcess

import errands
from conftest import SERVER_URL, database_url, wait_for
from errands import api, settings
from errands.backends.base import TABLES
from errands.backends.current import use_backend
from errands.backends.postgres import PostgresBackend
from errands.backends.postgres.connection import channel, in_schema, queries
from errands.errors import ConfigurationError
from errands.models import JobResult, Kind, NewRequest, PageSpec, Selection, Status

ERRANDS = str(Path(sys.executable).with_name("errands"))
A, B = "tenant_a", "tenant_b"


@pytest.fixture(scope="module")
def shared_url() -> Iterator[str]:
    """A fresh database holding errands twice: schemas tenant_a and tenant_b."""
    name = f"errands_schemas_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(SERVER_URL, name)
    try:
        for schema in (A, B):
            backend = PostgresBackend(url, schema=schema)
            try:
                assert backend.migrate() == list(range(1, backend.latest_schema_version() + 1))
            finally:
                backend.close()
        yield url
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def url(shared_url: str) -> Iterator[str]:
    yield shared_url
    with psycopg.connect(shared_url, autocommit=True) as conn:
        for schema in (A, B):
            tables = [sql.Identifier(schema, table) for table in TABLES]
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))


@contextlib.contextmanager
def tenant(url: str, schema: str) -> Iterator[PostgresBackend]:
    """errands configured for ``schema`` of ``url``: settings, and the API's backend."""
    errands.configure(database_url=url, schema=schema)
    backend = PostgresBackend(url)
    assert backend.schema == schema
    try:
        with use_backend(backend):
            yield backend
    finally:
        backend.close()
        errands.configure(database_url=None, schema=None)


def pending(url: str, schema: str) -> list[str]:
    """The job classes of ``schema``'s requests, read with psycopg alone."""
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT job_class FROM {} ORDER BY created_at")
        rows = conn.execute(query.format(sql.Identifier(schema, "errands_request"))).fetchall()
    return [row[0] for row in rows]


def results_of(backend: PostgresBackend) -> list[JobResult]:
    return backend.page_results(selection=Selection(), page=PageSpec(limit=20))


# -- the setting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("tenant_a", "tenant_a"), ("  app_2 ", "app_2"), ("", ""), ("_x", "_x"), ("select", "select")],
)
def test_schema_names_accepted(tmp_path: Path, given: str, expected: str) -> None:
    loaded = settings.load(environ={"ERRANDS_SCHEMA": given}, cwd=tmp_path)
    assert loaded.schema == expected
    assert settings.to_environ(loaded)["ERRANDS_SCHEMA"] == expected


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("Tenant", "lower-case letters"),
        ("1tenant", "not starting with a digit"),
        ("tenant-a", "lower-case letters"),
        ("a.b", "lower-case letters"),
        ("pg_jobs", "reserved"),
        ("x" * 56, "at most 55"),
    ],
)
def test_invalid_schema_names_are_refused(tmp_path: Path, given: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        settings.load(environ={"ERRANDS_SCHEMA": given}, cwd=tmp_path)
    message = str(error.value)
    assert "'schema'" in message and "ERRANDS_SCHEMA" in message and why in message
    with pytest.raises(ConfigurationError, match=r"PostgresBackend\(\)"):
        PostgresBackend("postgresql://nowhere/db", schema=given)


def test_the_longest_name_fits_its_channels(tmp_path: Path) -> None:
    name = "x" * 55
    assert settings.load(environ={"ERRANDS_SCHEMA": name}, cwd=tmp_path).schema == name
    assert len(channel(name, "results").encode()) == 63


def test_default_keeps_the_sql_as_written() -> None:
    assert queries("") is queries()
    assert "LISTEN errands_jobs" in queries()["listen"]
    assert queries(A)["listen"] == "LISTEN tenant_a_jobs"
    assert queries(A)["listen_results"].endswith("\nLISTEN tenant_a_results")
    assert "pg_notify('tenant_a_jobs'" in queries(A)["insert_request"]
    assert "'tenant_a.slot'" in queries(A)["lock_slots"]
    # Tables, job classes and the migration lock are not renamed.
    assert "'errands.migrate'" in queries(A)["lock_migrations"]
    assert in_schema("errands_result 'errands.DependencyFailed'", A) == (
        "errands_result 'errands.DependencyFailed'"
    )
    assert channel("", "jobs") == "errands_jobs"


# -- migrate ---------------------------------------------------------------------------


def test_migrate_makes_each_schema_and_nothing_else(url: str) -> None:
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT n.nspname, count(*) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname LIKE 'errands%%' AND c.relkind = 'r' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        functions = dict(
            conn.execute(
                "SELECT n.nspname || '.' || p.proname, p.prosrc FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname LIKE 'errands%%'"
            ).fetchall()
        )
    assert [schema for schema, _ in tables] == [A, B]
    assert tables[0][1] == tables[1][1] == len(TABLES) + 1  # and errands_schema
    # Each schema's trigger notifies its own channel.
    assert "'tenant_a_results'" in functions[f"{A}.errands_notify_results"]
    assert "'tenant_b_results'" in functions[f"{B}.errands_notify_results"]
    assert "errands_results" not in functions[f"{A}.errands_notify_results"]
    assert "'tenant_b_jobs'" in functions[f"{B}.errands_workflow_advance"]
    for schema in (A, B):
        backend = PostgresBackend(url, schema=schema)
        try:
            assert backend.migrate() == []  # already at the latest version
            assert backend.schema_version() == backend.latest_schema_version()
            script = backend.migration_sql()
            assert script.startswith(f'CREATE SCHEMA IF NOT EXISTS "{schema}";\n')
            assert f"{schema}_results" in script and "errands_results" not in script
        finally:
            backend.close()
    default = PostgresBackend(url, schema="")
    try:
        assert default.schema_version() is None  # nothing in public
        assert "CREATE SCHEMA" not in default.migration_sql()
    finally:
        default.close()


def test_migrate_uses_a_schema_an_administrator_made(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA made_by_admin")
    backend = PostgresBackend(url, schema="made_by_admin")
    try:
        assert backend.migrate()[-1] == backend.latest_schema_version()
        assert backend.next_requests(selection=Selection(), limit=5) == []
    finally:
        backend.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA made_by_admin CASCADE")


def test_cli_migrate_and_settings_in_a_schema(url: str, tmp_path: Path) -> None:
    env = {**os.environ, "ERRANDS_SCHEMA": "tenant_cli"}
    try:
        migrated = run_cli(url, tmp_path, env, "migrate")
        assert "tenant_cli" not in migrated or "schema" in migrated
        with psycopg.connect(url) as conn:
            version = conn.execute("SELECT max(version) FROM tenant_cli.errands_schema").fetchone()
        assert version is not None and version[0] == PostgresBackend(url).latest_schema_version()
        shown = json.loads(run_cli(url, tmp_path, env, "settings", "--json"))
        assert shown["schema"] == "tenant_cli"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS tenant_cli CASCADE")


def run_cli(url: str, cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [ERRANDS, "--database-url", url, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


# -- jobs, listings ----------------------------------------------------------------------


def test_each_schema_sees_only_its_jobs(url: str, tmp_path: Path) -> None:
    with tenant(url, A):
        mine = [sample_jobs.Echo(n).run_in_worker() for n in range(3)]
        assert api.count(Kind.REQUEST, Selection()) == 3
    with tenant(url, B):
        theirs = sample_jobs.Noop().run_in_worker()
        assert [r.uuid for r in api.requests()] == [theirs.uuid]  # type: ignore[union-attr]
        assert api.get(mine[0].uuid) is None  # type: ignore[union-attr]
        assert api.count(Kind.REQUEST, Selection()) == 1
    assert pending(url, A) == ["sample_jobs.Echo"] * 3
    assert pending(url, B) == ["sample_jobs.Noop"]
    # The CLI reads the schema of its settings.
    for schema, count in ((A, 3), (B, 1)):
        env = {**os.environ, "ERRANDS_SCHEMA": schema}
        rows = json.loads(run_cli(url, tmp_path, env, "requests", "--json"))
        assert len(rows) == count
    env = {**os.environ, "ERRANDS_SCHEMA": A}
    assert json.loads(run_cli(url, tmp_path, env, "results", "--json")) == []


def test_results_stay_in_their_schema(url: str, tmp_path: Path) -> None:
    for schema in (A, B):
        backend = PostgresBackend(url, schema=schema)
        try:
            enqueue(backend, 2 if schema == A else 1)
            finish(backend, claim(backend, "default"), Status.SUCCESSFUL)
        finally:
            backend.close()
    with tenant(url, A):
        assert len(api.results()) == 2
    with tenant(url, B):
        assert len(api.results()) == 1
    env = {**os.environ, "ERRANDS_SCHEMA": B}
    assert len(json.loads(run_cli(url, tmp_path, env, "results", "--json"))) == 1


def test_an_enqueue_on_the_callers_connection_goes_to_the_schema(url: str) -> None:
    with tenant(url, A), psycopg.connect(url) as conn:
        before = conn.execute("SHOW search_path").fetchone()
        conn.execute("SET LOCAL search_path = pg_temp")  # the caller's own, for its transaction
        request = sample_jobs.Echo(1).run_in_worker(connection=conn)
        # The caller's search_path is back after the enqueue, in its transaction.
        assert conn.execute("SHOW search_path").fetchone() == ("pg_temp",)
        assert pending(url, A) == []  # not committed yet
        conn.commit()
        assert conn.execute("SHOW search_path").fetchone() == before
        assert [r.uuid for r in api.requests()] == [request.uuid]  # type: ignore[union-attr]
    with tenant(url, A), psycopg.connect(url, autocommit=True) as conn:
        sample_jobs.Echo(2).run_in_worker(connection=conn)  # its own transaction
        assert conn.execute("SHOW search_path").fetchone() == before
    assert len(pending(url, A)) == 2
    assert pending(url, B) == []
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('errands_request')").fetchone() == (None,)


def test_an_enqueue_on_a_psycopg2_connection_goes_to_the_schema(url: str) -> None:
    """Django on psycopg2: errands' statements run on its connection (contrib.django.dbapi)."""
    psycopg2 = pytest.importorskip("psycopg2")
    from errands.contrib.django import dbapi

    conn = psycopg2.connect(url)
    try:
        with tenant(url, B):
            with dbapi.joined_transaction(conn):
                tx = dbapi.Psycopg2EnqueueTransaction(conn)
                tx.insert_requests(
                    [NewRequest(job_class="sample_jobs.Noop", parameters={}, queue="default")]
                )
            with conn.cursor() as cursor:
                cursor.execute("SHOW search_path")
                assert cursor.fetchone() == ('"$user", public',)
            conn.commit()
    finally:
        conn.close()
    assert pending(url, B) == ["sample_jobs.Noop"]
    assert pending(url, A) == []


def test_an_async_enqueue_goes_to_the_schema(url: str) -> None:
    async def enqueue_both() -> None:
        await sample_jobs.Echo(1).run_in_worker_async()
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await sample_jobs.Echo(2).run_in_worker_async(connection=conn)
            cursor = await conn.execute("SHOW search_path")
            assert await cursor.fetchone() == ('"$user", public',)
            await conn.commit()
        # A class deciding (concurrency key): errands' decision code in a thread.
        await sample_jobs.Echo(3).run_in_worker_async(concurrency_key="k")

    with tenant(url, B):
        asyncio.run(enqueue_both())
    assert pending(url, B) == ["sample_jobs.Echo"] * 3
    assert pending(url, A) == []


# -- notifications -------------------------------------------------------------------------


def test_listen_hears_its_own_schema_only(url: str) -> None:
    backends = {schema: PostgresBackend(url, schema=schema) for schema in (A, B)}
    woken = {schema: threading.Event() for schema in (A, B)}
    finished: dict[str, list[frozenset[uuid.UUID] | None]] = {A: [], B: []}
    try:
        for schema, backend in backends.items():
            listener = backend.listen(on_wake=woken[schema].set)
            assert listener.ready.wait(10)
            backend.listen_results(on_results=finished[schema].append)
        enqueue(backends[A], 1)
        assert woken[A].wait(10)
        time.sleep(0.5)  # time enough for a notification to reach B, were it sent to it
        assert not woken[B].is_set()
        [process] = claim(backends[A], "default")
        finish(backends[A], [process], Status.SUCCESSFUL)
        wait_for(lambda: bool(finished[A]), timeout=10)
        assert finished[A] == [frozenset({process.request_uuid})]
        time.sleep(0.5)
        assert finished[B] == []
        enqueue(backends[B], 1)
        assert woken[B].wait(10)
    finally:
        for backend in backends.values():
            backend.close()


def test_a_transaction_pooler_needs_the_roles_search_path(url: str) -> None:
    """Behind a transaction pooler errands sends no ``options`` (PgBouncer refuses it,
    or drops it when told to ignore it): it checks the search_path the connections
    have instead, here the server's default one."""
    backend = PostgresBackend(url, schema=A, pooler="transaction", listen_url="")
    try:
        with pytest.raises(ConfigurationError, match=r"ALTER ROLE postgres SET search_path"):
            backend.next_requests(selection=Selection(), limit=1)
    finally:
        backend.close()


def test_behind_a_transaction_pooler_with_the_roles_search_path(url: str) -> None:
    """The role's search_path (here the database's, for the same effect) is the schema:
    errands uses it, and migrate sets its own transaction's."""
    database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    role = f"errands_tenant_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = tenant_b").format(
                sql.Identifier(role), sql.Identifier(database)
            )
        )
    role_url = url.replace("postgres@", f"{role}@", 1)
    backend = PostgresBackend(role_url, schema=B, pooler="transaction", listen_url="")
    try:
        assert backend.migrate() == []
        enqueue(backend, 2)
        assert len(backend.next_requests(selection=Selection(), limit=5)) == 2
        assert len(pending(url, B)) == 2 and pending(url, A) == []
    finally:
        backend.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_through_pgbouncer_with_the_roles_search_path(url: str, tmp_path: Path) -> None:
    """A real PgBouncer (1.18 refuses libpq's ``options``) whose server connections log
    in as a role with search_path = tenant_b: enqueues, listings and migrate there."""
    from pgbouncer import PgBouncer, binary

    executable = binary()
    if executable is None:
        pytest.fail("pgbouncer is not installed: run scripts/install-test-deps")
    database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    role = f"errands_tenant_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = tenant_b").format(
                sql.Identifier(role), sql.Identifier(database)
            )
        )
    role_url = url.replace("postgres@", f"{role}@", 1)
    try:
        with PgBouncer(executable, role_url, tmp_path) as bouncer:
            with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
                psycopg.connect(bouncer.url, options="-c search_path=tenant_b").close()
            errands.configure(database_pooler="transaction", listen_database_url="")
            try:
                with tenant(bouncer.url, B) as backend:
                    assert backend.migrate() == []
                    for n in range(8):  # more than one server connection's worth
                        sample_jobs.Echo(n).run_in_worker()
                    assert len(api.requests()) == 8
                    assert api.count(Kind.REQUEST, Selection()) == 8
            finally:
                errands.configure(database_pooler=None, listen_database_url=None)
        assert pending(url, B) == ["sample_jobs.Echo"] * 8
        assert pending(url, A) == []
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}"
                ).format(sql.Literal(role))
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- workers ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_drains_its_schema_only(url: str, tmp_path: Path) -> None:
    """Each schema's worker polls once a minute: jobs done within seconds were found
    through their schema's NOTIFY, and the other schema's wake-ups reach no one else."""
    a_backend, b_backend = (PostgresBackend(url, schema=s) for s in (A, B))
    workers: list[WorkerProcess] = []
    try:
        enqueue(a_backend, 3)
        enqueue(b_backend, 2)
        worker_a = WorkerProcess.main(url, tmp_path / "a.log", schema=A, poll_interval=60)
        workers.append(worker_a)
        wait_for(lambda: len(results_of(a_backend)) == 3, timeout=30)
        done_a = results_of(a_backend)
        assert [r.status for r in done_a] == [Status.SUCCESSFUL] * 3
        assert len(pending(url, B)) == 2  # B's jobs wait for B's worker
        assert b_backend.workers(timeout_seconds=60) == []
        # A new job of A, due now: found at once through tenant_a_jobs.
        enqueue(a_backend, 1)
        wait_for(lambda: len(results_of(a_backend)) == 4, timeout=10)
        worker_b = WorkerProcess.main(url, tmp_path / "b.log", schema=B, poll_interval=60)
        workers.append(worker_b)
        wait_for(lambda: len(results_of(b_backend)) == 2, timeout=30)
        # Idle, both listening: a job of B wakes B's worker, and A's has nothing of it.
        enqueue(b_backend, 1)
        wait_for(lambda: len(results_of(b_backend)) == 3, timeout=10)
        assert len(results_of(a_backend)) == 4
        assert len(results_of(b_backend)) == 3
        for worker in workers:
            assert worker.stop() == 0, worker.log()
    finally:
        for worker in workers:
            worker.close()
        a_backend.close()
        b_backend.close()


@pytest.mark.slow
def test_wait_for_result_hears_its_schema(url: str, tmp_path: Path) -> None:
    """wait_for_result of schema B, with a worker of B that polls once a minute:
    the result arrives through tenant_b_results."""
    with tenant(url, B) as backend:
        worker = WorkerProcess.main(url, tmp_path / "b.log", schema=B, poll_interval=60)
        try:
            wait_for(lambda: bool(backend.workers(timeout_seconds=60)), timeout=30)
            request = sample_jobs.Echo("hello").run_in_worker()
            result = api.wait_for_result(request.uuid, timeout=20)  # type: ignore[union-attr]
            assert result is not None and result.return_value == "hello"
            assert worker.stop() == 0, worker.log()
        finally:
            worker.close()
    assert pending(url, A) == []


def test_a_workflow_moves_in_its_schema_only(url: str) -> None:
    """The workflow triggers of each schema read and write that schema's tables: a
    chain in A is released step by step by A's completions, and B sees none of it."""
    with tenant(url, A) as a_backend:
        enqueued = errands.chain(sample_jobs.Noop(), sample_jobs.Noop()).enqueue()
        worker_id = uuid.uuid4()
        for _ in range(2):
            (process,) = a_backend.claim(worker_id=worker_id, queues=[], limit=10)
            finish(a_backend, [process])
        found = errands.workflow(enqueued.uuid)
        assert found is not None and found.state == "succeeded"
    with tenant(url, B) as b_backend:
        assert b_backend.workflow(uuid=enqueued.uuid) is None
        assert b_backend.recent_workflows(limit=5) == []
