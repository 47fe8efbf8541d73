"""Cron schedules: turning the ``schedule`` setting into delayed requests, exactly once.

Each entry of the setting is ``[job, schedule]`` or ``[job, schedule, options]``:

* ``job`` is the dotted path of a registered Job, or ``"cmd:<shell command>"`` (see
  :class:`ShellCommand`: its requests name the command, the worker reads it from here);
* ``schedule`` is a 5-field cron expression, an ``@daily``-style alias, or a
  :class:`Schedule` object;
* ``options`` (a dict) may hold ``args``/``kwargs`` for the job's constructor and
  ``catch_up: true`` (run the most recent occurrence missed while no worker ran).

Workers call :func:`sync` on start and on every maintenance tick. It enqueues each
entry's occurrences up to a horizon ahead (at least the next one) as delayed
requests. Exactly-once is the database's job: an occurrence is reserved by
inserting ``(entry key, run time)`` under a unique key in the same transaction
as its request, so concurrent workers cannot enqueue it twice.
"""

from __future__ import annotations

import abc
import datetime
import hashlib
import json
import re
import subprocess
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from errands import settings, telemetry
from errands.backends.base import Backend
from errands.errors import CommandNotConfigured, ConfigurationError, ErrandsError
from errands.jobs import EnqueueOptions, Job, enqueue_in
from errands.registry import load_job_class, register_job

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
COMMAND_PREFIX = "cmd:"
#: What the ``source`` of a job a schedule entry enqueued starts with (then the entry's key).
SOURCE_PREFIX = "schedule:"
OUTPUT_TAIL_BYTES = 4096


class Schedule(abc.ABC):
    """A rule for when a job runs; subclass it for rules cron cannot express."""

    @abc.abstractmethod
    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        """The first occurrence strictly after ``moment`` (both timezone-aware)."""

    def previous_before(self, moment: datetime.datetime) -> datetime.datetime | None:
        """The last occurrence at or before ``moment``, if the rule can tell."""
        return None

    @abc.abstractmethod
    def describe(self) -> str:
        """The rule in words, for ``errands schedule`` and the dashboard."""

    def signature(self) -> str:
        """Identifies the rule; an entry whose signature changes is a new entry."""
        return self.describe()


class CronSchedule(Schedule):
    """A 5-field cron expression (or alias) read in a time zone.

    Across daylight-saving changes: a time skipped when clocks go forward runs at
    the first moment after the gap; a time repeated when clocks go back runs once
    (the first pass) unless the expression's hour field is ``*``, as in cron.
    """

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        text = ALIASES.get(expression.strip().lower(), expression.strip())
        if len(text.split()) != 5 or not croniter.is_valid(text):
            raise ValueError(
                f"{expression!r} is not a 5-field cron expression or one of {', '.join(ALIASES)}"
            )
        self.expression = expression.strip()
        self.cron = text
        self.zone = zoneinfo.ZoneInfo(timezone)
        self.every_hour = text.split()[1] == "*"

    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        local = moment.astimezone(self.zone)
        while True:
            candidate: datetime.datetime = croniter(self.cron, local).get_next(datetime.datetime)
            if not self._is_repeat(candidate):
                return candidate.astimezone(datetime.UTC)
            local = candidate

    def previous_before(self, moment: datetime.datetime) -> datetime.datetime | None:
        later = moment.astimezone(self.zone) + datetime.timedelta(microseconds=1)
        previous: datetime.datetime = croniter(self.cron, later).get_prev(datetime.datetime)
        return previous.astimezone(datetime.UTC)

    def _is_repeat(self, candidate: datetime.datetime) -> bool:
        """True for the second pass through a wall-clock time when clocks went back."""
        if self.every_hour:
            return False
        wall = candidate.replace(tzinfo=None)
        first = wall.replace(fold=0).replace(tzinfo=self.zone)
        second = wall.replace(fold=1).replace(tzinfo=self.zone)
        ambiguous = first.utcoffset() != second.utcoffset()
        return ambiguous and candidate.utcoffset() == second.utcoffset()

    def describe(self) -> str:
        try:
            from cron_descriptor import get_description  # optional, for nicer words
        except ImportError:
            return f"cron {self.expression!r} ({self.zone.key})"
        return f"{get_description(self.cron)} ({self.zone.key})"

    def signature(self) -> str:
        return f"cron:{self.cron}:{self.zone.key}"


@dataclass(frozen=True)
class Entry:
    """One validated line of the ``schedule`` setting."""

    job: str
    schedule: Schedule
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    catch_up: bool = False

    @property
    def key(self) -> str:
        """Stable identity of the entry: job, parameters and rule. Changing any of
        them makes a new entry (and withdraws the old one's future occurrence)."""
        identity = json.dumps(
            [self.job, self.args, self.kwargs, self.schedule.signature()],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(identity.encode()).hexdigest()[:32]

    @property
    def source(self) -> str:
        """The ``source`` of the jobs this entry enqueues: ``schedule:<key>``."""
        return f"{SOURCE_PREFIX}{self.key}"

    @property
    def is_command(self) -> bool:
        return self.job.startswith(COMMAND_PREFIX)

    def build_job(self) -> Job:
        if self.is_command:
            return ShellCommand.for_command(self.job.removeprefix(COMMAND_PREFIX).strip())
        return load_job_class(self.job)(*self.args, **self.kwargs)


def parse_entries(raw: Sequence[Any], timezone: str = "UTC") -> list[Entry]:
    """Validate the ``schedule`` setting; ConfigurationError names the bad entry."""
    entries = [_parse_entry(position, item, timezone) for position, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for position, entry in enumerate(entries):
        if entry.key in seen:
            raise ConfigurationError(
                f"schedule entry {position} repeats entry {seen[entry.key]} ({entry.job})"
            )
        seen[entry.key] = position
    return entries


def _parse_entry(position: int, item: Any, timezone: str) -> Entry:
    where = f"schedule entry {position} ({item!r})"
    if not isinstance(item, list | tuple) or len(item) not in (2, 3):
        raise ConfigurationError(f"{where}: expected [job, schedule] or [job, schedule, options]")
    job, rule, *rest = item
    options = rest[0] if rest else {}
    if not isinstance(job, str) or not isinstance(options, dict):
        raise ConfigurationError(f"{where}: the job must be a string and the options a dict")
    unknown = set(options) - {"args", "kwargs", "catch_up"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown options {sorted(unknown)}")
    try:
        schedule = rule if isinstance(rule, Schedule) else CronSchedule(str(rule), timezone)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    entry = Entry(
        job=job,
        schedule=schedule,
        args=list(options.get("args", [])),
        kwargs=dict(options.get("kwargs", {})),
        catch_up=bool(options.get("catch_up", False)),
    )
    try:
        entry.build_job()  # unknown class, bad parameters: fail now, not at 9 AM
    except ErrandsError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise ConfigurationError(f"{where}: bad parameters for {job}: {exc}") from None
    if entry.is_command and not job.removeprefix(COMMAND_PREFIX).strip():
        raise ConfigurationError(f"{where}: 'cmd:' needs a shell command")
    return entry


class CommandFailed(Exception):
    """A scheduled shell command exited with a non-zero code."""

    def __init__(self, exit_code: int, output: str) -> None:
        super().__init__(f"exit code {exit_code}\n{output}")
        self.exit_code = exit_code
        self.output = output


def command_key(command: str) -> str:
    """How a request names a ``cmd:`` entry: a digest of its command, which the worker
    maps back to the command through its own ``schedule`` setting."""
    return hashlib.sha256(f"{COMMAND_PREFIX}{command}".encode()).hexdigest()[:32]


def configured_command(key: str, schedule: Sequence[Any]) -> str:
    """The command of the ``cmd:`` entry of ``schedule`` (raw setting) named by ``key``.

    Only each entry's job string is read: in a worker's child the setting arrives
    through the environment, where custom Schedule objects do not survive.
    """
    for item in schedule:
        job = item[0] if isinstance(item, list | tuple) and item else None
        if isinstance(job, str) and job.startswith(COMMAND_PREFIX):
            command = job.removeprefix(COMMAND_PREFIX).strip()
            if command and command_key(command) == key:
                return command
    raise CommandNotConfigured(
        f"no 'cmd:' entry of this process's schedule setting has the command key {key!r} "
        "(the entry was removed or changed, or the request was not written by the scheduler); "
        "shell commands run only from that setting"
    )


_COMMAND_KEY = re.compile(r"[0-9a-f]{32}")
_CARRIES_COMMAND = (
    "this request carries a shell command instead of naming a 'cmd:' entry of the "
    "schedule setting by its command key; shell commands run only from that setting "
    "(requests stored by earlier versions of errands carried the command: they no longer run)"
)


@register_job
class ShellCommand(Job):
    """Runs a ``cmd:`` schedule entry through the shell in the worker's directory.

    Its one parameter is the entry's :func:`command_key`, never the command: the
    worker reads the command from its own ``schedule`` setting when the job runs.
    So a request written any other way (by SQL, naming a removed entry, or stored
    by an older errands with the command itself) runs nothing and ends ERRORED with
    :class:`~errands.errors.CommandNotConfigured`. Enqueueing one (run_in_worker,
    enqueue_many, ``errands run``, a retry) is refused the same way unless the key
    names a ``cmd:`` entry of the enqueuing process's own settings.
    """

    def __init__(self, command_key: Any = None, **other: Any) -> None:
        # **other catches a stored {"command": ...}: it gets the clear error too.
        if other or not isinstance(command_key, str) or not _COMMAND_KEY.fullmatch(command_key):
            raise CommandNotConfigured(_CARRIES_COMMAND)
        self.command_key = command_key
        self.entry_command: str | None = None  # set when built from the entry itself

    @classmethod
    def for_command(cls, command: str) -> ShellCommand:
        """The job of a parsed ``cmd:`` entry (the scheduler's and the dashboard's)."""
        job = cls(command_key(command))
        job.entry_command = command
        return job

    def should_enqueue(self, concurrency_key: str) -> bool:
        if self.entry_command is None:
            configured_command(self.command_key, settings.current().schedule)  # or refuse
        return super().should_enqueue(concurrency_key)

    def run(self) -> dict[str, Any]:
        command = configured_command(self.command_key, settings.current().schedule)
        completed = subprocess.run(
            command,
            shell=True,  # the operator's own configured command, never job input
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        output = completed.stdout[-OUTPUT_TAIL_BYTES:].decode(errors="replace")
        if completed.returncode != 0:
            raise CommandFailed(completed.returncode, output)
        return {"exit_code": 0, "output": output}


# -- enqueueing occurrences ---------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    entry: Entry
    run_at: datetime.datetime


def plan(
    entries: Sequence[Entry],
    *,
    now: datetime.datetime,
    horizon: datetime.timedelta,
    last_run_at: dict[str, datetime.datetime],
    starting: bool,
) -> list[Planned]:
    """Occurrences to enqueue: every one up to ``now + horizon``, at least the next.

    ``last_run_at`` holds the latest occurrence already enqueued per entry key; on
    worker start an entry with ``catch_up`` also gets its most recent missed one.
    """
    planned: list[Planned] = []
    for entry in entries:
        if starting and entry.catch_up:
            missed = _missed_occurrence(entry, now, last_run_at.get(entry.key))
            if missed is not None:
                planned.append(Planned(entry, missed))
        moment = entry.schedule.next_after(now)
        planned.append(Planned(entry, moment))
        while (moment := entry.schedule.next_after(moment)) <= now + horizon:
            planned.append(Planned(entry, moment))
    return planned


def upcoming_times(
    entries: Sequence[Entry], *, now: datetime.datetime, horizon: datetime.timedelta
) -> list[datetime.datetime]:
    """Every occurrence of ``entries`` after ``now`` and up to ``now + horizon``, sorted."""
    times = []
    for entry in entries:
        moment = entry.schedule.next_after(now)
        while moment <= now + horizon:
            times.append(moment)
            moment = entry.schedule.next_after(moment)
    return sorted(times)


def _missed_occurrence(
    entry: Entry, now: datetime.datetime, last: datetime.datetime | None
) -> datetime.datetime | None:
    previous = entry.schedule.previous_before(now)
    if previous is None or last is None or last >= previous:
        return None  # nothing missed (or no history: the entry is new)
    return previous


def sync(
    backend: Backend,
    entries: Sequence[Entry],
    *,
    horizon: datetime.timedelta,
    starting: bool = False,
    now: datetime.datetime | None = None,
    history_seconds: float = 7 * 24 * 3600,
) -> int:
    """Enqueue the occurrences due within ``horizon``, each exactly once.

    On worker start (``starting``), entries no longer configured are forgotten and
    their pending occurrences withdrawn first. ``now`` defaults to the database
    clock. Returns how many requests this call created.
    """
    now = now or backend.now()
    if starting:
        trim_before = now - datetime.timedelta(seconds=history_seconds)
        backend.withdraw_occurrences(keep=[e.key for e in entries], trim_before=trim_before)
    if not entries:
        return 0
    last_run_at = {key: o.run_at for key, o in backend.last_occurrences().items()}
    planned = plan(entries, now=now, horizon=horizon, last_run_at=last_run_at, starting=starting)
    created = 0
    with telemetry.counting_sends(backend), backend.enqueue_transaction() as tx:
        reserved = tx.reserve_occurrences([(p.entry.key, p.run_at) for p in planned])
        for item in planned:
            if (item.entry.key, item.run_at) not in reserved:
                continue  # another worker enqueued this occurrence
            start_at = max(item.run_at, now)  # a caught-up occurrence runs now
            options = EnqueueOptions(delay=start_at, source=item.entry.source)
            request = enqueue_in(tx, [item.entry.build_job()], options=options)[0]
            if request is not None:
                tx.link_occurrence(
                    key=item.entry.key, run_at=item.run_at, request_uuid=request.uuid
                )
                created += 1
    return created
