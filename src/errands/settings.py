"""Settings: one frozen object, assembled from four sources.

Highest priority first:

1. command-line flags (``override_cli``, used by ``errands ...``);
2. environment variables ``ERRANDS_<NAME>`` (``ERRANDS_IMPORT`` for ``import``);
3. the ``[tool.errands]`` table of ``pyproject.toml`` in the working directory;
4. ``errands.configure(name=value)`` in code;

then the defaults. Every value is checked when settings are loaded, and a bad
one stops errands with an error naming the setting, the value and its source. An
unknown key in ``[tool.errands]`` or ``configure()`` is an error too, with the setting
it probably means; an ``ERRANDS_*`` variable that names no setting is only ignored
here, and :func:`unknown_environment` lists them for the CLI to warn about.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errands.backoff import Backoff
from errands.errors import ConfigurationError
from errands.setting_values import (
    Invalid,
    Retention,
    choice,
    optional,
    positive,
    to_backoff,
    to_bool,
    to_hosts,
    to_names,
    to_networks,
    to_queue_limits,
    to_retention,
    to_schedule,
    to_schema,
    to_secret_key,
    to_str,
    to_timezone,
)

ENV_PREFIX = "ERRANDS_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
#: ``database_pooler``: "transaction" for a pooler in transaction mode (PgBouncer's
#: ``pool_mode = transaction``), where no session state may outlive a transaction.
DATABASE_POOLERS = ("none", "transaction")


@dataclass(frozen=True)
class Settings:
    """errands' configuration: build one with :func:`load`, or use :func:`current`."""

    database_url: str = ""
    #: seconds without an answer after which a PostgreSQL connection counts as dead:
    #: connect timeout, TCP keepalives and tcp_user_timeout, and a worker's deadline
    #: on its own statements (see errands.backends.postgres.connection)
    database_timeout: float = 10.0
    #: "transaction": database_url leads to a transaction pooler (PgBouncer in
    #: transaction mode): no prepared statements nor session settings, and LISTEN only
    #: on listen_database_url (see errands.backends.postgres.connection)
    database_pooler: str = "none"
    #: a direct connection for LISTEN (PostgreSQL); empty: database_url, or, behind a
    #: transaction pooler, no LISTEN at all (workers and waiters poll)
    listen_database_url: str = ""
    #: PostgreSQL: the schema holding errands' tables, functions and notification
    #: channels (``<schema>_jobs``, ``<schema>_results``), so several applications
    #: share one database; "": the connections' search_path and channels
    #: errands_jobs / errands_results. SQLite ignores it (its file is the app's own).
    schema: str = ""
    import_modules: tuple[str, ...] = ()
    #: seconds results are kept before workers prune them: one number, or a
    #: Retention by status (``{SUCCESSFUL = 86400, default = 604800}``)
    results_retention: float | Retention = 7 * 24 * 3600
    heartbeat_interval: float = 60.0
    heartbeat_timeout: float = 300.0
    middleware: tuple[str, ...] = ()
    schedule: tuple[Any, ...] = ()
    timezone: str = "UTC"
    worker_max_processes: int | None = None
    worker_max_jobs_per_process: int | None = None
    #: None: chosen by the worker from the jobs' run time (see errands.worker.intake)
    worker_max_pending_per_process: int | None = None
    worker_stats_every: float = 60.0
    worker_threads: int = 1
    worker_drain_timeout: float | None = None
    #: each line a job prints or logs starts with ``[job.Class 1a2b3c4d] `` (worker.output)
    worker_label_output: bool = False
    poll_interval: float = 1.0
    #: flow control per queue: at most N of its jobs claimed or running across all
    #: workers, as (queue, N) pairs (``{"mail": 10}`` in pyproject, ``mail=10`` in env)
    queue_limits: tuple[tuple[str, int], ...] = ()
    notifications: bool = True
    #: the delay before each retry of a job class that sets no ``retry_backoff`` and
    #: keeps the default ``calculate_retry_delay``; None: retried at once
    retry_backoff: Backoff | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    log_jobs: bool = False
    #: the dashboard's login password; empty: no password login (see errands.dashboard)
    dashboard_password: str = field(default="", repr=False)
    #: the dashboard shows everything but offers no action (retry, cancel, delete, pause)
    dashboard_read_only: bool = False
    #: signs the dashboard's session cookie; empty: a random key kept in the database
    dashboard_secret_key: str = field(default="", repr=False)
    #: seconds a dashboard login lasts
    dashboard_session_lifetime: float = 12 * 3600.0
    #: Host names the dashboard answers for; empty: the bound address and loopback names
    dashboard_allowed_hosts: tuple[str, ...] = ()
    #: addresses or networks of reverse proxies whose X-Forwarded-* headers are believed
    dashboard_trusted_proxies: tuple[str, ...] = ()
    #: where each non-default value came from, for messages and ``errands settings``
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def max_processes(self) -> int:
        """Child processes per worker: the setting, or the CPU count."""
        return self.worker_max_processes or os.cpu_count() or 1


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "database_url": to_str,
    "database_timeout": positive(float),
    "database_pooler": choice(DATABASE_POOLERS),
    "listen_database_url": to_str,
    "schema": to_schema,
    "import_modules": to_names,
    "results_retention": to_retention,
    "heartbeat_interval": positive(float),
    "heartbeat_timeout": positive(float),
    "middleware": to_names,
    "schedule": to_schedule,
    "timezone": to_timezone,
    "worker_max_processes": optional(positive(int)),
    "worker_max_jobs_per_process": optional(positive(int)),
    "worker_max_pending_per_process": optional(positive(int), also=("auto",)),
    "worker_stats_every": positive(float, allow_zero=True),
    "worker_threads": positive(int),
    "worker_drain_timeout": optional(positive(float, allow_zero=True)),
    "worker_label_output": to_bool,
    "poll_interval": positive(float),
    "queue_limits": to_queue_limits,
    "notifications": to_bool,
    "retry_backoff": to_backoff,
    "log_level": choice(LOG_LEVELS, upper=True),
    "log_format": choice(LOG_FORMATS),
    "log_jobs": to_bool,
    "dashboard_password": to_str,
    "dashboard_read_only": to_bool,
    "dashboard_secret_key": to_secret_key,
    "dashboard_session_lifetime": positive(float),
    "dashboard_allowed_hosts": to_hosts,
    "dashboard_trusted_proxies": to_networks,
}

#: The name users write (pyproject key, ``ERRANDS_`` suffix) where it differs from the field.
_PUBLIC_NAMES = {"import_modules": "import"}
_FIELD_OF_PUBLIC = {public: name for name, public in _PUBLIC_NAMES.items()}


def public_name(field_name: str) -> str:
    return _PUBLIC_NAMES.get(field_name, field_name)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + public_name(field_name).upper()


def _field_name(key: str, source: str) -> str:
    name = _FIELD_OF_PUBLIC.get(key, key)
    if name not in _PARSERS:
        guess = suggest(key, [public_name(n) for n in _PARSERS])
        if guess is not None:
            raise ConfigurationError(
                f"unknown setting '{key}' in {source}; did you mean '{guess}'?"
            )
        known = ", ".join(sorted(public_name(n) for n in _PARSERS))
        raise ConfigurationError(f"unknown setting '{key}' in {source}; known settings: {known}")
    return name


def suggest(word: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``word`` (a likely typo of it), or None."""
    by_key = {candidate.lower().replace("-", "_"): candidate for candidate in candidates}
    matches = difflib.get_close_matches(word.lower().replace("-", "_"), list(by_key), n=1)
    return by_key[matches[0]] if matches else None


#: ``ERRANDS_*`` variables that errands reads but that are not settings (never reported
#: as unknown): ``ERRANDS_TEST_*`` belongs to test suites, e.g. ``ERRANDS_TEST_DATABASE_URL``
#: of errands' pytest plugin and ``ERRANDS_TEST_CHROMIUM`` of errands' own tests.
NOT_SETTINGS_PREFIX = ENV_PREFIX + "TEST_"


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """Each ``ERRANDS_*`` variable of ``environ`` that names no setting (so is ignored),
    with the variable it probably means, or None: ``ERRANDS_DATABSE_URL`` gives
    ``("ERRANDS_DATABSE_URL", "ERRANDS_DATABASE_URL")``."""
    environ = os.environ if environ is None else environ
    known = [env_name(name) for name in _PARSERS]
    unknown: list[tuple[str, str | None]] = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(NOT_SETTINGS_PREFIX):
            continue
        if variable in known:
            continue
        if upper in known:  # lower case: not read, environment names are case-sensitive
            unknown.append((variable, upper))
            continue
        guess = suggest(upper.removeprefix(ENV_PREFIX), [v.removeprefix(ENV_PREFIX) for v in known])
        unknown.append((variable, ENV_PREFIX + guess if guess else None))
    return unknown


def _parse(name: str, value: Any, source: str) -> Any:
    try:
        return _PARSERS[name](value)
    except Invalid as exc:
        raise ConfigurationError(
            f"invalid value {value!r} for setting '{public_name(name)}' (from {source}): {exc}"
        ) from None


def parse_setting(name: str, value: Any, source: str) -> Any:
    """``value`` checked as setting ``name`` would be (for arguments that stand in for
    a setting); a ConfigurationError names the setting and ``source``."""
    return _parse(_field_name(name, source), value, source)


# -- the sources ---------------------------------------------------------------------

_lock = threading.RLock()
_configured: dict[str, Any] = {}
_cli: dict[str, Any] = {}
_current: Settings | None = None


def configure(**values: Any) -> None:
    """Set values in code (the lowest-priority source). ``name=None`` removes a value."""
    global _current
    with _lock:
        for key, value in values.items():
            name = _field_name(key, "errands.configure()")
            if value is None:
                _configured.pop(name, None)
            else:
                _parse(name, value, "errands.configure()")  # fail now, at the call site
                _configured[name] = value
        _current = None


def override_cli(values: Mapping[str, Any]) -> None:
    """Set values from command-line flags (the highest-priority source); None is ignored."""
    global _current
    with _lock:
        _cli.update({k: v for k, v in values.items() if v is not None})
        _current = None


def reset() -> None:
    """Forget the cached settings (and CLI values), so the next ``current()`` reloads."""
    global _current
    with _lock:
        _cli.clear()
        _current = None


def current() -> Settings:
    """The settings of this process, loaded once from all sources."""
    global _current
    with _lock:
        if _current is None:
            _current = load(cli=_cli)
        return _current


def load(
    *,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Assemble settings from every source (see the module docstring)."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("errands.configure()", dict(_configured)),
        *_pyproject_layer(cwd or Path.cwd()),
        *_environ_layer(environ),
        ("the command line", {k: v for k, v in (cli or {}).items() if v is not None}),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            name = _field_name(key, source)
            values[name] = _parse(name, value, source)
            sources[name] = source
    return Settings(**values, sources=sources)


def _pyproject_layer(cwd: Path) -> list[tuple[str, Mapping[str, Any]]]:
    path = cwd / "pyproject.toml"
    try:
        with path.open("rb") as file:
            table = tomllib.load(file).get("tool", {}).get("errands")
    except FileNotFoundError:
        return []
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    if table is None:
        return []
    if not isinstance(table, dict):
        raise ConfigurationError(f"[tool.errands] in {path} must be a table")
    return [(f"[tool.errands] in {path}", table)]


def _environ_layer(environ: Mapping[str, str]) -> list[tuple[str, Mapping[str, Any]]]:
    """One layer per variable, so an error names the exact variable."""
    return [
        (f"environment variable {env_name(name)}", {name: environ[env_name(name)]})
        for name in _PARSERS
        if env_name(name) in environ
    ]


def to_environ(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process.

    Every setting is included, so the child's own environment cannot override
    what the parent decided (for example from a command-line flag).
    """
    return {
        env_name(f.name): _environ_value(f.name, getattr(settings, f.name))
        for f in dataclasses.fields(Settings)
        if f.name in _PARSERS
    }


def _environ_value(name: str, value: Any) -> str:
    if name == "schedule":
        return json.dumps([list(e) if isinstance(e, tuple) else e for e in value], default=str)
    if name == "queue_limits":
        return ",".join(f"{queue}={number}" for queue, number in value)
    if isinstance(value, Retention):
        return value.as_text()
    if isinstance(value, Backoff):
        return ",".join(f"{name}={getattr(value, name)!r}" for name in Backoff.__slots__)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def as_dict(settings: Settings) -> dict[str, Any]:
    """Every setting by its public name (for display)."""
    shown = {
        public_name(f.name): getattr(settings, f.name)
        for f in dataclasses.fields(Settings)
        if f.name in _PARSERS
    }
    shown["queue_limits"] = dict(settings.queue_limits)
    retention = settings.results_retention
    if isinstance(retention, Retention):
        shown["results_retention"] = {**dict(retention.by_status), "default": retention.default}
    backoff = settings.retry_backoff
    shown["retry_backoff"] = None if backoff is None else dataclasses.asdict(backoff)
    return shown
