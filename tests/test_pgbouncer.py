"""errands through PgBouncer in transaction pooling mode (``database_pooler =
"transaction"``): enqueues (INSERT and COPY, sync and async), ``errands.*`` calls,
the CLI, the dashboard's backend calls and real workers, with LISTEN on a direct
``listen_database_url`` and without one (polling).

The pooler has two server connections, shared by every client in turn: a prepared
statement or a SET of one client would break or reach the next, and each test then
reads every server connection's session state (``pgbouncer.server_sessions``).

PgBouncer is a real one (``tests/support/pgbouncer.py``); without the binary these
tests fail, never skip: ``scripts/install-test-deps`` installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sample_jobs
from dashboard_rows import claim, enqueue, finish, results
from pgbouncer import PgBouncer, binary, server_sessions
from worker_process import WorkerProcess

import errands
from conftest import empty_postgres, wait_for
from errands import api
from errands.backends.postgres import PostgresBackend
from errands.backends.postgres.connection import COPY_THRESHOLD
from errands.errors import ConfigurationError
from errands.models import Kind, PageSpec, Selection, Status
from errands.settings import load

ERRANDS = str(Path(sys.executable).with_name("errands"))
#: More executions of one statement than psycopg's prepare_threshold (5), on one
#: connection: a prepared statement would have been made (and broken).
REPEATS = 8


@pytest.fixture(scope="module")
def bouncer(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    executable = binary()
    if executable is None:
        pytest.fail(
            "pgbouncer is not installed (Debian package pgbouncer, /usr/sbin/pgbouncer): "
            "run scripts/install-test-deps"
        )
    with PgBouncer(executable, pg_url, tmp_path_factory.mktemp("pgbouncer")) as running:
        yield running


@pytest.fixture
def pooled(bouncer: PgBouncer, pg_url: str) -> Iterator[str]:
    """errands configured for the pooler (no direct LISTEN URL); its URL."""
    errands.configure(
        database_url=bouncer.url, database_pooler="transaction", listen_database_url=""
    )
    try:
        yield bouncer.url
    finally:
        errands.configure(database_url=None, database_pooler=None, listen_database_url=None)
        empty_postgres(pg_url)


def assert_no_session_state(url: str) -> None:
    """No server connection behind the pooler keeps anything of errands' sessions."""
    for state in server_sessions(url):
        assert state["prepared"] == 0, state
        assert state["listening"] == 0, state
        assert state["statement_timeout"] == "0", state
        assert state["jit"] == "on", state
        assert state["plan_cache_mode"] == "auto", state


def count_requests(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM errands_request").fetchone()
        assert row is not None
        return int(row[0])


# -- settings --------------------------------------------------------------------------


def test_pooler_settings_are_checked_and_read_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "ERRANDS_DATABASE_POOLER": "Transaction",
        "ERRANDS_LISTEN_DATABASE_URL": "postgresql://direct/app",
    }
    config = load(environ=environ, cwd=tmp_path)
    assert config.database_pooler == "transaction"
    assert config.listen_database_url == "postgresql://direct/app"
    assert load(environ={}, cwd=tmp_path).database_pooler == "none"
    with pytest.raises(ConfigurationError, match=r"'database_pooler'.*none, transaction"):
        load(environ={"ERRANDS_DATABASE_POOLER": "statement"}, cwd=tmp_path)
    with pytest.raises(ConfigurationError, match="'database_pooler'"):
        PostgresBackend("postgresql://nowhere/app", pooler="session")


def test_behind_a_pooler_listen_goes_to_the_direct_url_or_nowhere() -> None:
    direct = PostgresBackend("postgresql://a/app", pooler="none", listen_url="")
    assert direct.listen_url == "postgresql://a/app"
    pooled = PostgresBackend("postgresql://a/app", pooler="transaction", listen_url="")
    assert (pooled.pooled, pooled.listen_url) == (True, "")
    given = PostgresBackend("postgresql://a/app", pooler="transaction", listen_url="postgresql://b")
    assert given.listen_url == "postgresql://b"


# -- enqueueing and the API ----------------------------------------------------------


def test_enqueue_single_many_and_copy_through_the_pooler(pooled: str, pg_url: str) -> None:
    copy_batch = COPY_THRESHOLD + 20
    for round_ in range(REPEATS):
        assert sample_jobs.Echo(round_).run_in_worker() is not None
        errands.enqueue_many([sample_jobs.Echo(n) for n in range(5)])
    errands.enqueue_many([sample_jobs.Echo(n) for n in range(copy_batch)])
    enqueue(api.backend(), copy_batch)  # the backend's enqueue transaction, COPY too
    assert count_requests(pg_url) == REPEATS * 6 + 2 * copy_batch
    assert_no_session_state(pooled)


def test_async_enqueue_through_the_pooler(pooled: str, pg_url: str) -> None:
    async def main() -> None:
        for round_ in range(REPEATS):
            await errands.enqueue_many_async([sample_jobs.Echo(round_), sample_jobs.Echo(-1)])
            await sample_jobs.Echo(round_).run_in_worker_async(concurrency_key=f"k{round_}")

    asyncio.run(main())
    assert count_requests(pg_url) == REPEATS * 3
    assert_no_session_state(pooled)


def test_api_get_cancel_retry_and_wait_through_the_pooler(pooled: str) -> None:
    backend = api.backend()
    pending = [sample_jobs.Echo(n).run_in_worker() for n in range(REPEATS)]
    for request in pending:
        assert request is not None
        assert api.get(request.uuid) == request
        cancelled = api.cancel(request.uuid)
        assert cancelled is not None and cancelled.status is Status.CANCELLED
    # A finished job (claimed and completed by hand), waited for, then retried.
    [request] = enqueue(backend, queue="q")
    [result] = finish(backend, claim(backend, "q"), Status.ERRORED)
    waited = api.wait_for_result(request.uuid, timeout=5, follow_retries=False)
    assert waited.uuid == result.uuid and waited.status is Status.ERRORED
    again = api.retry(result.uuid)
    assert again is not None and again.retry_attempt == 1
    assert api.count(Kind.REQUEST, Selection(queue="q")) == 1
    assert_no_session_state(pooled)


def test_cli_commands_through_the_pooler(bouncer: PgBouncer, pg_url: str) -> None:
    env = {
        **os.environ,
        "ERRANDS_DATABASE_POOLER": "transaction",
        "ERRANDS_IMPORT": "sample_jobs",
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            [ERRANDS, "--database-url", bouncer.url, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        enqueued = str(uuid.UUID(run("run", "sample_jobs.Echo", "--args", "[7]").strip()))
        listed = json.loads(run("requests", "--json"))
        assert [row["uuid"] for row in listed] == [enqueued]
        assert "default" in run("stats", "--json")
        run("cancel", enqueued)
        assert json.loads(run("requests", "--json")) == []
        assert json.loads(run("get", enqueued, "--json"))["status"] == "CANCELLED"
        assert "transaction" in run("settings")
        run("migrate")  # up to date: its advisory lock is the transaction's
        assert json.loads(run("workers", "--json")) == []
    finally:
        empty_postgres(pg_url)
    assert_no_session_state(bouncer.url)


def test_dashboard_backend_calls_through_the_pooler(pooled: str) -> None:
    backend = api.backend()
    written = results(backend, 12)
    enqueue(backend, 9, queue="mail", delay=3600)
    page = backend.page_results(selection=Selection(), page=PageSpec(limit=7))
    assert len(page) == 7
    assert {r.uuid for r in page} <= {r.uuid for r in written}
    for _ in range(REPEATS):
        assert api.count(Kind.RESULT, Selection()) == 12
        assert api.count(Kind.REQUEST, Selection(queue="mail")) == 9
    assert api.stats().queues
    outcome = api.cancel_selected(Kind.REQUEST, Selection(queue="mail"))
    assert api.count(Kind.REQUEST, Selection(queue="mail")) == 0, outcome
    assert api.pause_queue("mail") and api.paused_queues() == ["mail"]
    assert api.resume_queue("mail") and api.paused_queues() == []
    assert_no_session_state(pooled)


# -- workers ---------------------------------------------------------------------------


def spawn(url: str, log: Path, *, listen_url: str, poll_interval: float) -> WorkerProcess:
    """``errands worker`` (it logs as in production) behind the pooler."""
    env = {
        **os.environ,
        "ERRANDS_DATABASE_POOLER": "transaction",
        "ERRANDS_LISTEN_DATABASE_URL": listen_url,
        "ERRANDS_HEARTBEAT_INTERVAL": "0.5",
    }
    options = ["--poll-interval", str(poll_interval), "--max-processes", "2"]
    return WorkerProcess.errands(url, log, "--import", "sample_jobs", "worker", *options, env=env)


def drained(pg_url: str, count: int) -> bool:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM errands_result WHERE status = 'SUCCESSFUL'"
        ).fetchone()
        return row is not None and row[0] == count


@pytest.mark.slow
def test_worker_behind_the_pooler_is_woken_by_listen_on_the_direct_url(
    pooled: str, pg_url: str, tmp_path: Path
) -> None:
    # Polls only every 60 s: jobs done within seconds were found through LISTEN.
    with spawn(pooled, tmp_path / "worker.log", listen_url=pg_url, poll_interval=60) as worker:
        worker.wait_registered()
        time.sleep(0.5)  # past its first look for work
        errands.enqueue_many([sample_jobs.Echo(n) for n in range(COPY_THRESHOLD + 50)])
        wait_for(lambda: drained(pg_url, COPY_THRESHOLD + 50), timeout=30)
        [request] = [sample_jobs.Echo("last").run_in_worker()]
        assert request is not None
        assert api.wait_for_result(request.uuid, timeout=15).return_value == "last"
        assert worker.stop() == 0, worker.log()
        assert "no LISTEN/NOTIFY" not in worker.log()
    assert_no_session_state(pooled)


@pytest.mark.slow
def test_worker_behind_the_pooler_without_a_direct_url_polls(
    pooled: str, pg_url: str, tmp_path: Path
) -> None:
    with spawn(pooled, tmp_path / "worker.log", listen_url="", poll_interval=0.2) as worker:
        worker.wait_registered()
        for _ in range(REPEATS):  # many claims and completions on the same connections
            errands.enqueue_many([sample_jobs.Echo(n) for n in range(20)])
            time.sleep(0.1)
        wait_for(lambda: drained(pg_url, REPEATS * 20), timeout=60)
        request = sample_jobs.Echo("polled").run_in_worker()
        assert request is not None
        assert api.wait_for_result(request.uuid, timeout=15).return_value == "polled"
        assert worker.stop() == 0, worker.log()
        assert "no LISTEN/NOTIFY: database_pooler is 'transaction'" in worker.log()
    assert_no_session_state(pooled)
