"""The SQLite backend: files, URLs, clear errors, WAL, and several processes on one file.

Everything runs on real files; concurrency tests start real processes that meet
at a barrier (a file) so their transactions overlap.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sample_jobs

import errands
from errands.backends import Backend, open_backend
from errands.backends.sqlite import SqliteBackend
from errands.errors import BackendError, ConfigurationError, SchemaOutOfDate
from errands.models import NewRequest, PageSpec, Selection


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "errands.db"


@pytest.fixture
def sqlite_url(db_path: Path) -> Iterator[str]:
    """A migrated database file; errands is configured to use it."""
    url = url_of(db_path)
    backend = open_backend(url)
    backend.migrate()
    backend.close()
    errands.configure(database_url=url)
    try:
        yield url
    finally:
        errands.configure(database_url=None)


@pytest.fixture
def backend(sqlite_url: str) -> Iterator[SqliteBackend]:
    b = open_backend(sqlite_url)
    assert isinstance(b, SqliteBackend)
    try:
        yield b
    finally:
        b.close()


def insert(backend: Backend, count: int, **fields: Any) -> list[uuid.UUID]:
    requests = [
        NewRequest(job_class="sample_jobs.Noop", parameters={}, **fields) for _ in range(count)
    ]
    with backend.enqueue_transaction() as tx:
        return [r.uuid for r in tx.insert_requests(requests)]


# -- URLs ----------------------------------------------------------------------------


def test_default_url_is_errands_sqlite3_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend(None)
    try:
        assert isinstance(backend, SqliteBackend)
        assert backend.path == tmp_path / "errands.sqlite3"
        assert backend.migrate() == list(range(1, backend.latest_schema_version() + 1))
    finally:
        backend.close()
    assert (tmp_path / "errands.sqlite3").is_file()


def test_relative_url_is_resolved_against_the_working_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    backend = open_backend("sqlite:///data/jobs.db")
    monkeypatch.chdir(tmp_path / "data")  # a later chdir does not move the database
    try:
        assert isinstance(backend, SqliteBackend)
        assert backend.path == tmp_path / "data" / "jobs.db"
        backend.migrate()
    finally:
        backend.close()
    assert (tmp_path / "data" / "jobs.db").is_file()
    assert not (tmp_path / "data" / "data").exists()


def test_absolute_url_has_four_slashes(tmp_path: Path) -> None:
    path = tmp_path / "absolute.db"
    url = url_of(path)
    assert url.startswith("sqlite:////")
    backend = open_backend(url)
    try:
        assert isinstance(backend, SqliteBackend)
        assert backend.path == path
        backend.migrate()
        assert backend.schema_version() == backend.latest_schema_version()
    finally:
        backend.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_urls_without_a_file_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="database_url"):
        open_backend(url)


# -- clear errors --------------------------------------------------------------------------


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    backend = open_backend(url_of(missing / "errands.db"))
    with pytest.raises(BackendError, match=f"directory {missing} does not exist"):
        backend.migrate()
    assert not missing.exists()


def migrate_error_as_nobody(url: str) -> str:
    """The BackendError message of ``migrate`` in a forked child running as user "nobody"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, try, report, and leave without cleanup
        message = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            open_backend(url).migrate()
        except BackendError as exc:
            message = str(exc)
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    return message


def test_unwritable_directory_is_named() -> None:
    # Root may write anywhere, so when the tests run as root the check runs in
    # a child process that drops to user "nobody".
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        locked = Path(top) / "locked"
        locked.mkdir(mode=0o555)
        url = url_of(locked / "errands.db")
        if os.geteuid() == 0:
            message = migrate_error_as_nobody(url)
        else:
            with pytest.raises(BackendError) as info:
                open_backend(url).migrate()
            message = str(info.value)
        assert f"directory {locked} is not writable" in message
        assert not (locked / "errands.db").exists()


def test_a_file_that_is_not_a_database_is_named(db_path: Path) -> None:
    db_path.write_bytes(b"these are not the bytes of an SQLite database\n" * 100)
    backend = open_backend(url_of(db_path))
    with pytest.raises(BackendError, match=f"{db_path} is not an SQLite database"):
        backend.migrate()
    with pytest.raises(BackendError, match=f"{db_path} is not an SQLite database"):
        backend.next_requests(selection=Selection(), limit=10_000)
    assert db_path.read_bytes().startswith(b"these are not")


def test_a_database_without_errands_tables_says_to_migrate(db_path: Path) -> None:
    with sqlite3.connect(db_path) as other_app:
        other_app.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    other_app.close()
    backend = open_backend(url_of(db_path))
    try:
        assert backend.schema_version() is None
        with pytest.raises(SchemaOutOfDate) as info:
            backend.next_requests(selection=Selection(), limit=10_000)
        assert str(db_path) in str(info.value)
        assert "errands migrate" in str(info.value)
        assert backend.migrate() == list(range(1, backend.latest_schema_version() + 1))
        assert backend.next_requests(selection=Selection(), limit=10_000) == []
    finally:
        backend.close()


def test_only_migrate_creates_the_file(db_path: Path) -> None:
    backend = open_backend(url_of(db_path))
    try:
        assert backend.schema_version() is None
        with pytest.raises(SchemaOutOfDate, match="errands migrate"):
            backend.next_requests(selection=Selection(), limit=10_000)
        assert not db_path.exists()
        backend.migrate()
    finally:
        backend.close()
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


# -- schema and settings ---------------------------------------------------------------------


def test_the_database_is_in_wal_mode(backend: SqliteBackend, db_path: Path) -> None:
    backend.next_requests(selection=Selection(), limit=10_000)
    with sqlite3.connect(db_path) as outsider:
        assert outsider.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    outsider.close()


def test_migrate_is_idempotent(backend: SqliteBackend) -> None:
    assert backend.migrate() == []
    assert backend.schema_version() == backend.latest_schema_version()


def test_migration_sql_builds_a_database_errands_accepts(tmp_path: Path) -> None:
    path = tmp_path / "external.db"
    backend = open_backend(url_of(path))
    script = backend.migration_sql()
    with sqlite3.connect(path) as external_tool:
        external_tool.executescript(script)
    external_tool.close()
    try:
        assert backend.schema_version() == backend.latest_schema_version()
        assert backend.migrate() == []
        assert backend.next_requests(selection=Selection(), limit=10_000) == []
    finally:
        backend.close()


# -- behaviour specific to this backend ---------------------------------------------------------


def test_timestamps_are_aware_utc_with_microseconds(backend: SqliteBackend) -> None:
    start = datetime.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
    (request_uuid,) = insert(backend, 1, start_at=start)
    (request,) = backend.next_requests(selection=Selection(), limit=10_000)
    assert request.uuid == request_uuid
    assert request.start_at.tzinfo is not None
    assert abs((request.start_at - start).total_seconds()) < 1e-5
    assert abs((request.created_at - backend.now()).total_seconds()) < 5


def test_release_restores_the_request_exactly(backend: SqliteBackend) -> None:
    past = backend.now() - datetime.timedelta(minutes=5)
    insert(backend, 1, start_at=past, priority=4)
    (before,) = backend.next_requests(selection=Selection(), limit=10_000)
    (process,) = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=5)
    assert backend.next_requests(selection=Selection(), limit=10_000) == []
    assert backend.release(process_uuids=[process.uuid]) == 1
    assert backend.next_requests(selection=Selection(), limit=10_000) == [before]
    assert backend.page_processes(selection=Selection(), page=PageSpec(limit=10_000)) == []


def test_claim_returns_processes_in_claim_order(backend: SqliteBackend) -> None:
    low = insert(backend, 3, priority=-1)
    high = insert(backend, 3, priority=9)
    claimed = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=10)
    assert [p.request_uuid for p in claimed] == high + low


def test_enqueue_on_a_callers_connection_waits_for_the_callers_commit(
    sqlite_url: str, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path)  # the sqlite3 module's default: implicit transactions
    try:
        sample_jobs.Noop().run_in_worker(connection=conn)
        assert conn.in_transaction  # left open, like the module's own implicit BEGIN
        assert errands.requests() == []
        conn.commit()
        assert len(errands.requests()) == 1

        conn.execute("BEGIN")
        conn.execute("CREATE TABLE audit (note TEXT)")
        sample_jobs.Noop().run_in_worker(connection=conn)  # joins as a savepoint
        assert conn.in_transaction
        conn.rollback()
        assert len(errands.requests()) == 1
    finally:
        conn.close()


def test_enqueue_on_an_autocommit_connection_commits_at_once(
    sqlite_url: str, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        request = sample_jobs.Noop().run_in_worker(connection=conn)
        assert not conn.in_transaction
        assert [r.uuid for r in errands.requests()] == [request.uuid if request else None]
    finally:
        conn.close()


def test_a_failed_enqueue_undoes_only_its_savepoint(sqlite_url: str, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE audit (note TEXT)")
        with pytest.raises(errands.ParameterError):
            sample_jobs.Echo(object()).run_in_worker(connection=conn)
        sample_jobs.Noop().run_in_worker(connection=conn)
        conn.execute("INSERT INTO audit VALUES ('kept')")
        conn.commit()
        assert conn.execute("SELECT note FROM audit").fetchall() == [("kept",)]
        assert len(errands.requests()) == 1
    finally:
        conn.close()


def test_a_connection_to_another_file_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "elsewhere.db")
    try:
        with pytest.raises(ConfigurationError, match="not to errands' database"):
            sample_jobs.Noop().run_in_worker(connection=conn)
    finally:
        conn.close()
    assert errands.requests() == []


def test_close_closes_every_threads_connection(backend: SqliteBackend) -> None:
    seen: list[sqlite3.Connection] = []

    def use() -> None:
        backend.next_requests(selection=Selection(), limit=10_000)
        seen.append(backend._connection())

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 3  # one connection per thread
    backend.close()
    for connection in seen:
        with pytest.raises(sqlite3.ProgrammingError):
            connection.execute("SELECT 1")
    assert backend.next_requests(selection=Selection(), limit=10_000) == []  # usable again: reopens


# -- listening ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_listen_wakes_soon_after_another_connection_commits(
    backend: SqliteBackend, sqlite_url: str
) -> None:
    woke = threading.Event()
    listener = backend.listen(on_wake=woke.set)
    enqueuer = open_backend(sqlite_url)
    try:
        assert not woke.wait(0.2)  # an idle database wakes nobody
        delays = []
        for _ in range(15):
            woke.clear()
            started = time.monotonic()
            insert(enqueuer, 1)
            assert woke.wait(2)
            delays.append(time.monotonic() - started)
        assert statistics.median(delays) < 0.05
    finally:
        enqueuer.close()
        started = time.monotonic()
        listener.close()
        assert time.monotonic() - started < 0.5


# -- several processes on one file ----------------------------------------------------------------

BARRIER = """
import pathlib, sys, time
_go = pathlib.Path(sys.argv[1])
pathlib.Path(f"{_go}.ready.{sys.argv[2]}").touch()
while not _go.exists():
    time.sleep(0.001)
"""


def run_together(tmp_path: Path, count: int, setup: str, body: str, *args: str) -> list[str]:
    """Run ``count`` Python processes that each do ``setup``, meet, then run ``body``.

    Returns each process's stdout. ``sys.argv[3:]`` holds ``args``.
    """
    go = tmp_path / "go"
    script = textwrap.dedent(setup) + BARRIER + textwrap.dedent(body)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go), str(i), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        outputs.append(stdout)
    return outputs


@pytest.mark.slow
def test_concurrent_claimers_never_claim_a_request_twice(
    backend: SqliteBackend, sqlite_url: str, tmp_path: Path
) -> None:
    requested = insert(backend, 500)
    setup = """
        import json, sys, uuid
        from errands.backends import Backend, open_backend
        backend = open_backend(sys.argv[3])
        worker_id = uuid.uuid4()
    """
    body = """
        claimed = []
        while batch := backend.claim(worker_id=worker_id, queues=[], limit=3):
            claimed += [str(p.request_uuid) for p in batch]
        print(json.dumps(claimed))
    """
    outputs = run_together(tmp_path, 4, setup, body, sqlite_url)
    claims = [json.loads(out) for out in outputs]
    everything = [request for claim in claims for request in claim]
    assert len(everything) == len(set(everything)) == 500
    assert set(everything) == {str(u) for u in requested}
    assert sum(bool(claim) for claim in claims) >= 2  # the claimers really overlapped
    assert backend.next_requests(selection=Selection(), limit=10_000) == []


@pytest.mark.slow
def test_concurrent_enqueues_of_one_key_from_processes_create_one_job(
    sqlite_url: str, tmp_path: Path
) -> None:
    setup = """
        import sys
        import errands, sample_jobs
        errands.configure(database_url=sys.argv[3])
        errands.backend().next_requests  # open the backend before the barrier
    """
    body = """
        print("created" if sample_jobs.Mail(99).run_in_worker() else "declined")
    """
    outputs = run_together(tmp_path, 6, setup, body, sqlite_url)
    assert sorted(out.strip() for out in outputs) == ["created"] + ["declined"] * 5
    assert len(errands.requests(concurrency_key="user-99")) == 1


@pytest.mark.slow
def test_concurrent_migrations_apply_the_schema_once(tmp_path: Path) -> None:
    url = url_of(tmp_path / "fresh.db")
    setup = """
        import json, sys
        from errands.backends import Backend, open_backend
        backend = open_backend(sys.argv[3])
    """
    body = """
        print(json.dumps(backend.migrate()))
    """
    outputs = run_together(tmp_path, 4, setup, body, url)
    applied = sorted(json.loads(out) for out in outputs)
    backend = open_backend(url)
    try:
        assert applied == [[], [], [], list(range(1, backend.latest_schema_version() + 1))]
        assert backend.schema_version() == backend.latest_schema_version()
        assert backend.next_requests(selection=Selection(), limit=10_000) == []
    finally:
        backend.close()


def test_results_written_before_version_4_keep_no_due_time(db_path: Path) -> None:
    from errands.backends.sqlite import connection as sqlite_backend

    scripts = sqlite_backend.migration_scripts()
    with sqlite3.connect(db_path) as conn:
        conn.execute(sqlite_backend.QUERIES["create_schema_table"])
        for version, script in scripts.items():
            if version <= 3:
                conn.executescript(script)
                conn.execute(sqlite_backend.QUERIES["record_schema_version"], {"version": version})
        conn.execute(
            "INSERT INTO errands_result (uuid, process_uuid, request_uuid, requested_at,"
            " ended_at, created_at, status, job_class, parameters, queue)"
            " VALUES (?, ?, ?, 1.0, 2.0, 2.0, 'SUCCESSFUL', 'tests.Job', '{}', 'default')",
            [str(uuid.uuid4()) for _ in range(3)],
        )
    conn.close()
    backend = open_backend(url_of(db_path))
    try:
        assert backend.schema_version() == 3
        assert backend.migrate() == [4, 5, 6, 7, 8, 9, 10]
        (old,) = backend.page_results(selection=Selection(), page=PageSpec(limit=100))
        assert (old.job_class, old.start_at) == ("tests.Job", None)
    finally:
        backend.close()
