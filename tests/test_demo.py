"""``errands demo``: a newcomer's first run, on SQLite (no server) and PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import errands
from errands import settings
from errands.backends import open_backend
from errands.cli import cli
from errands.demo import DEMO_QUEUE, run_demo

# The demo runs real workers (not in scripts/test --fast), through the CLI.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cli_state_restored")]

ERRANDS = str(Path(sys.executable).with_name("errands"))


def processes_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def assert_no_processes_left(marker: str) -> None:
    """Children are joined before the demo exits; multiprocessing's resource tracker
    notices its parent is gone a moment later, so allow it a few seconds."""
    deadline = time.monotonic() + 5
    while (pids := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    commands = []
    for pid in pids:
        with contextlib.suppress(OSError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
    assert commands == []


def clean_env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    env["ERRANDS_TEST_MARKER_VAR"] = marker  # not a setting name: ignored by errands
    return env


def assert_demo_summary(stdout: str) -> None:
    assert "Results:" in stdout
    assert "SUCCESSFUL" in stdout
    flaky = [line for line in stdout.splitlines() if "CallFlakyApi" in line or "\u21b3" in line]
    assert any("succeeded on attempt 3" in line for line in stdout.splitlines()), stdout
    assert any("ERRORED" in line and "ConnectionError" in line for line in flaky)
    assert "DEFERRED" in stdout
    assert "skipped" in stdout and "returned None" in stdout
    assert "errands results" in stdout and "errands get " in stdout


def test_demo_on_a_fresh_machine_uses_sqlite_in_cwd(tmp_path: Path) -> None:
    marker = f"errands-test-demo-{uuid.uuid4().hex}"  # ERRANDS_TEST_*: never a setting
    env = clean_env(marker)
    env.pop("ERRANDS_TEST_MARKER_VAR")
    env[marker.replace("-", "_").upper()] = "1"
    started = time.monotonic()
    completed = subprocess.run(
        [ERRANDS, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr
    assert_demo_summary(completed.stdout)
    assert str(tmp_path / "errands.sqlite3") in completed.stdout
    assert "Traceback" not in completed.stderr
    assert marker.replace("-", "_").upper() not in completed.stderr  # not an unknown setting
    assert "finished 8/8" in completed.stderr  # progress, plain lines off a terminal
    assert elapsed < 30
    assert_no_processes_left(marker.replace("-", "_").upper())

    # The results stay in the database, for the commands the hints point to.
    backend = open_backend(f"sqlite:///{tmp_path / 'errands.sqlite3'}")
    try:
        from errands.models import PageSpec, Selection

        results = backend.page_results(
            selection=Selection(queue=DEMO_QUEUE), page=PageSpec(limit=100)
        )
        assert backend.page_processes(selection=Selection(), page=PageSpec(limit=100)) == []
        assert backend.workers(timeout_seconds=300) == []
    finally:
        backend.close()
    statuses = sorted(r.status.value for r in results)
    assert statuses.count("SUCCESSFUL") == 7
    assert statuses.count("ERRORED") == 3  # two flaky attempts and the spreadsheet
    assert statuses.count("DEFERRED") == 1

    again = subprocess.run(
        [ERRANDS, "results", "--status", "ERRORED"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0
    assert "errands.demo.CallFlakyApi" in again.stdout


def test_demo_on_postgres(pg_url: str) -> None:
    from conftest import empty_postgres

    try:
        result = CliRunner().invoke(cli, ["--database-url", pg_url, "demo"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert_demo_summary(result.stdout)
        assert "PostgreSQL" in result.stdout
        assert multiprocessing.active_children() == []
        results = errands.results(queue=DEMO_QUEUE)
        chained = [r for r in results if r.retry_request_uuid is not None]
        assert len(chained) == 3  # two retries and one deferral
        assert errands.processes() == [] and errands.requests() == []
        assert errands.workers() == []
    finally:
        settings.reset()
        empty_postgres(pg_url)


def test_demo_times_out_with_a_clear_message(tmp_path: Path) -> None:
    errands.configure(database_url=f"sqlite:///{tmp_path / 'slow.db'}")
    out, err = io.StringIO(), io.StringIO()
    try:
        code = run_demo(timeout=0.5, out=out, err=err)
    finally:
        errands.configure(database_url=None)
    assert code == 1
    assert "did not all finish within 0.5s" in err.getvalue()
    assert "Results:" not in out.getvalue()
    assert multiprocessing.active_children() == []


def test_demo_keep_runs_until_interrupted(tmp_path: Path) -> None:
    marker = f"ERRANDS_TEST_DEMO_KEEP_{uuid.uuid4().hex}"
    env = clean_env("x")
    env[marker] = "1"
    process = subprocess.Popen(
        [ERRANDS, "demo", "--keep"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Stop it with Ctrl-C" in line:
                break
        assert any("keeps running" in line for line in lines), "".join(lines)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_no_processes_left(marker)


def test_where_next_commands_run_as_printed_without_an_activated_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from errands.demo_report import command_prefix

    installed = tmp_path / "venv" / "bin" / "errands"
    installed.parent.mkdir(parents=True)
    installed.write_text("#!/bin/sh\n")
    installed.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    assert command_prefix(str(installed)) == str(installed)
    monkeypatch.setenv("PATH", f"{installed.parent}:/usr/bin:/bin")  # it is
    assert command_prefix(str(installed)) == "errands"
    assert command_prefix("/x/errands/__main__.py").endswith(" -m errands")
    assert command_prefix("-c").endswith(" -m errands")  # python -c: no script to name
