"""A newcomer's first hour (issue 19, items 3 and 4): failures that explain themselves
and typos caught, as the user sees them: the exact lines on stderr, and no traceback.

Real ``errands`` processes where a worker or a server starts, click's CliRunner with
real SQLite files and PostgreSQL databases elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import errands
from conftest import wait_for
from errands import settings
from errands.cli import cli
from errands.errors import ConfigurationError

ERRANDS = str(Path(sys.executable).with_name("errands"))
IMPORT_HINT = "(from --import / setting 'import')"

pytestmark = pytest.mark.usefixtures("cli_state_restored")  # the CLI sets process-wide state


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without errands' variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ERRANDS_")}
    env.pop("PYTHONPATH", None)  # the job modules come from the working directory only
    return {**env, **variables}


def errands_command(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ERRANDS, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def job_module(directory: Path, source: str) -> str:
    """A module of this source in ``directory``; its (unique) name."""
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(source)
    return name


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'errands.sqlite3'}"


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def syntax_message(source: str) -> str:
    """What this Python says of the syntax error in ``source`` (it varies by version)."""
    try:
        compile(source, "x.py", "exec")
    except SyntaxError as exc:
        return str(exc.msg)
    raise AssertionError("no syntax error")


# -- a job module that fails at import ----------------------------------------------------


def test_worker_with_a_syntax_error_in_a_job_module(tmp_path: Path) -> None:
    source = "import errands\ndef send(:\n    pass\n"
    module = job_module(tmp_path, source)
    done = errands_command(
        tmp_path, "--database-url", sqlite_url(tmp_path), "worker", "--import", module
    )
    assert done.returncode == 1
    assert stderr_lines(done.stderr) == [
        f"Error: cannot import module '{module}' {IMPORT_HINT}: "
        f"SyntaxError: {syntax_message(source)}",
        f"  {module}.py:2: def send(: (full traceback with --log-level DEBUG)",
    ]
    assert done.stdout == ""


def test_worker_with_an_exception_at_import(tmp_path: Path) -> None:
    module = job_module(tmp_path, 'import errands\n\nraise RuntimeError("no API key")\n')
    done = errands_command(
        tmp_path, "--database-url", sqlite_url(tmp_path), "worker", "--import", module
    )
    assert done.returncode == 1
    assert stderr_lines(done.stderr) == [
        f"Error: cannot import module '{module}' {IMPORT_HINT}: RuntimeError: no API key",
        f'  {module}.py:3: raise RuntimeError("no API key") '
        "(full traceback with --log-level DEBUG)",
    ]


def test_an_error_raised_inside_a_library_points_at_the_job_modules_line(
    tmp_path: Path,
) -> None:
    module = job_module(tmp_path, 'import os\n\nAPI_KEY = os.environ["MY_API_KEY_XYZ"]\n')
    done = errands_command(
        tmp_path, "--database-url", sqlite_url(tmp_path), "worker", "--import", module
    )
    assert done.returncode == 1
    assert stderr_lines(done.stderr) == [
        f"Error: cannot import module '{module}' {IMPORT_HINT}: KeyError: 'MY_API_KEY_XYZ'",
        f'  {module}.py:3: API_KEY = os.environ["MY_API_KEY_XYZ"] '
        "(full traceback with --log-level DEBUG)",
    ]


def test_a_missing_dependency_of_a_job_module(tmp_path: Path) -> None:
    module = job_module(tmp_path, "import errands\nimport no_such_dependency_xyz\n")
    done = errands_command(
        tmp_path, "--database-url", sqlite_url(tmp_path), "worker", "--import", module
    )
    assert done.returncode == 1
    assert stderr_lines(done.stderr) == [
        f"Error: cannot import module '{module}' {IMPORT_HINT}: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
        f"  {module}.py:2: import no_such_dependency_xyz (full traceback with --log-level DEBUG)",
    ]


def test_a_job_module_that_does_not_exist(tmp_path: Path) -> None:
    done = errands_command(
        tmp_path, "--database-url", sqlite_url(tmp_path), "worker", "--import", "myapp_jobs_xyz"
    )
    assert done.returncode == 1
    assert stderr_lines(done.stderr) == [
        f"Error: cannot import module 'myapp_jobs_xyz' {IMPORT_HINT}: No module named "
        f"'myapp_jobs_xyz' (not in the working directory {tmp_path}, on PYTHONPATH or in "
        "the installed packages)",
    ]


def test_log_level_debug_shows_the_whole_traceback(tmp_path: Path) -> None:
    module = job_module(tmp_path, 'import errands\n\nraise RuntimeError("no API key")\n')
    done = errands_command(
        tmp_path,
        *("--database-url", sqlite_url(tmp_path), "worker", "--import", module),
        *("--log-level", "DEBUG"),
    )
    assert done.returncode == 1
    lines = stderr_lines(done.stderr)
    assert lines[0] == "Traceback (most recent call last):"
    assert f'  File "{tmp_path / module}.py", line 3, in <module>' in lines
    assert lines[-3:] == [
        "RuntimeError: no API key",
        f"Error: cannot import module '{module}' {IMPORT_HINT}: RuntimeError: no API key",
        f'  {module}.py:3: raise RuntimeError("no API key")',
    ]


def test_another_command_that_imports_job_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`errands run` imports the modules too; its hint names the environment variable."""
    module = job_module(tmp_path, "import errands\n\n\nraise ValueError('bad config')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(
        cli, ["--database-url", sqlite_url(tmp_path), "--import", module, "run", f"{module}.Job"]
    )
    assert result.exit_code == 1
    assert stderr_lines(result.stderr) == [
        f"Error: cannot import module '{module}' {IMPORT_HINT}: ValueError: bad config",
        f"  {module}.py:4: raise ValueError('bad config') "
        "(full traceback with ERRANDS_LOG_LEVEL=DEBUG)",
    ]
    assert module not in sys.modules


# -- errands dashboard --------------------------------------------------------------------


def dashboard(url: str, *args: str, password: str | None) -> Result:
    env = {"ERRANDS_DASHBOARD_PASSWORD": password}
    return CliRunner().invoke(cli, ["--database-url", url, "dashboard", *args], env=env)


def test_dashboard_without_a_password_refuses_before_announcing(db_url: str) -> None:
    result = dashboard(db_url, password=None)
    assert result.exit_code == 2
    assert stderr_lines(result.stderr) == [
        "Error: the dashboard needs a password: set ERRANDS_DASHBOARD_PASSWORD (or "
        "--password), or pass --insecure-no-auth for a dashboard on 127.0.0.1 only"
    ]
    assert "errands dashboard on" not in result.output


def test_dashboard_on_a_port_in_use_is_one_line_and_exit_code_4(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = dashboard(db_url, "--port", str(port), password="pw")
    assert result.exit_code == 4
    assert stderr_lines(result.stderr) == [
        f"Error: cannot serve the dashboard on 127.0.0.1:{port}: the port is already in use "
        "(another dashboard or program listens there); stop it or choose another --port"
    ]
    assert "errands dashboard on" not in result.output


def test_exit_code_4_is_documented() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "3 `run` was declined by should_enqueue;" in " ".join(result.output.split())
    assert "4 `dashboard` cannot listen on its address (the port is in use)." in " ".join(
        result.output.split()
    )
    help_text = " ".join(CliRunner().invoke(cli, ["dashboard", "--help"]).output.split())
    assert "4 when it cannot listen on --host/--port (the port is in use)" in help_text


@pytest.mark.slow
def test_dashboard_announces_and_serves_on_a_free_port(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    assert errands_command(tmp_path, "--database-url", url, "migrate").returncode == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [ERRANDS, "--database-url", url, "dashboard", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(ERRANDS_DASHBOARD_PASSWORD="pw"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _answers(port) or process.poll() is not None, timeout=30)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    first = stderr.splitlines()[0]
    assert first.startswith(f"errands dashboard on http://127.0.0.1:{port}/ (sqlite ")
    assert "Error" not in stderr and "Traceback" not in stderr


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- typos in environment variables ------------------------------------------------------


def test_misspelt_environment_variable_is_reported_at_a_command(db_url: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["--database-url", db_url, "results"],
        env={"ERRANDS_HEARTBEAT_TIMOUT": "30", "ERRANDS_POLL_INTERVAL": "0.5"},
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in stderr_lines(result.stderr) if line.startswith("Warning")]
    assert warnings == [
        "Warning: ERRANDS_HEARTBEAT_TIMOUT is not an errands setting (ignored); "
        "did you mean ERRANDS_HEARTBEAT_TIMEOUT?"
    ]


def test_misspelt_database_url_is_reported_before_the_default_database(tmp_path: Path) -> None:
    """The typo that silently used ./errands.sqlite3: the warning comes first."""
    done = errands_command(tmp_path, "results", ERRANDS_DATABSE_URL=sqlite_url(tmp_path))
    lines = stderr_lines(done.stderr)
    assert lines[0] == (
        "Warning: ERRANDS_DATABSE_URL is not an errands setting (ignored); "
        "did you mean ERRANDS_DATABASE_URL?"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_misspelt_environment_variable_is_reported_at_worker_start(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    assert errands_command(tmp_path, "--database-url", url, "migrate").returncode == 0
    process = subprocess.Popen(
        [ERRANDS, "--database-url", url, "worker", "--max-processes", "1"],
        cwd=tmp_path,
        env=clean_env(ERRANDS_HEARTBEAT_TIMOUT="30", ERRANDS_TEST_DATABASE_URL="postgresql:///x"),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("Stop with Ctrl-C"):
                break
        process.send_signal(signal.SIGTERM)  # the banner is printed; its signals may not be set
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert lines[0] == (
        "Warning: ERRANDS_HEARTBEAT_TIMOUT is not an errands setting (ignored); "
        "did you mean ERRANDS_HEARTBEAT_TIMEOUT?"
    )
    assert lines[1].startswith("errands ") and " worker (pid " in lines[1]
    assert not any("ERRANDS_TEST_DATABASE_URL" in line for line in lines)


def test_variables_errands_uses_that_are_not_settings_are_not_reported() -> None:
    environ = {
        "ERRANDS_TEST_DATABASE_URL": "postgresql:///x",  # errands' pytest plugin
        "ERRANDS_TEST_CHROMIUM": "/usr/bin/chromium",  # errands' browser tests
        "ERRANDS_TEST_SPANS": "1",
        "ERRANDS_DATABASE_URL": "sqlite:///x.db",
        "ERRANDS_IMPORT": "myapp.jobs",
        "HOME": "/root",
    }
    assert settings.unknown_environment(environ) == []


def test_unknown_environment_variables_with_and_without_a_likely_meaning() -> None:
    environ = {
        "ERRANDS_DATABSE_URL": "x",
        "ERRANDS_IMPORT_MODULES": "myapp.jobs",
        "errands_log_level": "DEBUG",
        "ERRANDS_COLOUR": "1",
    }
    assert settings.unknown_environment(environ) == [
        ("ERRANDS_COLOUR", None),
        ("ERRANDS_DATABSE_URL", "ERRANDS_DATABASE_URL"),
        ("ERRANDS_IMPORT_MODULES", "ERRANDS_IMPORT"),
        ("errands_log_level", "ERRANDS_LOG_LEVEL"),
    ]


def test_unknown_variable_without_a_likely_meaning_points_at_the_settings(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        cli, ["--database-url", sqlite_url(tmp_path), "settings"], env={"ERRANDS_COLOUR": "1"}
    )
    assert result.exit_code == 0
    assert stderr_lines(result.stderr) == [
        "Warning: ERRANDS_COLOUR is not an errands setting (ignored); "
        "`errands settings` lists the settings"
    ]


# -- typos in [tool.errands] and errands.configure() --------------------------------------


def test_misspelt_pyproject_key_stays_an_error_with_did_you_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.errands]\nhearbeat_timeout = 30\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--database-url", sqlite_url(tmp_path), "settings"])
    assert result.exit_code == 2
    assert stderr_lines(result.stderr) == [
        f"Error: unknown setting 'hearbeat_timeout' in [tool.errands] in "
        f"{tmp_path / 'pyproject.toml'}; did you mean 'heartbeat_timeout'?"
    ]


def test_misspelt_configure_key_stays_an_error_with_did_you_mean() -> None:
    with pytest.raises(ConfigurationError) as info:
        errands.configure(databse_url="sqlite:///x.db")
    assert str(info.value) == (
        "unknown setting 'databse_url' in errands.configure(); did you mean 'database_url'?"
    )


def test_unknown_key_without_a_likely_meaning_lists_the_settings() -> None:
    with pytest.raises(ConfigurationError) as info:
        errands.configure(colour=True)
    message = str(info.value)
    assert message.startswith("unknown setting 'colour' in errands.configure(); known settings: ")
    assert "database_url" in message and "did you mean" not in message
