"""A poison row harms only itself (issue 16, item 4).

Anyone who can write to the database can insert rows errands cannot load: JSON
nested deeper than Python can decode, times past year 9999, values of the wrong
type. Each test puts one such row among good ones, by raw SQL, in each of the
three tables a job passes through, and checks on a real worker and a real
database that: the poison job ends ERRORED as ``InvalidJobRow``; every good job of
its batch succeeds; maintenance (rescue, prune) keeps working; and the CLI and
every dashboard page still list the rows.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import errands
from conftest import WorkerRunner
from errands import settings
from errands.backends import Backend
from errands.cli import cli
from errands.dashboard import create_app
from errands.models import WorkerInfo
from test_dashboard import log_in

pytestmark = pytest.mark.slow  # each test runs a real worker (not in scripts/test --fast)

INVALID = "errands.errors.InvalidJobRow"
GOOD_JOBS = 3
DEEP = 5_000
PASSWORD = "poison-test-password"


@dataclass(frozen=True)
class Poison:
    """Column overrides, as SQL expressions, that make a row poison on each backend."""

    postgresql: dict[str, str] = field(default_factory=dict)
    sqlite: dict[str, str] = field(default_factory=dict)
    undecodable: bool = False  # Python cannot load the value (not just the wrong type)

    def columns(self, url: str) -> dict[str, str]:
        return self.sqlite if url.startswith("sqlite") else self.postgresql


def _deep_arguments() -> str:
    return '{"args": [' + "[" * DEEP + "]" * DEEP + '], "kwargs": {}}'


# -- the scenario every case runs ------------------------------------------------------


class Database:
    """Raw SQL on the test database, bypassing errands entirely."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.sqlite:
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        with psycopg.connect(self.url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(sql.encode(), params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def poison(self, table: str, key: str, columns: dict[str, str]) -> None:
        assignments = ", ".join(f"{column} = {value}" for column, value in columns.items())
        self.run(f"UPDATE {table} SET {assignments} WHERE uuid = %s", key)

    def result_of(self, request_uuid: str) -> tuple[str, str, str]:
        """(status, error_type, error) of the request's result, read as plain text."""
        rows = self.run(
            "SELECT status, error_type, error FROM errands_result WHERE request_uuid = %s",
            request_uuid,
        )
        assert len(rows) == 1, rows
        return rows[0]  # type: ignore[return-value]

    def count(self, table: str, where: str = "true", *params: Any) -> int:
        return int(self.run(f"SELECT count(*) FROM {table} WHERE {where}", *params)[0][0])

    def key(self, value: uuid.UUID) -> Any:
        return str(value) if self.sqlite else value

    def an_hour_ago(self) -> str:
        return (
            "(julianday('now') - 2440587.5) * 86400.0 - 3600"
            if self.sqlite
            else "now() - interval '1 hour'"
        )

    def a_day_ahead(self) -> str:
        return (
            "(julianday('now') - 2440587.5) * 86400.0 + 86400"
            if self.sqlite
            else "now() + interval '1 day'"
        )


@dataclass
class Planted:
    """The rows one scenario planted: good jobs, and poison in each table."""

    good: list[str]
    claimed: str  # a due request, poisoned: the worker claims it in a batch with the good ones
    waiting: str  # a request due tomorrow, poisoned: listed, never claimed
    rescued: str  # a process of a dead worker, poisoned: maintenance rescues it
    running: str  # a process of a live worker, poisoned: listed
    running_request: str
    pruned: str  # an old result, poisoned: maintenance prunes it


def plant(backend: Backend, db: Database, columns: dict[str, str], tmp: Path) -> Planted:
    import sample_jobs

    good = [sample_jobs.Record(str(tmp / "ran.txt"), f"good-{n}") for n in range(GOOD_JOBS)]
    good_requests = [job.run_in_worker() for job in good[:1]]
    claimed = sample_jobs.Noop().run_in_worker()
    good_requests += [job.run_in_worker() for job in good[1:]]
    waiting = sample_jobs.Noop().run_in_worker()
    db.poison("errands_request", db.key(claimed.uuid), columns)
    db.poison("errands_request", db.key(waiting.uuid), {**columns, "start_at": db.a_day_ahead()})
    rescued = _process_of_fake_worker(backend, db, columns, stale=True)
    running, running_request = _process_of_fake_worker(backend, db, columns, stale=False)
    pruned = _old_result(db, columns)
    return Planted(
        good=[str(r.uuid) for r in good_requests if r is not None],
        claimed=str(claimed.uuid),
        waiting=str(waiting.uuid),
        rescued=rescued[0],
        running=running,
        running_request=running_request,
        pruned=pruned,
    )


def _process_of_fake_worker(
    backend: Backend, db: Database, columns: dict[str, str], *, stale: bool
) -> tuple[str, str]:
    """A claimed, poisoned process of a worker that is not this test's: (process, request)."""
    import sample_jobs

    queue = f"fake-{uuid.uuid4().hex[:8]}"
    request = sample_jobs.Noop().run_in_worker(queue=queue)
    assert request is not None
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="elsewhere", pid=1, queues=[queue])
    )
    (process,) = backend.claim(worker_id=worker_id, queues=[queue], limit=1)
    if stale:
        db.run(
            f"UPDATE errands_worker SET last_heartbeat_at = {db.an_hour_ago()} "
            "WHERE worker_id = %s",
            db.key(worker_id),
        )
    db.poison("errands_process", db.key(process.uuid), columns)
    return str(process.uuid), str(process.request_uuid)


def _old_result(db: Database, columns: dict[str, str]) -> str:
    """A result that ended two days ago, poisoned (it copies the claimed poison's result)."""
    import sample_jobs

    request = sample_jobs.Noop().run_in_worker(queue="old-results")
    assert request is not None
    backend = errands.api.backend()
    worker_id = uuid.uuid4()
    (process,) = backend.claim(worker_id=worker_id, queues=["old-results"], limit=1)
    now = backend.now()
    (result,) = backend.complete_many(
        outcomes=[
            errands.models.Outcome(
                process_uuid=process.uuid,
                status=errands.models.Status.SUCCESSFUL,
                started_at=now,
                ended_at=now - datetime.timedelta(days=2),
            )
        ]
    )
    db.poison("errands_result", db.key(result.uuid), columns)
    return str(result.uuid)


class DatabaseFailures(logging.Handler):
    """Counts the worker's "database operation failed" errors (a failing claim,
    batch or maintenance tick)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(("database unavailable", "database operation failed")):
            self.failures.append(getattr(record, "operation", "?"))


@pytest.fixture
def database_failures() -> Iterator[DatabaseFailures]:
    handler = DatabaseFailures()
    logger = logging.getLogger("errands")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def check_poison_harms_only_itself(
    poison: Poison,
    *,
    db_url: str,
    backend: Backend,
    run_worker: WorkerRunner,
    tmp_path: Path,
    failures: DatabaseFailures,
) -> None:
    db = Database(db_url)
    planted = plant(backend, db, poison.columns(db_url), tmp_path)

    def done() -> bool:
        finished = db.count(
            "errands_result", "request_uuid IN (%s, %s, %s, %s)", *planted.good, planted.claimed
        )
        rescued = db.count("errands_result", "process_uuid = %s", planted.rescued)
        pruned = db.count("errands_result", "uuid = %s", planted.pruned) == 0
        return finished == GOOD_JOBS + 1 and rescued == 1 and pruned

    run_worker(done, timeout=30, results_retention=3600, heartbeat_timeout=5)

    for request in planted.good:
        assert db.result_of(request)[0] == "SUCCESSFUL"
    assert sorted((tmp_path / "ran.txt").read_text().split()) == [
        f"good-{n}" for n in range(GOOD_JOBS)
    ]
    status, error_type, error = db.result_of(planted.claimed)
    assert (status, error_type) == ("ERRORED", INVALID), error
    assert error  # says what is wrong with the row
    assert failures.failures == []  # no claim, batch write or maintenance tick failed

    _check_cli(db_url, planted, shown=poison.undecodable)
    _check_dashboard(planted, shown=poison.undecodable)


def _check_cli(db_url: str, planted: Planted, *, shown: bool) -> None:
    """Every listing and ``get`` of the poison rows succeeds; ``shown``: the
    poisoned value cannot be loaded, and ``get`` shows its placeholder."""
    outputs = check_cli(db_url, [planted.waiting, planted.running, planted.claimed])
    if shown:
        assert "undecodable" in outputs[planted.waiting], outputs[planted.waiting]
        assert "undecodable" in outputs[planted.running], outputs[planted.running]


def check_cli(db_url: str, jobs: list[str]) -> dict[str, str]:
    """Every listing, and ``get`` of each of ``jobs``, exits 0; the output of each get."""
    runner = CliRunner()
    commands = [
        [kind, *json] for kind in ("requests", "processes", "results") for json in ([], ["--json"])
    ]
    commands += [["get", job, *json] for job in jobs for json in ([], ["--json"])]
    outputs = {}
    try:
        for args in commands:
            result = runner.invoke(cli, ["--database-url", db_url, *args])
            assert result.exit_code == 0, (args, result.output, result.exception)
            outputs.setdefault(args[1] if args[0] == "get" else args[0], result.output)
    finally:
        settings.reset()
    return outputs


def _check_dashboard(planted: Planted, *, shown: bool) -> None:
    jobs = [planted.waiting, planted.running, planted.running_request, planted.claimed]
    pages = check_dashboard(jobs)
    if shown:
        assert "undecodable" in pages[f"/jobs/{planted.waiting}"]
        assert "undecodable" in pages[f"/jobs/{planted.running}"]


def check_dashboard(jobs: list[str]) -> dict[str, str]:
    """Every listing, and the page of each of ``jobs``, answers 200; their text."""
    texts = {}
    with TestClient(create_app(password=PASSWORD), base_url="http://localhost") as client:
        assert log_in(client, PASSWORD).status_code == 303
        pages = [
            "/",
            "/requests",
            "/requests?state=scheduled",
            "/processes",
            "/results",
            "/results?status=ERRORED",
            "/workers",
            "/schedules",
            "/requests?order=reverse",
            "/processes?order=reverse",
            "/results?order=reverse",
        ]
        for page in pages + [f"/jobs/{job}" for job in jobs]:
            response = client.get(page)
            assert response.status_code == 200, (page, response.text[-2000:])
            texts[page] = response.text
    return texts


# -- the cases --------------------------------------------------------------------------


def _run(poison: Poison, request: pytest.FixtureRequest) -> None:
    check_poison_harms_only_itself(
        poison,
        db_url=request.getfixturevalue("db_url"),
        backend=request.getfixturevalue("backend"),
        run_worker=request.getfixturevalue("run_worker"),
        tmp_path=request.getfixturevalue("tmp_path"),
        failures=request.getfixturevalue("database_failures"),
    )


def test_parameters_nested_too_deep_to_decode(db_url: str, request: pytest.FixtureRequest) -> None:
    poison = Poison(
        postgresql={"parameters": f"'{_deep_arguments()}'::jsonb"},
        sqlite={"parameters": f"'{_deep_arguments()}'"},
        undecodable=True,
    )
    _run(poison, request)


def test_parameters_nested_too_deep_to_pickle(db_url: str, request: pytest.FixtureRequest) -> None:
    # Python loads 700 levels, but cannot pickle them to a job process.
    arguments = '{"args": [' + "[" * 700 + "]" * 700 + '], "kwargs": {}}'
    poison = Poison(
        postgresql={"parameters": f"'{arguments}'::jsonb"},
        sqlite={"parameters": f"'{arguments}'"},
        undecodable=True,
    )
    _run(poison, request)


def test_a_time_past_year_9999(db_url: str, request: pytest.FixtureRequest) -> None:
    poison = Poison(
        # PostgreSQL takes years up to 294276; Python's datetime stops at 9999.
        postgresql={"created_at": "'10000-01-01 00:00:00+00'"},
        sqlite={"created_at": "1e13"},  # unix seconds in the year 318857
        undecodable=True,
    )
    _run(poison, request)


@pytest.mark.postgres_only
def test_an_infinite_time(db_url: str, request: pytest.FixtureRequest) -> None:
    _run(Poison(postgresql={"created_at": "'infinity'"}, undecodable=True), request)


def test_parameters_that_are_an_array(db_url: str, request: pytest.FixtureRequest) -> None:
    _run(
        Poison(postgresql={"parameters": "'[1, 2]'::jsonb"}, sqlite={"parameters": "'[1, 2]'"}),
        request,
    )


def test_parameters_that_are_a_string(db_url: str, request: pytest.FixtureRequest) -> None:
    poison = Poison(
        postgresql={"parameters": """'"run me"'::jsonb"""}, sqlite={"parameters": """'"run me"'"""}
    )
    _run(poison, request)


def test_malformed_arguments(db_url: str, request: pytest.FixtureRequest) -> None:
    arguments = '{"args": 5, "kwargs": []}'
    poison = Poison(
        postgresql={"parameters": f"'{arguments}'::jsonb"}, sqlite={"parameters": f"'{arguments}'"}
    )
    _run(poison, request)


@pytest.mark.sqlite_only  # PostgreSQL's integer columns hold only integers
def test_text_in_an_integer_column(db_url: str, request: pytest.FixtureRequest) -> None:
    _run(Poison(sqlite={"retries": "'many'", "priority": "'high'"}), request)


@pytest.mark.sqlite_only  # PostgreSQL's integer columns hold only 32-bit integers
def test_a_retry_count_no_integer_can_hold(db_url: str, request: pytest.FixtureRequest) -> None:
    _run(Poison(sqlite={"retries": "1e300", "retry_attempt": "-1e300"}), request)


@pytest.mark.sqlite_only  # PostgreSQL's jsonb columns hold only valid JSON
def test_json_that_is_not_json(db_url: str, request: pytest.FixtureRequest) -> None:
    _run(Poison(sqlite={"parameters": "'{not json'"}, undecodable=True), request)


@pytest.mark.sqlite_only  # PostgreSQL's columns hold only values of their type
def test_a_blob_and_text_where_other_types_belong(
    db_url: str, request: pytest.FixtureRequest
) -> None:
    _run(Poison(sqlite={"trace_id": "x'00ff'", "timeout": "'soon'"}), request)


@pytest.mark.sqlite_only  # PostgreSQL's primary keys are uuids, never NULL
@pytest.mark.parametrize("key", ["NULL", "x'00ff0{n}'", "'not-a-uuid-{n}'"])
def test_keys_that_are_no_uuid(
    key: str,
    db_url: str,
    backend: Backend,
    run_worker: WorkerRunner,
    tmp_path: Path,
    database_failures: DatabaseFailures,
) -> None:
    """SQLite lets a TEXT PRIMARY KEY hold NULL, a blob or any text: a request with
    such a uuid cannot be claimed by it, a process cannot give it to its result."""
    import sample_jobs

    db = Database(db_url)
    keys = iter(key.format(n=n) for n in range(10))
    good = [sample_jobs.Record(str(tmp_path / "ran.txt"), f"good-{n}") for n in range(GOOD_JOBS)]
    good_requests = [good[0].run_in_worker()]
    keyless = sample_jobs.Noop().run_in_worker()
    good_requests += [job.run_in_worker() for job in good[1:]]
    assert keyless is not None
    db.poison("errands_request", str(keyless.uuid), {"uuid": next(keys)})
    _process_of_fake_worker(backend, db, {"uuid": next(keys)}, stale=True)
    _process_of_fake_worker(backend, db, {"uuid": next(keys)}, stale=False)
    old_key = next(keys)
    _old_result(db, {"uuid": old_key})

    def done() -> bool:
        finished = db.count("errands_result", "status = 'SUCCESSFUL' AND queue = 'default'")
        invalid = db.count("errands_result", "error_type = %s", INVALID)
        rescued = db.count("errands_result", "status = 'LOST' AND queue LIKE 'fake-%'")
        pruned = db.count("errands_result", f"uuid IS {old_key}") == 0
        return finished == GOOD_JOBS and invalid == 1 and rescued == 1 and pruned

    # Room for one job at a time: a claim of one that met the keyless row first
    # would take nothing, ever.
    run_worker(
        done, timeout=30, results_retention=3600, heartbeat_timeout=5, worker_max_processes=1
    )
    assert sorted((tmp_path / "ran.txt").read_text().split()) == [
        f"good-{n}" for n in range(GOOD_JOBS)
    ]
    assert database_failures.failures == []
    assert db.count("errands_request") == 0
    good_uuids = [str(r.uuid) for r in good_requests if r is not None]
    check_cli(db_url, good_uuids)
    check_dashboard(good_uuids)


def test_an_attempt_count_at_the_largest_integer(
    db_url: str,
    run_worker: WorkerRunner,
    tmp_path: Path,
    database_failures: DatabaseFailures,
) -> None:
    """A deferral counting one more attempt than the column holds used to fail the
    write of its whole batch, again and again. Deferrals are bounded now: at the
    largest count the deferral comes after the job's last attempt and ends it
    (``lifecycle.deferred_after_last_attempt``), written with the batch at once."""
    import poison_jobs
    import sample_jobs

    db = Database(db_url)
    largest = 2**63 - 1 if db.sqlite else 2**31 - 1
    good = [sample_jobs.Record(str(tmp_path / "ran.txt"), f"good-{n}") for n in range(GOOD_JOBS)]
    good_requests = [good[0].run_in_worker()]
    counting = poison_jobs.DeferCounting().run_in_worker()
    good_requests += [job.run_in_worker() for job in good[1:]]
    assert counting is not None
    db.poison(
        "errands_request",
        db.key(counting.uuid),
        {"retries": str(largest), "retry_attempt": str(largest)},
    )

    def done() -> bool:
        finished = db.count("errands_result", "status = 'SUCCESSFUL'")
        return finished == GOOD_JOBS and db.count("errands_result", "status = 'ERRORED'") == 1

    run_worker(done, timeout=30, import_modules=("sample_jobs", "poison_jobs"))
    assert database_failures.failures == []  # the batch was written at the first try
    assert db.run("SELECT count(*) FROM errands_request") == [(0,)]
    ((error,),) = db.run("SELECT error FROM errands_result WHERE status = 'ERRORED'")
    assert error.startswith("deferred after its last attempt")


def test_a_poisoned_worker_row(
    db_url: str,
    backend: Backend,
    run_worker: WorkerRunner,
    tmp_path: Path,
    database_failures: DatabaseFailures,
) -> None:
    """A heartbeat row of another worker, poisoned: workers keep working, and the
    CLI and the dashboard list it."""
    import sample_jobs

    db = Database(db_url)
    worker_id = uuid.uuid4()
    backend.register_worker(
        worker=WorkerInfo(worker_id=worker_id, hostname="elsewhere", pid=1, queues=["q"])
    )
    poison = (
        {"queues": "'{not json'", "pid": "'one'", "started_at": "1e13"}
        if db.sqlite
        else {"started_at": "'infinity'", "last_heartbeat_at": "'10000-01-01'"}
    )
    assignments = ", ".join(f"{column} = {value}" for column, value in poison.items())
    db.run(f"UPDATE errands_worker SET {assignments} WHERE worker_id = %s", db.key(worker_id))
    request = sample_jobs.Record(str(tmp_path / "ran.txt"), "good").run_in_worker()
    assert request is not None

    def done() -> bool:
        return db.count("errands_result", "status = 'SUCCESSFUL'") == 1

    worker = run_worker(done, timeout=30)
    worker.run_maintenance()  # one more tick, with the poisoned row in the table
    assert database_failures.failures == []
    runner = CliRunner()
    try:
        for command in (["workers"], ["workers", "--json"], ["stats"], ["stats", "--json"]):
            result = runner.invoke(cli, ["--database-url", db_url, *command])
            assert result.exit_code == 0, (command, result.output, result.exception)
            if command == ["workers"]:
                assert "undecodable" in result.output, result.output
    finally:
        settings.reset()
    check_dashboard([str(request.uuid)])
