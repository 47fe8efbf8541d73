"""How ``errands worker`` starts: its children early, light, and without extra processes.

The children are started as soon as the settings are read and the job modules
imported, so that their start-up (an interpreter, the job modules) overlaps the
parent's (schema check, heartbeat, LISTEN, schedules). They do not run the
console script again (the CLI and the database driver are the parent's business),
and no resource tracker process comes with them (``errands.worker.spawning``).
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
import sample_jobs
from click.testing import CliRunner
from worker_process import WorkerProcess

import errands
from errands import Status
from errands.cli import cli, configuration
from errands.cli.errors import CliError
from errands.worker import spawning

pytestmark = pytest.mark.slow  # real workers

FIRST_JOB_BOUND = 20.0  # seconds: generous (about 1 s on a loaded machine)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_children_are_light_and_the_first_job_is_done_soon(pg_url: str, tmp_path: Path) -> None:
    errands.configure(database_url=pg_url)
    try:
        request = sample_jobs.Noop().run_in_worker()
        assert request is not None
        started = time.monotonic()
        worker = WorkerProcess.errands(
            pg_url,
            tmp_path / "worker.log",
            "--import",
            "sample_jobs",
            "worker",
            "--max-processes",
            "2",
            "--stats-every",
            "0",
        )
        with worker:
            result = errands.wait_for_result(request.uuid, timeout=FIRST_JOB_BOUND)
            assert result.status == Status.SUCCESSFUL
            assert time.monotonic() - started < FIRST_JOB_BOUND
            children = _children(worker.pid)
            # Two job processes, and no resource tracker beside them.
            assert len(children) == 2, [_cmdline(c) for c in children]
            for child in children:
                command = _cmdline(child)
                assert "spawn_main" in command and "resource_tracker" not in command
                maps = Path(f"/proc/{child}/maps").read_text()
                assert "psycopg" not in maps  # the database driver is the parent's
    finally:
        errands.configure(database_url=None)


def test_children_start_before_the_schema_check(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawning, "_skip_main", spawning._skip_main)  # restored after
    seen: list[list[str]] = []

    def check_schema(config: Any) -> None:
        seen.append([p.name for p in multiprocessing.active_children()])
        raise CliError("the schema check failed (test)")

    monkeypatch.setattr(configuration, "check_schema", check_schema)
    result = CliRunner().invoke(
        cli,
        ["--database-url", db_url, "--import", "sample_jobs", "worker", "--max-processes", "2"],
    )
    assert result.exit_code != 0
    assert "the schema check failed (test)" in result.output
    assert seen == [["errands-job", "errands-job"]]
    # A failed start takes its children with it.
    assert [p.name for p in multiprocessing.active_children()] == []
