"""The ``errands`` command line: CliRunner for most commands, real subprocesses where
signals and child processes matter."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from worker_process import WorkerProcess

import errands
from conftest import wait_for
from errands.backends import open_backend
from errands.cli import cli
from errands.logs import configure_logging

ERRANDS = str(Path(sys.executable).with_name("errands"))

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


def invoke(url: str | None, *args: str, **kwargs: Any) -> Result:
    prefix = ["--database-url", url] if url else []
    return CliRunner().invoke(cli, [*prefix, *args], catch_exceptions=False, **kwargs)


def wait_for_results(count: int, **filters: Any) -> list[errands.JobResult]:
    wait_for(lambda: len(errands.results(**filters)) >= count, timeout=30)
    return errands.results(**filters)


def finished_jobs(run_worker: Any) -> tuple[errands.JobResult, errands.JobResult]:
    """One SUCCESSFUL (sample_jobs.Echo) and one ERRORED (sample_jobs.Fail) result."""
    import sample_jobs

    ok = sample_jobs.Echo({"answer": 42}).run_in_worker()
    bad = sample_jobs.Fail("kaboom").run_in_worker()
    assert ok is not None and bad is not None
    run_worker(lambda: len(errands.results()) >= 2)
    results = {r.request_uuid: r for r in errands.results()}
    return results[ok.uuid], results[bad.uuid]


# -- help and version ------------------------------------------------------------------


def test_group_help_explains_the_workflow() -> None:
    result = invoke(None, "--help")
    assert result.exit_code == 0
    for text in ("--database-url", "--import", "--version", "migrate", "worker", "demo", "results"):
        assert text in result.output


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "worker",
            ["--queue", "--max-processes", "--max-jobs-per-process", "--reload", "--log-format"],
        ),
        ("results", ["--status", "--queue", "--job-class", "--limit", "--json"]),
        ("requests", ["--queue", "--limit", "--json"]),
        ("run", ["--param", "--args", "--now", "--delay"]),
        ("purge", ["--older-than", "--all", "--yes"]),
        ("migrate", ["--sql"]),
        ("demo", ["--keep"]),
        ("get", ["UUID", "--json"]),
    ],
)
def test_command_help_mentions_options_and_examples(command: str, options: list[str]) -> None:
    result = invoke(None, command, "--help")
    assert result.exit_code == 0
    for option in options:
        assert option in result.output
    assert "Example" in result.output


def test_version() -> None:
    result = invoke(None, "--version")
    assert result.exit_code == 0
    assert "errands" in result.output and "0." in result.output


# -- migrate -----------------------------------------------------------------------------


def test_migrate_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = invoke(url, "migrate")
    assert first.exit_code == 0, first.output
    assert "Applied schema version" in first.output
    second = invoke(url, "migrate")
    assert second.exit_code == 0
    assert "already up to date" in second.output


@pytest.mark.slow
def test_migrate_postgres_from_empty(empty_pg_url: str) -> None:
    first = invoke(empty_pg_url, "migrate")
    assert first.exit_code == 0, first.output
    assert "Applied schema version" in first.output
    assert "postgresql" in first.output
    assert "already up to date" in invoke(empty_pg_url, "migrate").output


def test_migrate_sql_prints_sql_without_running_it(db_url: str, tmp_path: Path) -> None:
    result = invoke(db_url, "migrate", "--sql")
    assert result.exit_code == 0
    assert "CREATE TABLE" in result.output.upper()
    assert "errands_request" in result.output
    # On an empty SQLite file nothing is created.
    fresh = tmp_path / "untouched.db"
    assert invoke(f"sqlite:///{fresh}", "migrate", "--sql").exit_code == 0
    untouched = open_backend(f"sqlite:///{fresh}")
    try:
        assert untouched.schema_version() is None
    finally:
        untouched.close()


def test_missing_schema_is_a_helpful_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    result = invoke(url, "results")
    assert result.exit_code == 2
    assert "errands migrate" in result.stderr
    assert "Traceback" not in result.output
    worker = invoke(url, "worker", "--max-processes", "1")
    assert worker.exit_code == 2
    assert "errands migrate" in worker.stderr


@pytest.mark.slow
def test_missing_schema_postgres_worker(empty_pg_url: str) -> None:
    result = invoke(empty_pg_url, "worker", "--max-processes", "1")
    assert result.exit_code == 2
    assert "errands migrate" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- settings errors -----------------------------------------------------------------------


def test_bad_setting_value_is_one_line_naming_the_setting(db_url: str) -> None:
    result = invoke(db_url, "stats", env={"ERRANDS_HEARTBEAT_TIMEOUT": "abc"})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error:")
    assert "heartbeat_timeout" in lines[0] and "abc" in lines[0]
    assert "ERRANDS_HEARTBEAT_TIMEOUT" in lines[0]


def test_bad_database_url_scheme(tmp_path: Path) -> None:
    result = invoke("mysql://x@y/z", "results")
    assert result.exit_code == 2
    assert "unsupported scheme" in result.stderr


def test_unimportable_module_is_an_error(db_url: str) -> None:
    result = invoke(db_url, "--import", "no_such_module_xyz", "run", "x.Y")
    assert result.exit_code == 1
    assert "no_such_module_xyz" in result.stderr


def test_settings_command_shows_sources(db_url: str) -> None:
    result = invoke(db_url, "settings", env={"ERRANDS_POLL_INTERVAL": "0.5"})
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.startswith("poll_interval"))
    assert "0.5" in line and "ERRANDS_POLL_INTERVAL" in line
    data = json.loads(invoke(db_url, "settings", "--json").stdout)
    assert data["database_url"] == db_url


# -- listing and get --------------------------------------------------------------------


@pytest.mark.slow
def test_results_table_json_and_filters(db_url: str, run_worker: Any) -> None:
    ok, bad = finished_jobs(run_worker)

    table = invoke(db_url, "results")
    assert table.exit_code == 0
    assert str(ok.uuid) in table.output and str(bad.uuid) in table.output
    assert "SUCCESSFUL" in table.output and "ERRORED" in table.output
    assert "sample_jobs.Echo" in table.output and "ValueError" in table.output
    assert table.output.splitlines()[0].split()[:4] == ["UUID", "JOB", "CLASS", "QUEUE"]

    rows = json.loads(invoke(db_url, "results", "--json").stdout)
    assert {r["uuid"] for r in rows} == {str(ok.uuid), str(bad.uuid)}
    assert all(r["kind"] == "result" for r in rows)

    errored = json.loads(invoke(db_url, "results", "--status", "errored", "--json").stdout)
    assert [r["uuid"] for r in errored] == [str(bad.uuid)]
    assert errored[0]["error_type"] == "ValueError"

    by_class = json.loads(
        invoke(db_url, "results", "--job-class", "sample_jobs.Echo", "--json").stdout
    )
    assert [r["return_value"] for r in by_class] == [{"answer": 42}]
    assert len(json.loads(invoke(db_url, "results", "--limit", "1", "--json").stdout)) == 1


@pytest.mark.slow
def test_get_shows_every_field_and_traceback(db_url: str, run_worker: Any) -> None:
    _, bad = finished_jobs(run_worker)
    shown = invoke(db_url, "get", str(bad.uuid))
    assert shown.exit_code == 0
    assert "ERRORED" in shown.output
    assert "traceback:" in shown.output
    assert "kaboom" in shown.output and "raise ValueError" in shown.output
    assert "process_uuid" in shown.output and "duration" in shown.output

    data = json.loads(invoke(db_url, "get", str(bad.uuid), "--json").stdout)
    assert data["uuid"] == str(bad.uuid)
    assert data["status"] == "ERRORED"
    assert "ValueError: kaboom" in data["traceback"]

    # A request's uuid finds its result.
    by_request = json.loads(invoke(db_url, "get", str(bad.request_uuid), "--json").stdout)
    assert by_request["uuid"] == str(bad.uuid)


def test_get_unknown_and_malformed_uuid(db_url: str) -> None:
    missing = invoke(db_url, "get", str(uuid.uuid4()))
    assert missing.exit_code == 1
    assert "no job has uuid" in missing.stderr
    malformed = invoke(db_url, "get", "not-a-uuid")
    assert malformed.exit_code == 2
    assert "not a uuid" in malformed.stderr


def test_requests_and_processes(db_url: str) -> None:
    import sample_jobs

    request = sample_jobs.Echo(1).run_in_worker(delay=3600, queue="later")
    assert request is not None
    table = invoke(db_url, "requests")
    assert table.exit_code == 0
    assert str(request.uuid) in table.output and "later" in table.output

    rows = json.loads(invoke(db_url, "requests", "--json").stdout)
    assert [(r["kind"], r["uuid"], r["queue"]) for r in rows] == [
        ("request", str(request.uuid), "later")
    ]
    assert json.loads(invoke(db_url, "requests", "--queue", "other", "--json").stdout) == []

    shown = invoke(db_url, "get", str(request.uuid))
    assert "kind" in shown.output and "request" in shown.output

    assert "No claimed or running jobs." in invoke(db_url, "processes").output
    assert json.loads(invoke(db_url, "processes", "--json").stdout) == []
    assert "No results." in invoke(db_url, "results").output


# -- operating --------------------------------------------------------------------------


@pytest.mark.slow
def test_retry_enqueues_the_next_attempt(db_url: str, run_worker: Any) -> None:
    _, bad = finished_jobs(run_worker)
    result = invoke(db_url, "--import", "sample_jobs", "retry", str(bad.uuid), "--delay", "600")
    assert result.exit_code == 0, result.output
    assert "attempt 2" in result.output
    pending = json.loads(invoke(db_url, "requests", "--json").stdout)
    assert len(pending) == 1
    assert pending[0]["uuid"] in result.output
    assert pending[0]["retry_attempt"] == 1
    assert pending[0]["job_class"] == "sample_jobs.Fail"
    linked = json.loads(invoke(db_url, "get", str(bad.uuid), "--json").stdout)
    assert linked["retry_request_uuid"] == pending[0]["uuid"]

    still_pending = invoke(db_url, "retry", pending[0]["uuid"])
    assert still_pending.exit_code == 1
    assert "has not finished" in still_pending.stderr


def test_cancel_pending_then_finished(db_url: str) -> None:
    import sample_jobs

    request = sample_jobs.Echo(1).run_in_worker(delay=3600)
    assert request is not None
    result = invoke(db_url, "cancel", str(request.uuid))
    assert result.exit_code == 0
    assert "Cancelled pending job" in result.output
    cancelled = json.loads(invoke(db_url, "results", "--status", "CANCELLED", "--json").stdout)
    assert [r["request_uuid"] for r in cancelled] == [str(request.uuid)]
    assert json.loads(invoke(db_url, "requests", "--json").stdout) == []

    again = invoke(db_url, "cancel", str(request.uuid))
    assert again.exit_code == 1
    assert "already finished" in again.stderr and "CANCELLED" in again.stderr
    unknown = invoke(db_url, "cancel", str(uuid.uuid4()))
    assert unknown.exit_code == 1
    assert "nothing pending or running" in unknown.stderr


@pytest.mark.slow
def test_purge(db_url: str, run_worker: Any) -> None:
    finished_jobs(run_worker)
    neither = invoke(db_url, "purge")
    assert neither.exit_code == 2
    assert "--older-than" in neither.output

    declined = invoke(db_url, "purge", "--all", input="n\n")
    assert declined.exit_code == 1
    assert len(errands.results()) == 2

    not_old = invoke(db_url, "purge", "--older-than", "3600", "--yes")
    assert not_old.exit_code == 0
    assert "Deleted 0 results." in not_old.output

    confirmed = invoke(db_url, "purge", "--all", input="y\n")
    assert confirmed.exit_code == 0
    assert "Deleted 2 results." in confirmed.output
    assert errands.results() == []


def test_stats_and_workers(db_url: str) -> None:
    import sample_jobs

    sample_jobs.Echo(1).run_in_worker()
    sample_jobs.Echo(2).run_in_worker(queue="mail", delay=3600)
    data = json.loads(invoke(db_url, "stats", "--json").stdout)
    assert set(data) == {"queues", "results_by_status", "workers_active", "workers_stale"}
    queues = {q["queue"]: q for q in data["queues"]}
    assert queues["default"]["pending"] == 1
    assert queues["mail"]["scheduled"] == 1 and queues["mail"]["pending"] == 0
    assert data["workers_active"] == 0

    table = invoke(db_url, "stats")
    assert table.exit_code == 0
    assert "PENDING" in table.output and "mail" in table.output
    assert "workers: 0 active, 0 stale" in table.output

    assert "No workers." in invoke(db_url, "workers").output
    assert json.loads(invoke(db_url, "workers", "--json").stdout) == []
    worker_id = uuid.uuid4()
    errands.api.backend().register_worker(
        worker=errands.models.WorkerInfo(
            worker_id=worker_id, hostname="h1", pid=4242, queues=["mail"]
        )
    )
    listed = json.loads(invoke(db_url, "workers", "--json").stdout)
    assert [(w["worker_id"], w["pid"], w["stale"]) for w in listed] == [
        (str(worker_id), 4242, False)
    ]
    table = invoke(db_url, "workers")
    assert str(worker_id) in table.output and "active" in table.output


def test_run_enqueues_with_parameters(db_url: str) -> None:
    result = invoke(
        db_url,
        "--import",
        "sample_jobs",
        "run",
        "sample_jobs.Record",
        "--param",
        "path=/tmp/x",
        "--param",
        'token="7"',
        "--queue",
        "cli",
    )
    assert result.exit_code == 0, result.output
    request_uuid = result.stdout.strip()
    rows = json.loads(invoke(db_url, "requests", "--json").stdout)
    assert [r["uuid"] for r in rows] == [request_uuid]
    assert rows[0]["queue"] == "cli"
    job = errands.registry.build_job(rows[0]["job_class"], rows[0]["parameters"])
    assert (job.path, job.token) == ("/tmp/x", "7")  # type: ignore[attr-defined]

    positional = invoke(db_url, "run", "sample_jobs.Echo", "--args", "[[1, 2]]")
    assert positional.exit_code == 0, positional.output


def test_run_now_runs_in_process(db_url: str) -> None:
    result = invoke(db_url, "run", "sample_jobs.Echo", "--param", "value=[1, 2]", "--now")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [1, 2]
    assert errands.requests() == []

    failing = invoke(db_url, "run", "sample_jobs.Fail", "--params", '{"message": "nope"}', "--now")
    assert failing.exit_code == 1
    assert "ValueError" in failing.stderr and "nope" in failing.stderr


def test_run_errors(db_url: str) -> None:
    unknown = invoke(db_url, "run", "sample_jobs.NoSuchJob")
    assert unknown.exit_code == 1
    assert "not registered" in unknown.stderr
    bad_param = invoke(db_url, "run", "sample_jobs.Echo", "--param", "novalue")
    assert bad_param.exit_code == 2
    bad_args = invoke(db_url, "run", "sample_jobs.Echo", "--args", '{"a": 1}')
    assert bad_args.exit_code == 2 and "JSON array" in bad_args.output
    wrong = invoke(db_url, "run", "sample_jobs.Echo", "--param", "nope=1")
    assert wrong.exit_code == 1 and "cannot build" in wrong.stderr


# -- the worker command, as a real process ---------------------------------------------


def worker_process(url: str, log: Path, *args: str) -> WorkerProcess:
    return WorkerProcess.errands(url, log, "--import", "sample_jobs", "worker", *args)


@pytest.mark.slow
def test_worker_runs_jobs_logs_json_and_stops_on_sigterm(db_url: str, tmp_path: Path) -> None:
    import sample_jobs

    with worker_process(
        db_url,
        tmp_path / "worker.log",
        "--max-processes",
        "1",
        "--poll-interval",
        "0.1",
        "--stats-every",
        "0",
        "--log-format",
        "json",
        "--log-jobs",
        "--max-pending-per-process",
        "3",
        "--queue",
        "default",
    ) as process:
        request = sample_jobs.Echo("hello").run_in_worker()
        assert request is not None
        results = wait_for_results(1)
        assert results[0].status == errands.Status.SUCCESSFUL
        assert len(errands.workers()) == 1
        returncode = process.stop(signal.SIGTERM)
        stderr = process.log()
    assert returncode == 0, stderr
    assert "queues     default" in stderr
    assert "(jobs held per process: 3)" in stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    finished = [r for r in records if r["message"] == "job finished"]
    assert finished, stderr
    assert finished[0]["job_class"] == "sample_jobs.Echo"
    assert finished[0]["status"] == "SUCCESSFUL"
    assert {"time", "level", "logger"} <= set(finished[0])
    assert errands.workers() == []  # deregistered on the way out


@pytest.mark.slow
def test_worker_banner_masks_password(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    assert invoke(url, "migrate").exit_code == 0
    log = tmp_path / "worker.log"
    with worker_process(url, log, "--max-processes", "1", "--stats-every", "0") as process:
        process.wait_registered()
        returncode = process.stop(signal.SIGINT)
        stderr = process.log()
    assert returncode == 0, stderr
    assert "sqlite" in stderr and str(tmp_path / "w.db") in stderr
    assert "queues     all" in stderr and "sample_jobs" in stderr
    assert "(jobs held per process: auto, 10 to 200 by how long jobs run)" in stderr


def test_reload_without_watchfiles_says_how_to_install(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # makes `import watchfiles` fail
    result = invoke(db_url, "worker", "--reload")
    assert result.exit_code == 1
    assert "pip install 'errands[reload]'" in result.stderr


@pytest.mark.slow
def test_reload_restarts_the_worker_on_py_changes(db_url: str, tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    module = tmp_path / "reload_jobs_test.py"
    module.write_text(
        "from errands import Job, register_job\n\n"
        "@register_job\n"
        "class Version(Job):\n"
        "    def run(self):\n"
        "        return 1\n"
    )
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    command = ["--import", "reload_jobs_test", "worker", "--reload", "--max-processes", "1"]
    command += ["--poll-interval", "0.1", "--stats-every", "0"]
    with WorkerProcess.errands(db_url, log, *command, cwd=tmp_path, env=env) as process:
        wait_for(lambda: log.read_text().count("errands ") >= 1 and len(errands.workers()) == 1)
        first = errands.workers()[0].worker_id
        module.write_text(module.read_text().replace("return 1", "return 2"))
        wait_for(lambda: "restarting the worker" in log.read_text(), timeout=30)
        wait_for(lambda: [w.worker_id for w in errands.workers()] not in ([], [first]), timeout=30)
        sys.path.insert(0, str(tmp_path))
        try:
            import reload_jobs_test  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(tmp_path))
        reload_jobs_test.Version().run_in_worker()
        (result,) = wait_for_results(1)
        assert result.return_value == 2  # the restarted worker runs the edited code
        assert process.stop(signal.SIGTERM) == 0
    assert "reload_jobs_test.py; restarting the worker" in log.read_text()
    wait_for(lambda: errands.workers() == [], timeout=10)


# -- helpers -------------------------------------------------------------------------------


def test_log_format_text_has_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    logger = logging.getLogger("errands")
    logger.info("job finished", extra={"job_class": "a.B", "job_uuid": "u1", "error": "two words"})
    logger.debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "INFO" in lines[0] and "job finished" in lines[0]
    assert "job_class=a.B" in lines[0] and "job_uuid=u1" in lines[0]
    assert 'error="two words"' in lines[0]


def test_log_format_json_lines_and_reconfigure() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    configure_logging("debug", "json", stream=stream)  # replaces, does not duplicate
    logger = logging.getLogger("errands")
    logger.debug("claimed", extra={"queue": "mail", "count": 3})
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        logger.exception("failed", extra={"operation": "claim"})
    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert len(records) == 2
    assert records[0]["message"] == "claimed"
    assert records[0]["level"] == "DEBUG" and records[0]["logger"] == "errands"
    assert records[0]["queue"] == "mail" and records[0]["count"] == 3
    assert "RuntimeError: bad" in records[1]["exception"]
    assert records[1]["operation"] == "claim"


def test_configure_logging_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("INFO", "xml")
    with pytest.raises(ValueError, match="log_level"):
        configure_logging("LOUD", "text")


@pytest.mark.slow
def test_cwd_modules_importable_by_console_script(db_url: str, tmp_path: Path) -> None:
    """`errands --import myjobs` finds a module in the working directory, like `python -m`."""
    (tmp_path / "myjobs_cli_test.py").write_text(
        "from errands import Job, register_job\n\n"
        "@register_job\n"
        "class Hello(Job):\n"
        "    def run(self):\n"
        "        return 'hello from cwd'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    completed = subprocess.run(
        [
            ERRANDS,
            "--database-url",
            db_url,
            "--import",
            "myjobs_cli_test",
            "run",
            "myjobs_cli_test.Hello",
            "--now",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == "hello from cwd"


def test_pause_and_resume_a_queue(db_url: str) -> None:
    paused = invoke(db_url, "pause", "mail")
    assert paused.exit_code == 0 and "Paused queue 'mail'" in paused.output
    assert "already paused" in invoke(db_url, "pause", "mail").output
    assert errands.api.paused_queues() == ["mail"]
    assert "paused queues: mail" in invoke(db_url, "stats").output
    resumed = invoke(db_url, "resume", "mail")
    assert resumed.exit_code == 0 and "Resumed queue 'mail'" in resumed.output
    assert "was not paused" in invoke(db_url, "resume", "mail").output
    assert errands.api.paused_queues() == []


def test_schedule_lists_entries(db_url: str) -> None:
    env = {"ERRANDS_SCHEDULE": '[["sample_jobs.Noop", "*/5 * * * *"]]'}
    table = invoke(db_url, "--import", "sample_jobs", "schedule", env=env)
    assert table.exit_code == 0, table.output
    assert "sample_jobs.Noop" in table.output and "NEXT RUNS" in table.output
    entries = json.loads(
        invoke(
            db_url, "--import", "sample_jobs", "schedule", "--count", "2", "--json", env=env
        ).stdout
    )
    assert [e["job"] for e in entries] == ["sample_jobs.Noop"]
    assert len(entries[0]["next_runs"]) == 2
    assert "No schedule entries" in invoke(db_url, "schedule").output


def test_schedule_shows_the_queued_occurrence_apart_from_the_last_run(db_url: str) -> None:
    from errands import scheduler

    entries = scheduler.parse_entries([["sample_jobs.Noop", "* * * * *"]])
    scheduler.sync(errands.backend(), entries, horizon=datetime.timedelta(0))
    env = {"ERRANDS_SCHEDULE": '[["sample_jobs.Noop", "* * * * *"]]'}
    (entry,) = json.loads(invoke(db_url, "schedule", "--json", env=env).stdout)
    # The occurrence enqueued ahead has not run: it is queued, not the last run.
    assert entry["queued"]["due_at"] == entry["latest_occurrence_at"]
    assert entry["last_run"] is None


def test_schedule_check_validates_without_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the default SQLite file would be created
    good = {"ERRANDS_SCHEDULE": '[["sample_jobs.Noop", "@daily"], ["cmd:true", "0 9 * * 1-5"]]'}
    result = invoke(None, "--import", "sample_jobs", "schedule", "check", env=good)
    assert result.exit_code == 0, result.output
    assert "2 schedule entries are valid" in result.output
    bad = {
        "ERRANDS_SCHEDULE": '[["sample_jobs.Noop", "@daily"], ["sample_jobs.Noop", "0 25 * * *"]]'
    }
    result = CliRunner().invoke(cli, ["--import", "sample_jobs", "schedule", "check"], env=bad)
    assert result.exit_code == 2
    assert "schedule entry 1" in result.output and "0 25 * * *" in result.output
    assert not (tmp_path / "errands.sqlite3").exists()


def test_global_options_are_also_accepted_after_the_command() -> None:
    result = invoke(
        None,
        "--import",
        "first.jobs",
        "settings",
        "--import",
        "second.jobs",
        "--database-url",
        "sqlite:///after.db",
        "--json",
    )
    shown = json.loads(result.stdout)
    assert shown["import"] == ["first.jobs", "second.jobs"]
    assert shown["database_url"] == "sqlite:///after.db"
    assert "--import MODULE" in invoke(None, "worker", "--help").output


def test_health_exits_0_only_with_a_fresh_worker(db_url: str, backend: Any) -> None:
    from errands.models import WorkerInfo

    result = CliRunner().invoke(cli, ["--database-url", db_url, "health", "--queue", "mail"])
    assert result.exit_code == 1
    assert "no worker" in result.output
    worker = WorkerInfo(worker_id=uuid.uuid4(), hostname="h", pid=1, queues=["mail"])
    backend.register_worker(worker=worker)
    result = CliRunner().invoke(cli, ["--database-url", db_url, "health", "--queue", "mail"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: database reachable")
    report = CliRunner().invoke(cli, ["--database-url", db_url, "health", "--json"])
    assert json.loads(report.stdout)["ok"] is True


def test_queue_pause_and_resume(db_url: str) -> None:
    assert "Paused queue 'mail'" in invoke(db_url, "queue", "pause", "mail").stdout
    assert "already paused" in invoke(db_url, "queue", "pause", "mail").stdout
    assert invoke(db_url, "queue", "paused").stdout.split() == ["mail"]
    assert "Resumed queue 'mail'" in invoke(db_url, "queue", "resume", "mail").stdout
    assert errands.api.paused_queues() == []


def test_dashboard_refuses_to_start_without_authentication(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", db_url, "dashboard"])
    assert result.exit_code == 2
    assert "ERRANDS_DASHBOARD_PASSWORD" in result.output


def test_dashboard_refuses_no_auth_beyond_localhost(db_url: str) -> None:
    args = ["--database-url", db_url, "dashboard", "--insecure-no-auth", "--host", "0.0.0.0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "refusing to serve" in result.output


def test_settings_never_print_secrets() -> None:
    env = {"ERRANDS_DASHBOARD_PASSWORD": "hunter2"}
    url = "postgresql://app:s3cret@db/app"
    for args in (["settings"], ["settings", "--json"]):
        output = invoke(url, *args, env=env).output
        assert "hunter2" not in output and "s3cret" not in output
        assert "***" in output
