"""Settings: sources in priority order, validation with clear errors, hand-off to children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from errands import settings
from errands.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_settings() -> Iterator[None]:
    saved = dict(settings._configured)
    settings._configured.clear()
    settings.reset()
    yield
    settings._configured.clear()
    settings._configured.update(saved)
    settings.reset()


def write_pyproject(directory: Path, body: str) -> None:
    (directory / "pyproject.toml").write_text(f"[tool.errands]\n{body}\n")


def test_defaults_follow_the_reference(tmp_path: Path) -> None:
    loaded = settings.load(environ={}, cwd=tmp_path)
    assert loaded.results_retention == 7 * 24 * 3600
    assert (loaded.heartbeat_interval, loaded.heartbeat_timeout) == (60, 300)
    # Not the reference's fixed 10: unset means the worker sizes it (errands.worker.intake).
    assert loaded.worker_max_pending_per_process is None
    assert loaded.worker_max_jobs_per_process is None
    assert loaded.worker_stats_every == 60
    assert loaded.max_processes >= 1
    assert loaded.database_url == ""


def test_sources_apply_in_priority_order(tmp_path: Path) -> None:
    settings.configure(heartbeat_timeout=10, heartbeat_interval=1, poll_interval=0.5)
    write_pyproject(tmp_path, "heartbeat_timeout = 20\nheartbeat_interval = 2")
    loaded = settings.load(
        cli={"heartbeat_timeout": 40},
        environ={"ERRANDS_HEARTBEAT_TIMEOUT": "30", "ERRANDS_HEARTBEAT_INTERVAL": "3"},
        cwd=tmp_path,
    )
    assert loaded.heartbeat_timeout == 40  # command line
    assert loaded.heartbeat_interval == 3  # environment beats pyproject
    assert loaded.poll_interval == 0.5  # configure() when nothing else sets it
    assert loaded.sources["heartbeat_interval"] == "environment variable ERRANDS_HEARTBEAT_INTERVAL"


def test_import_is_read_from_each_source(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'import = ["a.jobs", "b.jobs"]')
    assert settings.load(environ={}, cwd=tmp_path).import_modules == ("a.jobs", "b.jobs")
    from_env = settings.load(environ={"ERRANDS_IMPORT": "x.jobs, y.jobs"}, cwd=tmp_path)
    assert from_env.import_modules == ("x.jobs", "y.jobs")


def test_bad_environment_value_names_setting_value_and_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings.load(environ={"ERRANDS_HEARTBEAT_TIMEOUT": "soon"}, cwd=tmp_path)
    message = str(info.value)
    assert "heartbeat_timeout" in message
    assert "'soon'" in message
    assert "ERRANDS_HEARTBEAT_TIMEOUT" in message


def test_bad_pyproject_value_names_the_file(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "worker_max_processes = -2")
    with pytest.raises(ConfigurationError, match=r"worker_max_processes.*pyproject.toml"):
        settings.load(environ={}, cwd=tmp_path)


def test_unknown_pyproject_key_is_refused(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "hearbeat_timeout = 5")
    with pytest.raises(ConfigurationError, match="unknown setting 'hearbeat_timeout'"):
        settings.load(environ={}, cwd=tmp_path)


def test_configure_fails_at_the_call_site() -> None:
    with pytest.raises(ConfigurationError, match=r"log_format.*errands.configure\(\)"):
        settings.configure(log_format="xml")
    with pytest.raises(ConfigurationError, match="unknown setting"):
        settings.configure(no_such_thing=1)


def test_configure_none_removes_a_value(tmp_path: Path) -> None:
    settings.configure(poll_interval=0.25)
    settings.configure(poll_interval=None)
    assert settings.load(environ={}, cwd=tmp_path).poll_interval == 1.0


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("ERRANDS_NOTIFICATIONS", "off", "notifications", False),
        ("ERRANDS_WORKER_MAX_JOBS_PER_PROCESS", "none", "worker_max_jobs_per_process", None),
        ("ERRANDS_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("ERRANDS_TIMEZONE", "Europe/Berlin", "timezone", "Europe/Berlin"),
        ("ERRANDS_SCHEDULE", '[["a.B", "@daily"]]', "schedule", (("a.B", "@daily"),)),
    ],
)
def test_environment_strings_are_parsed(
    tmp_path: Path, variable: str, value: str, field: str, expected: object
) -> None:
    loaded = settings.load(environ={variable: value}, cwd=tmp_path)
    assert getattr(loaded, field) == expected


def test_unknown_timezone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="IANA time zone"):
        settings.load(environ={"ERRANDS_TIMEZONE": "Mars/Olympus"}, cwd=tmp_path)


def test_to_environ_reproduces_the_settings_in_a_child(tmp_path: Path) -> None:
    settings.configure(middleware=["m.One"], worker_drain_timeout=5)
    parent = settings.load(cli={"heartbeat_timeout": 9, "notifications": False}, cwd=tmp_path)
    settings._configured.clear()
    child = settings.load(environ=settings.to_environ(parent), cwd=tmp_path)
    assert child == parent


def test_current_is_cached_until_configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = settings.current()
    assert settings.current() is first
    settings.configure(poll_interval=0.3)
    assert settings.current().poll_interval == 0.3
    settings.override_cli({"poll_interval": 0.4})
    assert settings.current().poll_interval == 0.4
