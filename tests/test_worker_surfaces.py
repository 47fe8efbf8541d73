"""Small surfaces of the worker: attempts in log records counted from 1, the demo's
signal handler naming its signal, the ``worker_label_output`` setting and flag."""

from __future__ import annotations

import datetime
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from errands import demo, settings
from errands.cli import cli
from errands.models import JobProcess, JobResult, Status
from errands.worker.results import result_fields
from errands.worker.supervision import job_fields

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def a_process(retry_attempt: int) -> JobProcess:
    return JobProcess(
        uuid=uuid.uuid4(),
        request_uuid=uuid.uuid4(),
        requested_at=NOW,
        created_at=NOW,
        started_at=NOW,
        worker_id=uuid.uuid4(),
        job_class="app.Job",
        parameters={},
        queue="default",
        priority=0,
        retries=2,
        retry_attempt=retry_attempt,
        concurrency_key="",
        timeout=None,
        source="test",
        trace_id=None,
        span_id=None,
    )


def a_result(retry_attempt: int) -> JobResult:
    return JobResult(
        uuid=uuid.uuid4(),
        process_uuid=uuid.uuid4(),
        request_uuid=uuid.uuid4(),
        requested_at=NOW,
        started_at=NOW,
        ended_at=NOW,
        created_at=NOW,
        status=Status.SUCCESSFUL,
        worker_id=uuid.uuid4(),
        job_class="app.Job",
        parameters={},
        queue="default",
        priority=0,
        retries=2,
        retry_attempt=retry_attempt,
        concurrency_key="",
        timeout=None,
        source="test",
        trace_id=None,
        span_id=None,
    )


@pytest.mark.parametrize(("retry_attempt", "attempt"), [(0, 1), (2, 3)])
def test_log_records_count_attempts_from_one(retry_attempt: int, attempt: int) -> None:
    """As the CLI, the dashboard and the JSON output: the first run is attempt 1."""
    assert result_fields(a_result(retry_attempt))["attempt"] == attempt
    assert job_fields(a_process(retry_attempt))["attempt"] == attempt


class StopRecorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def stop(self, signum: int | None = None) -> None:
        self.calls.append(signum)


def test_demo_signal_handler_tells_the_worker_which_signal() -> None:
    """So the shutdown message says "a second SIGTERM cancels it", not "a second stop"."""
    worker = StopRecorder()
    with demo._stop_on_signals(worker):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator,misc]
    assert worker.calls == [signal.SIGTERM, signal.SIGINT]


def test_label_output_setting_from_the_environment_and_pyproject(tmp_path: Path) -> None:
    assert settings.load(environ={}, cwd=tmp_path).worker_label_output is False
    environ = {"ERRANDS_WORKER_LABEL_OUTPUT": "true"}
    assert settings.load(environ=environ, cwd=tmp_path).worker_label_output is True
    (tmp_path / "pyproject.toml").write_text("[tool.errands]\nworker_label_output = true\n")
    assert settings.load(environ={}, cwd=tmp_path).worker_label_output is True


def test_label_output_flag_of_errands_worker(
    cli_state_restored: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("ERRANDS_")]:
        monkeypatch.delenv(name)
    seen: list[bool] = []

    def run_worker(config: settings.Settings, queues: list[str]) -> int:
        seen.append(config.worker_label_output)
        return 0

    monkeypatch.setattr("errands.cli.worker._run_worker", run_worker)
    for args in (["worker"], ["worker", "--label-output"]):
        done = CliRunner().invoke(cli, args)
        assert done.exit_code == 0, done.output
        settings.reset()
    assert seen == [False, True]
    assert "--label-output" in CliRunner().invoke(cli, ["worker", "--help"]).output
