"""``errands check``: stored jobs and schedule entries the current code cannot run
(issue 21, item 6), on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dashboard_rows import enqueue

from errands import checking
from errands.backends import Backend
from test_cli import invoke

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state

IMPORTS = ["--import", "sample_jobs", "--import", "alias_jobs", "--import", "check_jobs"]


def run_check(url: str, *args: str, schedule: list[Any] | None = None) -> tuple[int, Any]:
    env = {"ERRANDS_SCHEDULE": json.dumps(schedule)} if schedule is not None else {}
    result = invoke(url, *IMPORTS, "check", "--json", *args, env=env)
    return result.exit_code, json.loads(result.output)


def test_all_jobs_load(db_url: str, backend: Backend) -> None:
    enqueue(backend, 2, job_class="sample_jobs.Echo")
    enqueue(backend, job_class="alias_jobs_old.Greet", parameters={"args": ["x"], "kwargs": {}})
    result = invoke(db_url, *IMPORTS, "check")
    assert result.exit_code == 0, result.output
    assert "OK: all 3 pending or scheduled jobs and 0 schedule entries load" in result.output


def test_jobs_and_entries_that_cannot_run_are_listed_by_class(
    db_url: str, backend: Backend
) -> None:
    gone = enqueue(backend, 2, job_class="myapp.jobs.Gone")
    extra = enqueue(
        backend, job_class="sample_jobs.Echo", parameters={"args": [1, 2], "kwargs": {}}
    )
    enqueue(backend, job_class="alias_jobs.Greet", parameters={"args": ["x"], "kwargs": {"nom": 1}})
    enqueue(backend, job_class="check_jobs.broken.Job", delay=3600)  # scheduled jobs too
    enqueue(backend, job_class="sample_jobs.Echo")  # fine
    schedule = [
        ["sample_jobs.Echo", "@daily", {"args": [1]}],
        ["myapp.jobs.Gone", "@hourly"],
        ["alias_jobs_old.Greet", "@daily"],  # the alias loads; a name is missing
        ["sample_jobs.Echo", "not cron", {"args": [1]}],
    ]
    code, report = run_check(db_url, schedule=schedule)
    assert code == 1
    assert (report["ok"], report["jobs_checked"], report["jobs_failing"]) == (False, 6, 5)
    groups = {g["job_class"]: g for g in report["jobs"]}
    assert groups["myapp.jobs.Gone"]["count"] == 2
    assert "not registered" in groups["myapp.jobs.Gone"]["problem"]
    assert set(groups["myapp.jobs.Gone"]["uuids"]) == {str(r.uuid) for r in gone}
    assert groups["sample_jobs.Echo"]["uuids"] == [str(extra[0].uuid)]
    assert "too many positional arguments" in groups["sample_jobs.Echo"]["problem"]
    assert "unexpected keyword argument 'nom'" in groups["alias_jobs.Greet"]["problem"]
    assert (
        "RuntimeError: check_jobs.broken cannot be imported"
        in (groups["check_jobs.broken.Job"]["problem"])
    )
    entries = {e["position"]: e["problem"] for e in report["schedule"]}
    assert set(entries) == {1, 2, 3}
    assert "not registered" in entries[1]
    assert "missing a required argument: 'name'" in entries[2]
    assert "not a 5-field cron expression" in entries[3]


def test_a_large_backlog_is_read_in_pages_and_counted(
    db_url: str, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checking, "PAGE_SIZE", 3)
    enqueue(backend, 8, job_class="myapp.jobs.Gone")
    enqueue(backend, 2, job_class="sample_jobs.Echo")
    code, report = run_check(db_url, "--show", "2")
    assert code == 1 and report["jobs_checked"] == 10
    (group,) = report["jobs"]
    assert group["count"] == 8 and len(group["uuids"]) == 2
    text = invoke(db_url, *IMPORTS, "check", "--show", "1").output
    assert "myapp.jobs.Gone: 8 jobs: not registered" in text
    assert "... 7 more (errands requests --job-class myapp.jobs.Gone)" in text


def test_check_imports_nothing_a_worker_would_not(db_url: str, backend: Backend) -> None:
    # alias_jobs_old raises on import; os.path is outside the import setting.
    enqueue(backend, job_class="alias_jobs_old.Other")
    enqueue(backend, job_class="os.path.Thing")
    code, report = run_check(db_url)
    assert code == 1
    assert {g["job_class"] for g in report["jobs"]} == {"alias_jobs_old.Other", "os.path.Thing"}
    assert all("not registered" in g["problem"] for g in report["jobs"])
