"""Every snippet of the README runs here, as a reader would run it.

Each fenced block of README.md (and docs/opentelemetry.md) written in a language a
reader runs (python, bash, console, toml, yaml) is named below by a piece of its text:
either a test runs it (``RUN``) or it is listed with the reason it cannot run
(``NOT_RUN``), and ``test_every_snippet_is_run_or_listed`` fails for a block that is
neither, so a snippet added without a test is caught. Blocks run against a real
SQLite file in a temporary directory, and PostgreSQL where the snippet needs it;
shell blocks run through bash or as real ``errands`` processes, one-shot commands
through click's CliRunner.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import importlib
import inspect
import io
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import tomllib
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

import errands
from errands import serialization, settings, testing
from errands.backends import open_backend
from errands.cli import cli
from errands.models import WorkerInfo
from errands.registry import register_job

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPENTELEMETRY = ROOT / "docs" / "opentelemetry.md"
RUNNABLE = {"python", "bash", "console", "toml", "yaml"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their language and first line."""
    blocks = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            end = lines.index("```", i + 1)
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(path, i + 1, match.group(1), code))
            i = end
        i += 1
    return blocks


def settings_rows(directory: Path, pyproject: str) -> dict[str, str]:
    """``errands settings`` run in ``directory`` with this pyproject.toml: its line for
    each setting, by name."""
    (directory / "pyproject.toml").write_text(pyproject)
    done = subprocess.run(
        ["errands", "settings"],
        cwd=directory,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {line.split()[0]: line for line in done.stdout.splitlines()}


def snippet(marker: str, path: Path = README) -> str:
    """The one runnable block of ``path`` containing ``marker``."""
    found = [b for b in fenced_blocks(path) if b.lang in RUNNABLE and marker in b.code]
    assert len(found) == 1, f"{len(found)} blocks of {path.name} contain {marker!r}"
    return found[0].code


# Which test runs each block (by a piece of its text), or why a block is not run.
RUN = {
    README: {
        "# tasks.py": "test_first_screen_example",
        "# enqueue.py": "test_first_screen_example",
        "errands worker --import tasks &": "test_first_screen_example",
        "# myapp/jobs.py": "test_tutorial_enqueue_on_sqlite",
        "request = SendWelcome(42, now).run_in_worker(": "test_tutorial_enqueue_on_sqlite",
        "errands.enqueue_many([SendWelcome(i, now)": "test_tutorial_enqueue_on_sqlite",
        "export ERRANDS_DATABASE_URL=postgresql://": "test_tutorial_postgres",
        "conn.transaction()": "test_tutorial_postgres",
        "errands worker --import myapp.jobs --queue mail": "test_tutorial_worker_and_results",
        "errands results                 # newest first": "test_tutorial_worker_and_results",
        'errands.results(queue="mail", status="ERRORED")': "test_tutorial_worker_and_results",
        "class Sync(Job):": "test_should_enqueue_limits_to_three",
        "# myapp/limited.py": "test_flow_control_example",
        "# myapp/sync.py": "test_retry_policy_example",
        "# myapp/charge.py": "test_job_context_example",
        "# myapp/api.py": "test_async_producer_example",
        "# myapp/tagged.py": "test_tags_example",
        "# myapp/progress.py": "test_progress_example",
        "# myapp/unique.py": "test_uniqueness_example",
        "queue_limits = { mail = 10 }": "test_queue_limits_from_pyproject",
        'database_pooler = "transaction"': "test_pgbouncer_settings_from_pyproject",
        "# myapp/pipeline.py": "test_workflow_example",
        "ERRANDS_SCHEMA=billing errands migrate": "test_schema_migrate_commands",
        "errands.register_type(": "test_register_type_round_trips",
        "# 9 AM Berlin time, weekdays": "test_schedule_settings_are_valid",
        "heartbeat_timeout = 120": "test_settings_from_pyproject",
        "app = FastAPI()": "test_fastapi_mount_asks_for_the_password",
        "def staff_only(request)": "test_fastapi_mount_with_own_login",
        "with_dashboard(django_application": "test_django_asgi_mount",
        "export ERRANDS_DASHBOARD_PASSWORD": "test_standalone_dashboard_commands",
        "$ errands health --queue emails": "test_health_example_output",
    },
    OPENTELEMETRY: {
        "# myapp/telemetry.py": "test_opentelemetry_setup_module",
    },
}

NOT_RUN = {
    README: {
        "# 1. Install errands": (
            "creates a virtualenv and installs packages from the network; CI runs the"
            " '# 2.' line as it is (.ci/run), tests/test_demo.py runs the demo;"
            " test_install_commands_name_existing_scripts checks what it names"
        ),
        "$ python bench/run.py": (
            "benchmarks that run for minutes on a quiet machine;"
            " test_benchmark_commands_exist checks every option against bench/run.py --help"
        ),
        "pip install 'errands[dashboard]'": (
            "installs from the network; test_extras_in_readme_exist checks every extra the"
            " README installs exists in pyproject.toml"
        ),
        'command: ["errands", "health", "--queue", "emails"]': (
            "a Kubernetes manifest; test_health_example_output checks its command is the"
            " health command it runs"
        ),
        "bash scripts/test --fast": (
            "the development loop: the whole suite and the linters, what CI runs;"
            " test_install_commands_name_existing_scripts checks the scripts exist"
        ),
    },
    OPENTELEMETRY: {},
}


def test_every_snippet_is_run_or_listed() -> None:
    for path in (README, OPENTELEMETRY):
        markers = {**RUN[path], **NOT_RUN[path]}
        blocks = [b for b in fenced_blocks(path) if b.lang in RUNNABLE]
        for block in blocks:
            claimed = [m for m in markers if m in block.code]
            assert len(claimed) == 1, (
                f"{path.name}:{block.line} ({block.lang}) is claimed by {claimed}: name it in"
                " RUN with the test that runs it, or in NOT_RUN with the reason"
            )
        for marker in markers:
            assert sum(marker in b.code for b in blocks) == 1, f"{marker!r} in {path.name}"
    tests = set(globals())
    assert {name for table in RUN.values() for name in table.values()} <= tests


# -- helpers -------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without errands' settings (a new user's shell), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ERRANDS_") or k.startswith("ERRANDS_TEST_")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def commands(block: str) -> list[str]:
    """The command lines of a shell block, comments and prompts removed."""
    lines = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line.startswith("$ "):
            lines.append(line[2:])
        elif line and not line.startswith("#") and not line.startswith("$"):
            lines.append(line)
    return lines


def comment_of(block: str, command: str) -> str:
    line = next(line for line in block.splitlines() if line.startswith(command))
    return line.split("#", 1)[1].strip()


def execute(code: str, namespace: dict[str, Any]) -> str:
    """Run ``code`` in ``namespace``; what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    return out.getvalue()


def migrate(url: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", url, "migrate"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture
def sqlite_url(tmp_path: Path, cli_state_restored: None) -> Iterator[str]:
    """A migrated SQLite file in the test's directory; errands is configured to use it."""
    url = f"sqlite:///{tmp_path / 'errands.sqlite3'}"
    migrate(url)
    errands.configure(database_url=url)
    try:
        yield url
    finally:
        errands.configure(database_url=None)


@pytest.fixture
def myapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The tutorial's package, written from the README in the test's directory."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(snippet("# myapp/jobs.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        yield package
    finally:
        for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
            del sys.modules[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


# -- the first screen ----------------------------------------------------------------


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_first_screen_example(tmp_path: Path) -> None:
    """tasks.py and enqueue.py as printed, then the shell block run by bash."""
    tasks, enqueue = snippet("# tasks.py"), snippet("# enqueue.py")
    assert len(tasks.splitlines()) + len(enqueue.splitlines()) <= 20
    (tmp_path / "tasks.py").write_text(tasks)
    (tmp_path / "enqueue.py").write_text(enqueue)
    shell = snippet("errands worker --import tasks &")
    expected = comment_of(shell, "python enqueue.py").removeprefix("prints: ")
    done = subprocess.run(
        ["bash", "-c", shell + "wait\n"],  # wait: the worker's exit, for its status
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert expected == "SUCCESSFUL hello, Ada"
    assert done.stdout.splitlines()[-1] == expected, done.stdout + done.stderr
    assert (tmp_path / "errands.sqlite3").exists()
    assert "tasks.Greet" in done.stderr  # the worker's banner (stderr) lists the job


def test_install_commands_name_existing_scripts() -> None:
    install = snippet("# 1. Install errands")
    development = snippet("bash scripts/test --fast")
    for script in re.findall(r"bash (scripts/[\w.-]+)", install + development):
        assert (ROOT / script).is_file(), script
    assert "errands demo" in install


def test_extras_in_readme_exist() -> None:
    """Every extra the README installs exists, and every extra is in its table."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    text = README.read_text()
    mentioned = set()
    for group in re.findall(r"pip install '(?:errands|\.)\[([\w,]+)\]'", text):
        mentioned.update(group.split(","))
    assert mentioned, "no pip install of an extra found"
    assert mentioned <= set(extras)
    install = text[text.index("### 0. Install") : text.index("### 1. Define a job")]
    table = set(re.findall(r"^\| `(\w+)` \|", install, flags=re.MULTILINE))
    assert table == set(extras), "the README's table of extras is not pyproject.toml's"


# -- the tutorial --------------------------------------------------------------------


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_tutorial_enqueue_on_sqlite(sqlite_url: str, myapp: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "tutorial"}
    printed = execute(snippet("request = SendWelcome(42, now).run_in_worker("), namespace)
    request = namespace["request"]
    assert printed.strip() == str(request.uuid)
    stored = errands.get(request.uuid)
    assert isinstance(stored, errands.JobRequest)
    assert stored.job_class == "myapp.jobs.SendWelcome"
    assert (stored.queue, stored.priority, stored.retries) == ("mail", 5, 3)
    assert stored.concurrency_key == "user-42"
    assert stored.start_at - stored.created_at >= datetime.timedelta(seconds=59)
    # Again: the concurrency key is taken, so the README's other branch prints.
    printed = execute(snippet("request = SendWelcome(42, now).run_in_worker("), namespace)
    assert printed.strip() == "skipped: user-42 already has one queued"

    execute(snippet("errands.enqueue_many([SendWelcome(i, now)"), namespace)
    assert len(errands.requests(queue="mail", limit=20_000)) == 10_001


def test_tutorial_postgres(
    empty_pg_url: str, myapp: Path, monkeypatch: pytest.MonkeyPatch, cli_state_restored: None
) -> None:
    """Step 2 with ERRANDS_DATABASE_URL exported, then enqueueing in one's own transaction."""
    shell = snippet("export ERRANDS_DATABASE_URL=postgresql://")
    lines = commands(shell)
    assert lines[0].startswith("export ERRANDS_DATABASE_URL=")
    monkeypatch.setenv("ERRANDS_DATABASE_URL", empty_pg_url)  # the test's own database
    outputs = []
    for line in lines[1:] + lines[1:2]:  # migrate twice: "safe to run repeatedly"
        settings.reset()
        result = CliRunner().invoke(cli, shlex.split(line)[1:], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "Applied schema version(s) 1, 2, 3, 4, 5, 6" in outputs[0]
    assert "CREATE TABLE" in outputs[1]
    assert "Applied" not in outputs[2]

    settings.reset()
    with psycopg.connect(empty_pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id integer PRIMARY KEY, email text)")
    namespace: dict[str, Any] = {
        "SendWelcome": importlib.import_module("myapp.jobs").SendWelcome,
        "now": datetime.datetime.now(datetime.UTC),
    }
    execute(snippet("conn.transaction()"), namespace)
    [request] = errands.requests(job_class="myapp.jobs.SendWelcome")
    assert request.parameters["args"][0] == 43
    with psycopg.connect(empty_pg_url) as conn:
        assert conn.execute("SELECT email FROM users WHERE id = 43").fetchone() == (
            "ada@example.com",
        )


def json_output_keys() -> dict[str, set[str]]:
    """The keys the README's "JSON output" section lists, by kind of row."""
    keys = {}
    for item in re.split(r"\n- ", section("JSON output"))[1:]:
        kind, _, listed = item.partition(": ")
        keys[kind] = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", listed)))
    return keys


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_tutorial_worker_and_results(sqlite_url: str, myapp: Path, tmp_path: Path) -> None:
    """Step 4's worker command as a real process, then step 5's commands and loop."""
    from myapp.jobs import SendWelcome  # written from the README by the fixture

    now = datetime.datetime.now(datetime.UTC)
    welcomed = SendWelcome(1, now).run_in_worker()
    broken = SendWelcome(7, "yesterday").run_in_worker()  # run() cannot format a str
    assert welcomed and broken

    [line] = commands(snippet("errands worker --import myapp.jobs --queue mail"))
    worker = subprocess.Popen(
        shlex.split(line),
        cwd=tmp_path,
        env=clean_env(ERRANDS_DATABASE_URL=sqlite_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ok = errands.wait_for_result(welcomed.uuid, timeout=60)
        failed = errands.wait_for_result(broken.uuid, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    assert ok.status == errands.Status.SUCCESSFUL
    assert f"welcome, user 1 (signed up {now:%Y-%m-%d})" in output
    assert failed.status == errands.Status.ERRORED

    outputs = {}
    for line in commands(snippet("errands results                 # newest first")):
        args = [str(failed.uuid) if a == "3f1c..." else a for a in shlex.split(line)[1:]]
        result = CliRunner().invoke(cli, ["--database-url", sqlite_url, *args])
        assert result.exit_code == 0, (line, result.output)
        outputs[args[0] + (" --json" if "--json" in args else "")] = result.output
    assert str(ok.uuid) in outputs["results"] and str(failed.uuid) in outputs["results"]
    [shown] = json.loads(outputs["results --json"])
    assert (shown["uuid"], shown["status"]) == (str(failed.uuid), "ERRORED")
    assert "ValueError" in shown["error_type"]
    assert "Traceback" in outputs["get"]
    keys = json_output_keys()
    assert set(shown) == keys["every row"] | keys["results"]
    requests = CliRunner().invoke(cli, ["--database-url", sqlite_url, "requests", "--json"])
    assert {frozenset(row) for row in json.loads(requests.output)} == {
        frozenset(keys["every row"] | keys["requests"])
    }
    [retried] = [r for r in errands.requests(queue="mail") if r.retry_attempt == 1]
    assert f"request {retried.uuid}" in outputs["retry"]

    printed = execute(snippet('errands.results(queue="mail", status="ERRORED")'), {})
    assert printed.startswith("myapp.jobs.SendWelcome ValueError Traceback"), printed
    assert "Traceback" in printed


OUTSIDE_MODULE = """
import pathlib

from errands import Job, register_job

pathlib.Path("outside-imported").write_text("a worker imported me")


@register_job
class Outside(Job):
    def run(self) -> str:
        return "ran"
"""


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_worker_imports_nothing_outside_the_import_setting(
    sqlite_url: str, myapp: Path, tmp_path: Path
) -> None:
    """What step 1 says: a stored path outside the `import` setting ends ERRORED with
    JobNotRegistered, and its module is never imported (even one the worker could find)."""
    (tmp_path / "outside.py").write_text(OUTSIDE_MODULE)
    with contextlib.closing(sqlite3.connect(tmp_path / "errands.sqlite3")) as conn, conn:
        conn.execute(
            "INSERT INTO errands_request (uuid, created_at, start_at, job_class, parameters,"
            " queue, priority) VALUES (?, ?, ?, 'outside.Outside', ?, 'default', 0)",
            (str(uuid.uuid4()), time.time() - 1, time.time() - 1, '{"args": [], "kwargs": {}}'),
        )
    worker = subprocess.Popen(
        ["errands", "worker", "--import", "myapp.jobs"],
        cwd=tmp_path,
        env=clean_env(ERRANDS_DATABASE_URL=sqlite_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: errands.results(job_class="outside.Outside"), timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    [result] = errands.results(job_class="outside.Outside")
    assert result.status == errands.Status.ERRORED, output
    assert result.error_type == "errands.errors.JobNotRegistered"
    assert not (tmp_path / "outside-imported").exists()


# -- job methods, parameters, schedules and settings ---------------------------------------


def test_should_enqueue_limits_to_three(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_sync"}
    execute(snippet("class Sync(Job):"), namespace)
    Sync = namespace["Sync"]
    requests = [Sync().run_in_worker() for _ in range(5)]
    assert [r is not None for r in requests] == [True, True, True, False, False]
    assert len(errands.requests(concurrency_key="sync")) == 3


def test_flow_control_example(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_limited"}
    execute(snippet("# myapp/limited.py"), namespace)
    stored = {r.job_class.rsplit(".", 1)[1]: r.limits for r in errands.requests()}
    assert len(errands.requests()) == 3
    assert stored["CallPartnerApi"] == (errands.Limit("partner-api", concurrency=10, rate="20/s"),)
    keys = {r.limits[0].key for r in errands.requests(job_class="readme_limited.ImportCustomer")}
    assert keys == {"import:42", "bulk-import"}


def test_uniqueness_example(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_unique"}
    execute(snippet("# myapp/unique.py"), namespace)
    stored = {(r.job_class.rsplit(".", 1)[1], r.concurrency_key): r for r in errands.requests()}
    assert len(stored) == 4
    sync = stored[("SyncAccount", "errands.unique:account:7")]
    assert sync.parameters["args"][1] == ["name"]
    assert ("DailyDigest", "errands.unique:digest") in stored
    assert ("RebuildIndex", "errands.unique:orders") in stored


def test_retry_policy_example(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_sync"}
    execute(snippet("# myapp/sync.py"), namespace)
    sync = namespace["SyncContacts"]
    assert (sync.retry_on, sync.fail_on) == (
        (ConnectionError, TimeoutError),
        (namespace["AccountClosed"],),
    )
    assert sync(1).calculate_retry_delay(1) == pytest.approx(2, rel=0.11)
    assert sync(1).calculate_retry_delay(9) <= 300
    with testing.immediate() as recorder:
        sync(-1).run_in_worker()
        (result,) = recorder.results
    assert (result.status, result.error) == ("ERRORED", "the account was deleted")
    assert result.retry_request_uuid is None


def test_job_context_example(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_charge"}
    execute(snippet("# myapp/charge.py"), namespace)
    with testing.immediate() as recorder:
        namespace["Charge"](7).run_in_worker(retries=2)
        (result,) = recorder.results
    assert result.return_value == "order 7: attempt 1 of 3"


@pytest.mark.slow  # a PostgreSQL database of its own
def test_async_producer_example(empty_pg_url: str) -> None:
    import asyncio

    from errands.backends.postgres.async_enqueue import close_pools

    errands.configure(database_url=empty_pg_url)
    errands.backend().migrate()
    jobs_module = types.ModuleType("myapp.jobs")
    exec(  # a job module of the application the snippet imports from
        "from errands import Job, register_job\n"
        "@register_job\n"
        "class SendWelcome(Job):\n"
        "    def __init__(self, user_id: int) -> None:\n"
        "        self.user_id = user_id\n"
        "    def run(self) -> None:\n"
        "        pass\n",
        jobs_module.__dict__,
    )
    saved = {name: sys.modules.get(name) for name in ("myapp", "myapp.jobs")}
    sys.modules.setdefault("myapp", types.ModuleType("myapp"))
    sys.modules["myapp.jobs"] = jobs_module
    namespace: dict[str, Any] = {"__name__": "readme_api"}
    try:
        execute(snippet("# myapp/api.py"), namespace)

        async def scenario() -> None:
            async with await psycopg.AsyncConnection.connect(empty_pg_url) as conn:
                await conn.execute("CREATE TABLE users (id int)")
                await conn.commit()
                await namespace["sign_up"](conn, 1)
                await conn.rollback()  # no user, so no job
                await namespace["sign_up"](conn, 2)
                await conn.commit()
            await namespace["welcome_everyone"]([3, 4])
            await close_pools()

        asyncio.run(scenario())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    ids = sorted(r.parameters["args"][0] for r in errands.requests())
    assert ids == [2, 3, 4]


def test_tags_example(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_tagged"}
    execute(snippet("# myapp/tagged.py"), namespace)
    (request,) = namespace["billing"]
    assert list(request.tags) == ["billing", "tenant:acme"]
    assert request.meta == {"requested_by": "ops"}
    assert errands.requests(tag="tenant:other") == []


def test_progress_example(sqlite_url: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_progress"}
    execute(snippet("# myapp/progress.py"), namespace)
    job = namespace["ImportRows"](["a", "b", "c"])
    assert job.run() == 3  # outside a worker, report_progress does nothing


@pytest.mark.slow  # an errands process
def test_queue_limits_from_pyproject(tmp_path: Path) -> None:
    rows = settings_rows(tmp_path, snippet("queue_limits = { mail = 10 }"))
    assert "mail" in rows["queue_limits"] and "10" in rows["queue_limits"]


@pytest.mark.slow  # runs errands settings as a process
def test_pgbouncer_settings_from_pyproject(tmp_path: Path) -> None:
    rows = settings_rows(tmp_path, snippet('database_pooler = "transaction"'))
    assert "transaction" in rows["database_pooler"]
    assert "postgresql://app@db:5432/app" in rows["listen_database_url"]
    assert "pgbouncer:6432" in rows["database_url"]


@pytest.mark.slow  # runs errands migrate as processes
def test_schema_migrate_commands(empty_pg_url: str, tmp_path: Path) -> None:
    env = {**clean_env(), "ERRANDS_DATABASE_URL": empty_pg_url}
    done = subprocess.run(
        ["bash", "-c", snippet("ERRANDS_SCHEMA=billing errands migrate")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(empty_pg_url) as conn:
        found = conn.execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'errands_request' ORDER BY 1"
        ).fetchall()
    assert [row[0] for row in found] == ["billing", "mailer"]


def test_workflow_example() -> None:
    namespace: dict[str, Any] = {"__name__": "readme_pipeline"}
    with testing.capture() as recorder:
        execute(snippet("# myapp/pipeline.py"), namespace)
        results = recorder.drain()
    by_class: dict[str, list[Any]] = {}
    for result in results:
        assert result.status == "SUCCESSFUL", result
        by_class.setdefault(result.job_class.rsplit(".", 1)[1], []).append(result.return_value)
    # "words fetched from <url>" is 4 words: the stats are 4 * i, Notify their sum.
    assert by_class["Notify"] == [4 * sum(range(10))] * 2
    assert sorted(by_class["Stat"]) == sorted([4 * i for i in range(10)] * 2)
    assert by_class["CleanUp"] == ["cleaned"]


class User:
    """An ORM model, for the README's register_type example."""

    rows: dict[int, User] = {}

    def __init__(self, id: int, name: str) -> None:
        self.id, self.name = id, name
        User.rows[id] = self

    @classmethod
    def get(cls, id: int) -> User:
        return cls.rows[id]


@register_job
class Greeting(errands.Job):
    def __init__(self, user: User) -> None:
        self.user = user

    def run(self) -> str:
        return f"hello, {self.user.name}"


def test_register_type_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter of the registered type is stored by primary key and loaded again."""
    models = types.ModuleType("myapp.models")
    models.User = User  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", types.ModuleType("myapp"))
    monkeypatch.setitem(sys.modules, "myapp.models", models)
    ada = User(42, "Ada")
    try:
        execute(snippet("errands.register_type("), {})
        assert serialization.encode(ada) == {"__errands__": "user", "value": 42}
        with testing.immediate() as jobs:
            Greeting(ada).run_in_worker()
        [result] = jobs.results
        assert result.parameters["args"] == [{"__errands__": "user", "value": 42}]
        assert result.return_value == "hello, Ada"
    finally:
        serialization._custom_codecs.pop("user", None)


def write_schedule_jobs(package: Path) -> None:
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(
        textwrap.dedent(
            """
            from errands import Job, register_job

            @register_job
            class DailyReport(Job):
                def run(self): ...

            @register_job
            class Cleanup(Job):
                def __init__(self, days: int):
                    self.days = days

                def run(self): ...

            @register_job
            class Invoice(Job):
                def run(self): ...
            """
        )
    )


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_schedule_settings_are_valid(tmp_path: Path) -> None:
    """The schedule table, as a project's pyproject.toml, passes `errands schedule check`,
    and with the `words` extra its rules read as the README's table of extras says."""
    (tmp_path / "pyproject.toml").write_text(snippet("# 9 AM Berlin time, weekdays"))
    write_schedule_jobs(tmp_path / "myapp")
    done = subprocess.run(
        ["errands", "schedule", "check"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 schedule entries are valid" in done.stdout
    assert "myapp.jobs.DailyReport: At 09:00 AM, Monday through Friday (Europe/Berlin)" in (
        done.stdout
    )
    assert "At 09:00 AM, Monday through Friday" in README.read_text()


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_settings_from_pyproject(tmp_path: Path) -> None:
    rows = settings_rows(tmp_path, snippet("heartbeat_timeout = 120"))
    source = f"[tool.errands] in {tmp_path / 'pyproject.toml'}"
    assert "postgresql://app@db/app" in rows["database_url"] and source in rows["database_url"]
    assert "myapp.jobs" in rows["import"] and source in rows["import"]
    assert "120" in rows["heartbeat_timeout"] and source in rows["heartbeat_timeout"]


# -- the dashboard -------------------------------------------------------------------


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_fastapi_mount_asks_for_the_password(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    monkeypatch.setenv("ERRANDS_DASHBOARD_PASSWORD", "a long random string")
    namespace: dict[str, Any] = {}
    execute(snippet("app = FastAPI()"), namespace)
    client = TestClient(namespace["app"], base_url="http://localhost")
    first = client.get("/errands/", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"].startswith("/errands/login")
    login = client.get("/errands/login")
    assert login.status_code == 200 and "Log in" in login.text


def test_fastapi_mount_with_own_login(sqlite_url: str) -> None:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    import errands.dashboard

    namespace: dict[str, Any] = {
        "app": FastAPI(),
        "errands": errands,
        "is_staff": lambda session: session == "staff-session",
    }
    execute(snippet("def staff_only(request)"), namespace)
    client = TestClient(namespace["app"], base_url="http://localhost")
    assert client.get("/errands/", follow_redirects=False).status_code != 200
    client.cookies.set("session", "staff-session")
    page = client.get("/errands/", follow_redirects=False)
    assert page.status_code == 200 and "<title>Overview" in page.text
    assert errands.dashboard  # imported as the snippet's context


DJANGO_CHECK = """
import asyncio, httpx, sys
namespace = {}
exec(compile(sys.stdin.read(), "asgi.py", "exec"), namespace)

async def main():
    transport = httpx.ASGITransport(app=namespace["application"])
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        for path in ["/errands/", "/errands/login", "/elsewhere/"]:
            response = await client.get(path)
            print(path, response.status_code, "Content-Security-Policy" in response.headers)

asyncio.run(main())
"""


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_django_asgi_mount(tmp_path: Path) -> None:
    """Django is set up in a subprocess (tests/django_project), as test_django does."""
    errands_url = f"sqlite:///{tmp_path / 'errands.sqlite3'}"
    migrate(errands_url)
    settings.reset()
    project = ROOT / "tests" / "django_project"
    env = clean_env(
        DJANGO_SETTINGS_MODULE="project.settings",
        PROJECT_DB_NAME=str(tmp_path / "django.sqlite3"),
        PROJECT_ERRANDS_URL=errands_url,
        PYTHONPATH=os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_CHECK],
        input=snippet("with_dashboard(django_application"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "/errands/ 403 False"  # the dashboard: not a staff session
    assert lines[1] == "/errands/login 200 True"  # the dashboard's own page
    assert lines[2] == "/elsewhere/ 404 False"  # Django


@contextlib.contextmanager
def serving(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[int]:
    """A real `errands dashboard` process on a free port (replacing --port if given)."""
    port = free_port()
    if "--port" in args:
        args[args.index("--port") + 1] = str(port)
    else:
        args = [*args, "--port", str(port)]
    server = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def answers() -> bool:
        assert server.poll() is None, server.communicate()[0]
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_until(answers)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_standalone_dashboard_commands(sqlite_url: str, tmp_path: Path) -> None:
    """Each `errands dashboard` line as a real server (on a free port), asked for a page."""
    lines = commands(snippet("export ERRANDS_DASHBOARD_PASSWORD"))
    password = shlex.split(lines[0])[1].split("=", 1)[1]
    assert password == "a long random string"
    env = clean_env(ERRANDS_DATABASE_URL=sqlite_url, ERRANDS_DASHBOARD_PASSWORD=password)
    pages = []
    for line in lines[1:]:
        with serving(shlex.split(line), tmp_path, env) as port:
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            pages.append((page.status_code, page.headers.get("location", ""), page.text))
    (asks, to_login, _), (asks_too, to_login_too, _), (shown, _, overview) = pages
    assert (asks, asks_too) == (303, 303), "the password is asked for"
    assert to_login.startswith("/login") and to_login_too.startswith("/login")
    assert "--insecure-no-auth" in lines[3]
    assert shown == 200 and "<title>Overview" in overview


# -- the reference tables ----------------------------------------------------------------


def section(title: str) -> str:
    """The README's text under ``## title``, up to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def first_cells(table_text: str) -> list[str]:
    rows = [line for line in table_text.splitlines() if line.startswith("| ")]
    return [re.split(r"(?<!\\)\|", row)[1].strip() for row in rows[2:]]


def test_cli_table_matches_the_commands() -> None:
    """Every command and option of the CLI table exists (in its --help), and every
    command of `errands` is in the table."""
    listed = set()
    for cell in first_cells(section("CLI")):
        for span in re.findall(r"`(errands [^`]+)`", cell):
            words = []
            for token in span.replace("\\|", "|").split()[1:]:
                if not re.fullmatch(r"[a-z]+(\|[a-z]+)*", token):
                    break
                words.append(token.split("|"))
            variants = [[]] if not words else [[w] for w in words[0]]
            for more in words[1:]:
                variants = [[*v, w] for v in variants for w in more]
            for command in variants:
                listed.add(command[0])
                shown = CliRunner().invoke(cli, [*command, "--help"])
                assert shown.exit_code == 0, (command, shown.output)
                for option in re.findall(r"--[a-z][a-z-]*", span):
                    assert option in shown.output, (command, option)
    hidden = {"pause", "resume"}  # short forms of `queue pause|resume`, said in the table
    assert set(cli.commands) - hidden <= listed, set(cli.commands) - hidden - listed
    assert "`errands pause\\|resume NAME` are short forms" in section("CLI")


def cells(table_text: str, column: int) -> list[str]:
    rows = [line for line in table_text.splitlines() if line.startswith("| ")]
    return [re.split(r"(?<!\\)\|", row)[column + 1].strip() for row in rows[2:]]


def test_settings_table_matches_the_settings(
    cli_state_restored: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every setting is in the table, and a default written as a value is the default."""
    monkeypatch.chdir(tmp_path)  # no pyproject.toml
    for name in [n for n in os.environ if n.startswith("ERRANDS_")]:
        monkeypatch.delenv(name)
    shown = CliRunner().invoke(cli, ["settings", "--json"])
    assert shown.exit_code == 0, shown.output
    defaults = json.loads(shown.output)
    names = set()
    table = section("Settings")
    for cell, default in zip(cells(table, 0), cells(table, 1), strict=True):
        listed = re.findall(r"`(\w+)`", cell)
        names.update(listed)
        literal = re.match(r"`([^`]*)`", default)
        if len(listed) == 1 and literal:
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(literal.group(1))
                assert defaults[listed[0]] == value, (listed[0], value)
    assert names == set(defaults)


def test_job_methods_table_matches_job() -> None:
    class Plain(errands.Job):
        def run(self) -> None: ...

    job = Plain()
    table = section("Job methods")
    for cell, default in zip(cells(table, 0), cells(table, 1), strict=True):
        [(name, arguments)] = re.findall(r"`(\w+)\(([^)]*)\)`", cell)
        method = getattr(errands.Job, name)
        parameters = list(inspect.signature(method).parameters)[1:]
        assert parameters == [a for a in arguments.split(", ") if a], name
        if not arguments and name != "run":
            assert getattr(job, name)() == ast.literal_eval(default.strip("`")), name
    assert job.calculate_retry_delay(1) == 0


def test_python_api_table_matches_the_api() -> None:
    import errands.api

    for cell in first_cells(section("Python API")):
        owner: Any = errands
        for name, arguments in re.findall(r"`(?:errands\.)?([\w.]+)(?:\(([^)]*)\))?`", cell):
            if name.startswith("api."):
                owner, name = errands.api, name.removeprefix("api.")
            function = getattr(owner, name)
            parameters = inspect.signature(function).parameters
            for argument in re.findall(r"(\w+)=?", arguments):
                if argument not in {"settings", "None"}:
                    assert argument in parameters, (name, argument)


# -- monitoring and performance ---------------------------------------------------------


def test_health_example_output(
    empty_pg_url: str, sqlite_url: str, cli_state_restored: None
) -> None:
    """The health example's lines, exactly, on PostgreSQL with two workers on 'emails';
    the schema versions the README states are each database's current one."""
    console = snippet("$ errands health --queue emails")
    text = " ".join(section("Monitoring").split())
    stated = re.search(r"current schema version is (\d+) \(SQLite's is (\d+)\)", text)
    assert stated, "the README says which schema version is current"
    migrate(empty_pg_url)
    backend = open_backend(empty_pg_url)
    sqlite = open_backend(sqlite_url)
    try:
        assert backend.latest_schema_version() == int(stated.group(1))
        assert sqlite.latest_schema_version() == int(stated.group(2))
        assert f"schema version {stated.group(1)}," in console
        for pid in (1, 2):
            worker = WorkerInfo(worker_id=uuid.uuid4(), hostname="h", pid=pid, queues=["emails"])
            backend.register_worker(worker=worker)
    finally:
        backend.close()
        sqlite.close()
    lines = console.splitlines()
    for command, shown in zip(lines[::2], lines[1::2], strict=True):
        args = shlex.split(command.removeprefix("$ "))[1:]
        result = CliRunner().invoke(cli, ["--database-url", empty_pg_url, *args])
        assert result.output.strip() == shown, command
        assert result.exit_code == (0 if shown.startswith("ok:") else 1)
    probe = snippet('command: ["errands", "health", "--queue", "emails"]')
    [probed] = re.findall(r"command: (\[.*\])", probe)
    assert json.loads(probed) == shlex.split(lines[0].removeprefix("$ "))


@pytest.mark.slow  # real processes or servers, or 0.3 s or more
def test_benchmark_commands_exist() -> None:
    """The benchmark runs for minutes, so its commands are checked against its --help."""
    console = snippet("$ python bench/run.py")
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    options = set(re.findall(r"(--[a-z-]+)", console))
    assert options >= {"--database-url", "--quick", "--json", "--only"}
    for option in options:
        assert option in done.stdout, option
    # --help: sqlite:////abs/dir/name.db; sqlite:///tmp/... would be ./tmp/...
    for url in re.findall(r"sqlite:/+\S+", console):
        assert url.startswith("sqlite:////") and "sqlite:////" in done.stdout, url
    for only in re.findall(r"--only ([\w,]+)", console + README.read_text()):
        for name in only.split(","):
            assert name in done.stdout, name


TELEMETRY_CHECK = """
import sys, types
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

exported = []

class OTLPSpanExporter(SpanExporter):  # stands in for the OTLP exporter's package
    def export(self, spans):
        exported.extend(spans)
        return SpanExportResult.SUCCESS

module = types.ModuleType("opentelemetry.exporter.otlp.proto.http.trace_exporter")
module.OTLPSpanExporter = OTLPSpanExporter
sys.modules[module.__name__] = module

exec(compile(sys.stdin.read(), "myapp/telemetry.py", "exec"), {})

from opentelemetry import trace
with trace.get_tracer("readme").start_as_current_span("a span"):
    pass
trace.get_tracer_provider().force_flush()
print([span.name for span in exported])
"""


def test_opentelemetry_setup_module() -> None:
    """The setup module with a stand-in for the OTLP exporter (a package of its own, not
    in errands' dev extra): spans reach the exporter through the global provider."""
    done = subprocess.run(
        [sys.executable, "-c", TELEMETRY_CHECK],
        input=snippet("# myapp/telemetry.py", OPENTELEMETRY),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['a span']"
