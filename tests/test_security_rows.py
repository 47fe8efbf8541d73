"""Database rows are data, never code (issue 16, items 1 and 2).

Whoever can write to errands' tables must not be able to make a worker (or the
CLI, or the dashboard) run a shell command the operator did not configure, nor
import a module outside the ``import`` setting. Each scenario runs against a real
worker with real child processes, on PostgreSQL and SQLite.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sample_jobs
from dashboard_rows import claim, enqueue, finish
from starlette.testclient import TestClient

import errands
from conftest import WorkerRunner, wait_for, worker_config
from errands import Status, schedule_report, scheduler
from errands.backends import Backend
from errands.dashboard import create_app
from errands.errors import CommandNotConfigured
from errands.models import JobResult
from errands.scheduler import Schedule, ShellCommand, command_key
from errands.worker import Worker
from test_cli import invoke
from test_dashboard import PASSWORD, log_in, post
from test_django import Project, project  # noqa: F401  (a fixture: the Django project)

SHELL_COMMAND = "errands.scheduler.ShellCommand"
NOT_CONFIGURED = "errands.errors.CommandNotConfigured"
NOT_REGISTERED = "errands.errors.JobNotRegistered"
JOB_MODULES = ("sample_jobs", "security_rows_jobs")
MARKER_MODULE = "security_rows_marker"

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


def insert_by_sql(url: str, job_class: str, parameters: dict[str, Any], priority: int = 0) -> None:
    """A request written straight into the table, as any database writer could."""
    text = json.dumps(parameters)
    if url.startswith("sqlite"):
        now = time.time() - 1
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute(
                "INSERT INTO errands_request (uuid, created_at, start_at, job_class, parameters,"
                " queue, priority) VALUES (?, ?, ?, ?, ?, 'default', ?)",
                (str(uuid.uuid4()), now, now, job_class, text, priority),
            )
        return
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO errands_request (uuid, start_at, job_class, parameters, queue, priority)"
            " VALUES (gen_random_uuid(), now(), %s, %s::jsonb, 'default', %s)",
            (job_class, text, priority),
        )


def run_until_finished(run_worker: WorkerRunner, count: int, **overrides: Any) -> None:
    """One child (so a probe job sees what earlier jobs imported) until ``count`` results."""
    run_worker(
        lambda: len(errands.results(limit=100)) >= count,
        import_modules=JOB_MODULES,
        worker_max_processes=1,
        **overrides,
    )


def only_result(job_class: str) -> JobResult:
    (result,) = errands.results(job_class=job_class)
    return result


def probe(names: list[str]) -> dict[str, bool]:
    """The return value of the ModulesLoaded job: which modules its child had imported."""
    return only_result("security_rows_jobs.ModulesLoaded").return_value  # type: ignore[no-any-return]


def enqueue_probe(url: str, names: list[str]) -> None:
    """Runs after the rows under test (lower priority), in the same child."""
    insert_by_sql(
        url, "security_rows_jobs.ModulesLoaded", {"args": [names], "kwargs": {}}, priority=-1
    )


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file that importing ``security_rows_marker`` (in any process) writes."""
    path = tmp_path / "imported"
    monkeypatch.setenv("SECURITY_ROWS_MARKER", str(path))
    assert MARKER_MODULE not in sys.modules
    return path


def dashboard_retry(result: JobResult) -> str:
    """Press the dashboard's Retry button on ``result``; the page shown afterwards."""
    with TestClient(create_app(password=PASSWORD), base_url="http://localhost") as client:
        assert log_in(client).status_code == 303
        response = post(client, f"/jobs/{result.uuid}/retry", next="/results")
        return client.get(response.headers["location"]).text


def errored_result(backend: Backend, job_class: str, parameters: dict[str, Any]) -> JobResult:
    """A finished, ERRORED result of ``job_class`` (as if a worker had run it)."""
    enqueue(backend, 1, job_class=job_class, parameters=parameters)
    (result,) = finish(backend, claim(backend, "default"), Status.ERRORED)
    return result


# -- item 1: shell commands only from the operator's configuration ----------------------


def shell_rows(marker: Path) -> dict[str, dict[str, Any]]:
    """Ways a row can ask for ``touch <marker>`` without it being configured."""
    command = f"touch {marker}"
    return {
        "stored-by-older-errands": {"args": [command], "kwargs": {}},
        "command-keyword": {"args": [], "kwargs": {"command": command}},
        "key-of-an-unconfigured-command": {"args": [command_key(command)], "kwargs": {}},
    }


@pytest.mark.parametrize("form", list(shell_rows(Path("x"))))
@pytest.mark.slow
def test_a_shell_command_row_written_by_sql_runs_nothing(
    run_worker: WorkerRunner, db_url: str, tmp_path: Path, form: str
) -> None:
    touched = tmp_path / "touched"
    insert_by_sql(db_url, SHELL_COMMAND, shell_rows(touched)[form])
    # The worker does hold a cmd: entry, just not this one.
    run_until_finished(run_worker, 1, schedule=(["cmd:echo configured", "@yearly"],))
    result = only_result(SHELL_COMMAND)
    assert result.status == Status.ERRORED
    assert result.error_type == NOT_CONFIGURED
    assert "shell commands run only from that setting" in result.error
    assert not touched.exists()


class EverySecond(Schedule):
    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        return moment.replace(microsecond=0) + datetime.timedelta(seconds=1)

    def describe(self) -> str:
        return "every second"


@pytest.mark.slow
def test_a_configured_cmd_schedule_still_runs_and_records_its_output(
    db_url: str, tmp_path: Path
) -> None:
    ticks = tmp_path / "ticks"
    command = f"echo tick >> {ticks}; echo from the schedule"
    # A custom Schedule object does not survive the trip to the child's environment;
    # the child finds the command by the entry's job string alone.
    entry = [f"cmd:{command}", EverySecond()]
    worker = Worker(config=worker_config(db_url, schedule=(entry,)))
    worker.start()
    try:
        wait_for(lambda: bool(errands.results()), timeout=20, step=worker.turn)
    finally:
        worker.stop()
        worker.stop()  # abort: do not wait for the occurrences scheduled ahead
        while not worker.finished():
            worker.turn()
        worker.shut_down()
    result = errands.results()[0]
    assert result.status == Status.SUCCESSFUL, result.error
    assert result.return_value == {"exit_code": 0, "output": "from the schedule\n"}
    assert result.parameters == {"args": [command_key(command)], "kwargs": {}}
    assert ticks.read_text().startswith("tick")
    (listed,) = schedule_report.status(
        errands.api.backend(), scheduler.parse_entries([entry]), count=1
    )
    assert listed.last_request_uuid is not None  # `errands schedule` shows its last run


@pytest.mark.parametrize("given", ["command", "key"])
def test_run_in_worker_refuses_a_shell_command_and_writes_nothing(
    db_url: str, tmp_path: Path, given: str
) -> None:
    command = f"touch {tmp_path / 'touched'}"
    with pytest.raises(CommandNotConfigured):
        argument = command if given == "command" else command_key(command)
        ShellCommand(argument).run_in_worker()
    assert errands.requests() == []


def test_enqueue_many_with_a_shell_command_writes_nothing(db_url: str, tmp_path: Path) -> None:
    key = command_key(f"touch {tmp_path / 'touched'}")
    with pytest.raises(CommandNotConfigured, match="shell commands run only from that setting"):
        errands.enqueue_many([sample_jobs.Echo(1), ShellCommand(key), sample_jobs.Echo(2)])
    assert errands.requests() == []  # not even the jobs beside it


@pytest.mark.parametrize(
    "arguments",
    [["--args", '["touch {path}"]'], ["--param", "command=touch {path}"]],
    ids=["args", "command-param"],
)
def test_errands_run_refuses_a_shell_command(
    db_url: str, tmp_path: Path, arguments: list[str]
) -> None:
    touched = tmp_path / "touched"
    filled = [a.format(path=touched) for a in arguments]
    for now in ([], ["--now"]):
        result = invoke(db_url, "run", SHELL_COMMAND, *filled, *now)
        assert result.exit_code != 0
        assert "shell commands run only from that setting" in result.output
    assert errands.requests() == []
    assert not touched.exists()


@pytest.mark.slow
def test_dashboard_retry_refuses_a_shell_command_result(
    db_url: str, backend: Backend, tmp_path: Path
) -> None:
    touched = tmp_path / "touched"
    result = errored_result(backend, SHELL_COMMAND, {"args": [f"touch {touched}"], "kwargs": {}})
    page = dashboard_retry(result)
    assert "shell commands run only from that setting" in page
    assert errands.requests() == []
    retried = errands.get(result.uuid)
    assert isinstance(retried, JobResult) and retried.retry_request_uuid is None


def test_a_configured_command_can_still_be_retried(db_url: str, backend: Backend) -> None:
    """A retry names the entry again: allowed where the settings hold that command."""
    result = errored_result(backend, SHELL_COMMAND, {"args": [command_key("echo hi")]})
    other = errored_result(backend, SHELL_COMMAND, {"args": [command_key("echo hi")]})
    errands.configure(schedule=[["cmd:echo hi", "@daily"]])
    try:
        retried = errands.api.retry(result.uuid)
    finally:
        errands.configure(schedule=None)
    assert retried is not None
    assert retried.parameters == {"args": [command_key("echo hi")], "kwargs": {}}
    # ... and refused where they do not (another result: this one has its retry now).
    with pytest.raises(CommandNotConfigured):
        errands.api.retry(other.uuid)


# -- item 2: no import by name from the database -----------------------------------------


@pytest.mark.slow
def test_a_row_naming_a_module_outside_the_import_setting_imports_nothing(
    run_worker: WorkerRunner, db_url: str, marker: Path
) -> None:
    insert_by_sql(db_url, f"{MARKER_MODULE}.Planted", {"args": [], "kwargs": {}})
    enqueue_probe(db_url, [MARKER_MODULE])
    run_until_finished(run_worker, 2)
    planted = only_result(f"{MARKER_MODULE}.Planted")
    assert planted.status == Status.ERRORED
    assert planted.error_type == NOT_REGISTERED
    assert probe([MARKER_MODULE]) == {MARKER_MODULE: False}  # not in the child
    assert MARKER_MODULE not in sys.modules  # nor in the worker's own process
    assert not marker.exists()


@pytest.mark.slow
def test_a_this_zen_row_does_not_import_this(run_worker: WorkerRunner, db_url: str) -> None:
    insert_by_sql(db_url, "this.Zen", {"args": [], "kwargs": {}})
    enqueue_probe(db_url, ["this"])
    run_until_finished(run_worker, 2)
    zen = only_result("this.Zen")
    assert (zen.status, zen.error_type) == (Status.ERRORED, NOT_REGISTERED)
    assert probe(["this"]) == {"this": False}


@pytest.mark.slow
def test_a_venv_main_row_does_not_stop_the_worker(run_worker: WorkerRunner, db_url: str) -> None:
    insert_by_sql(db_url, "venv.__main__.X", {"args": [], "kwargs": {}})
    enqueue_probe(db_url, ["venv.__main__"])
    run_until_finished(run_worker, 2)
    venv_row = only_result("venv.__main__.X")
    assert (venv_row.status, venv_row.error_type) == (Status.ERRORED, NOT_REGISTERED)
    # Its module never ran, so the same child went on to run the next job.
    assert probe(["venv.__main__"]) == {"venv.__main__": False}


@pytest.mark.slow
def test_a_class_inside_an_import_package_still_loads_on_demand(
    run_worker: WorkerRunner, db_url: str
) -> None:
    assert "security_rows_jobs.lazy" not in sys.modules  # only the package is imported
    insert_by_sql(db_url, "security_rows_jobs.lazy.Lazy", {"args": [], "kwargs": {}})
    run_until_finished(run_worker, 1)
    lazy = only_result("security_rows_jobs.lazy.Lazy")
    assert lazy.status == Status.SUCCESSFUL, lazy.error
    assert lazy.return_value == "loaded on demand"


def test_errands_run_does_not_import_a_module_outside_the_import_setting(
    db_url: str, marker: Path
) -> None:
    result = invoke(db_url, "--import", "sample_jobs", "run", f"{MARKER_MODULE}.Planted")
    assert result.exit_code != 0
    assert "is not registered" in result.output
    assert MARKER_MODULE not in sys.modules
    assert not marker.exists()
    assert errands.requests() == []


def test_dashboard_retry_does_not_import_a_module_outside_the_import_setting(
    db_url: str, backend: Backend, marker: Path
) -> None:
    result = errored_result(backend, f"{MARKER_MODULE}.Planted", {"args": [], "kwargs": {}})
    page = dashboard_retry(result)
    assert "is not registered" in page
    assert MARKER_MODULE not in sys.modules
    assert not marker.exists()
    assert errands.requests() == []


# -- the Django integration: its task paths import nothing outside installed apps --------

DJANGO_SCRIPT = """
import json, os, signal, subprocess, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
sys.path.insert(0, os.getcwd())
django.setup()
import errands
from errands.contrib.django.tasks import RunTask
from errands.models import NewRequest
from shop import tasks

planted_task = RunTask("security_rows_marker.planted", [], {}).run_in_worker()
with errands.backend().enqueue_transaction() as tx:
    planted = NewRequest(job_class="security_rows_marker.Planted", parameters={"args": []})
    (planted_job,) = tx.insert_requests([planted])
real_task = tasks.async_double.enqueue(21)
worker = subprocess.Popen([sys.executable, "manage.py", "errands", "worker"])
try:
    found = {
        name: errands.wait_for_result(key, timeout=60)
        for name, key in [
            ("planted_task", planted_task.uuid),
            ("planted_job", planted_job.uuid),
            ("real_task", real_task.id),
        ]
    }
finally:
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
print(json.dumps({k: [r.status.value, r.error_type] for k, r in found.items()}))
"""


@pytest.mark.slow
def test_django_task_and_job_paths_import_nothing_outside_the_project(
    project: Project,  # noqa: F811  (the fixture imported from test_django)
    tmp_path: Path,
) -> None:
    marker = tmp_path / "imported"
    project.environ["SECURITY_ROWS_MARKER"] = str(marker)
    output = project.run("-c", DJANGO_SCRIPT).stdout
    found = json.loads(output.strip().splitlines()[-1])
    assert found == {
        "planted_task": ["ERRORED", NOT_REGISTERED],
        "planted_job": ["ERRORED", NOT_REGISTERED],
        "real_task": ["SUCCESSFUL", ""],  # a task of an installed app still loads
    }
    assert not marker.exists()
