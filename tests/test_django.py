"""The Django integration, in a real project (tests/django_project) on PostgreSQL and SQLite.

Django is only ever set up in subprocesses (manage.py and scenarios.py), so it
cannot leak into the other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import errands
from conftest import SERVER_URL

PROJECT = Path(__file__).parent / "django_project"


class Project:
    """Runs the test project's commands with a given database."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=PROJECT,
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("manage.py", *args, check=check)

    def scenario(self, name: str) -> None:
        assert f"scenario {name} passed" in self.run("scenarios.py", name).stdout


def base_environ() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ERRANDS_", "PROJECT_"))}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT), environ.get("PYTHONPATH", "")) if p
    )
    return environ


@pytest.fixture(params=["postgresql", "sqlite"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """The project on a fresh database of each kind, migrated by Django's ``migrate``."""
    environ = base_environ()
    if request.param == "sqlite":
        environ.update(PROJECT_DB_ENGINE="sqlite", PROJECT_DB_NAME=str(tmp_path / "db.sqlite3"))
        environ["PROJECT_TEST_DB_NAME"] = str(tmp_path / "test.sqlite3")
        yield _migrated(Project(environ))
        return
    name = f"errands_django_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    environ.update(PROJECT_DB_ENGINE="postgresql", PROJECT_DB_NAME=name)
    try:
        yield _migrated(Project(environ))
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            for dropped in (name, f"test_{name}"):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dropped)
                    )
                )


def _migrated(project: Project) -> Project:
    output = project.manage("migrate", "--no-input").stdout
    assert "Applied errands schema versions" in output, output
    return project


@pytest.mark.slow
def test_django_migrate_creates_errands_tables_in_djangos_database(project: Project) -> None:
    project.scenario("schema")


@pytest.mark.slow
def test_django_tasks_run_on_errands_with_results(project: Project) -> None:
    project.scenario("django_tasks")


@pytest.mark.slow
def test_jobs_join_djangos_transaction_and_take_model_instances(project: Project) -> None:
    project.scenario("jobs_join_transactions")


@pytest.mark.slow
def test_dashboard_is_mounted_for_staff_only(project: Project) -> None:
    project.scenario("dashboard")


@pytest.mark.slow
def test_management_command_runs_the_errands_cli(project: Project) -> None:
    helped = project.manage("errands", "--help").stdout
    assert "worker" in helped and "migrate" in helped
    stats = project.manage("errands", "stats", "--json").stdout
    assert '"queues"' in stats
    failed = project.manage("errands", "get", "not-a-uuid", check=False)
    assert failed.returncode != 0 and "not-a-uuid" in failed.stderr


@pytest.mark.slow
def test_tasks_wait_for_the_commit_when_errands_has_its_own_database(
    project: Project, tmp_path: Path
) -> None:
    errands_url = f"sqlite:///{tmp_path / 'errands-own.db'}"
    project.environ["PROJECT_ERRANDS_URL"] = errands_url
    project.manage("errands", "migrate")
    project.scenario("separate_database")


@pytest.mark.slow
def test_djangos_test_runner_gets_errands_tables_in_the_test_database(project: Project) -> None:
    done = project.manage("test", "shop", "--no-input", check=False)
    assert done.returncode == 0 and "OK" in done.stderr, done.stdout + done.stderr


def test_database_urls_come_from_djangos_connection_settings() -> None:
    from errands.contrib.django import conf  # no Django setup needed for these helpers

    params = {
        "USER": "app user",
        "PASSWORD": "p@ss:word",
        "HOST": "db.example",
        "PORT": 6432,
        "NAME": "shop",
        "OPTIONS": {"sslmode": "require", "pool": True},
    }
    assert conf._postgres_url(params) == (
        "postgresql://app%20user:p%40ss%3Aword@db.example:6432/shop?sslmode=require"
    )
    assert conf._postgres_url({"NAME": "shop"}) == "postgresql:///shop"
    assert conf._sqlite_url("default", {"NAME": "relative.db"}).startswith("sqlite:////")
    with pytest.raises(errands.ConfigurationError, match="in-memory"):
        conf._sqlite_url("default", {"NAME": ":memory:"})
