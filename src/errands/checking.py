"""What ``errands check`` finds: stored jobs and schedule entries this code cannot run.

Run before a deploy with the new code's settings: every pending or scheduled
request, and every entry of the ``schedule`` setting, is tried against the job
classes this process registers (aliases included, :mod:`errands.registry`). A
class that does not load (not registered, renamed without an alias, a module that
fails to import) or stored arguments that no longer fit its constructor would end
``ERRORED`` in a worker; here they are listed, grouped by class and problem.

Loading follows the worker's rule exactly (:func:`errands.registry.load_job_class`):
a stored path imports nothing outside the ``import`` setting. Arguments are checked
against the constructor's signature without decoding them: a registered type's
decoder may read the database or fail for reasons of its own, and is not run.
Requests are read a page at a time and only counts and a few uuids per group are
kept, so a backlog of millions needs no more memory than a few pages.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from errands import registry, scheduler, serialization
from errands.backends.reader import JobReader
from errands.errors import JobNotRegistered
from errands.models import Cursor, JobRequest, PageSpec, Selection

PAGE_SIZE = 500  # requests read per statement
MAX_GROUPS = 1_000  # distinct (class, problem) pairs kept; further ones are counted together
OTHER_PROBLEMS = "other problems (too many distinct ones to list)"
NOT_REGISTERED = (
    "not registered: no @register_job class or alias of this code has this path "
    "(renamed? name the old path in the new class's @register_job(aliases=[...]))"
)


@dataclass
class Group:
    """Stored jobs of one class that cannot run for one reason."""

    job_class: str
    problem: str
    count: int = 0
    #: the first few uuids, in claim order; ``count`` has them all
    uuids: list[UUID] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "job_class": self.job_class,
            "problem": self.problem,
            "count": self.count,
            "uuids": [str(u) for u in self.uuids],
        }


@dataclass(frozen=True)
class EntryProblem:
    """A schedule entry (its position in the setting) whose job cannot be built."""

    position: int
    job: str
    problem: str

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "job": self.job, "problem": self.problem}


@dataclass
class Report:
    jobs_checked: int = 0
    entries_checked: int = 0
    groups: list[Group] = field(default_factory=list)
    entries: list[EntryProblem] = field(default_factory=list)
    #: a request whose due time could not be read ends the reading there
    stopped_at: UUID | None = None

    @property
    def ok(self) -> bool:
        return not self.groups and not self.entries and self.stopped_at is None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "jobs_checked": self.jobs_checked,
            "jobs_failing": sum(g.count for g in self.groups),
            "entries_checked": self.entries_checked,
            "jobs": [g.as_json() for g in self.groups],
            "schedule": [e.as_json() for e in self.entries],
            "stopped_at": None if self.stopped_at is None else str(self.stopped_at),
        }


def check(reader: JobReader, schedule: Sequence[Any], timezone: str, *, shown: int = 10) -> Report:
    """Every request of ``reader`` and every entry of ``schedule`` (the raw setting),
    keeping at most ``shown`` uuids per group."""
    report = Report()
    classes = _Classes()
    groups: dict[tuple[str, str], Group] = {}
    for request in _all_requests(reader, report):
        report.jobs_checked += 1
        problem = classes.problem(request.job_class, request.parameters)
        if problem is not None:
            _count(groups, request, problem, shown)
    report.groups = sorted(groups.values(), key=lambda g: (-g.count, g.job_class, g.problem))
    report.entries = check_schedule(schedule, timezone, classes)
    report.entries_checked = len(schedule)
    return report


def _count(
    groups: dict[tuple[str, str], Group], request: JobRequest, problem: str, shown: int
) -> None:
    key = (request.job_class, problem)
    if key not in groups and len(groups) >= MAX_GROUPS:
        key = (request.job_class, OTHER_PROBLEMS)
    group = groups.setdefault(key, Group(*key))
    group.count += 1
    if len(group.uuids) < shown:
        group.uuids.append(request.uuid)


def _all_requests(reader: JobReader, report: Report) -> Iterator[JobRequest]:
    """Every request in due order, a page at a time (keyset paging: no OFFSET)."""
    cursor: Cursor | None = None
    while True:
        page = reader.page_requests(
            selection=Selection(), page=PageSpec(after=cursor, limit=PAGE_SIZE)
        )
        yield from page
        if len(page) < PAGE_SIZE:
            return
        last = page[-1]
        if not isinstance(last.start_at, datetime.datetime):
            report.stopped_at = last.uuid  # a poison row: no cursor can follow it
            return
        cursor = Cursor(at=last.start_at, uuid=last.uuid)


def check_schedule(
    schedule: Sequence[Any], timezone: str, classes: _Classes | None = None
) -> list[EntryProblem]:
    """The entries of the ``schedule`` setting that cannot be built, each on its own
    (one bad entry does not hide the others, as ``errands schedule check``'s first
    error would)."""
    classes = classes or _Classes()
    problems = []
    for position, item in enumerate(schedule):
        job = item[0] if isinstance(item, list | tuple) and item else item
        problem = _entry_class_problem(item, classes)
        if problem is None:
            problem = _entry_problem(position, item, timezone)
        if problem is not None:
            problems.append(EntryProblem(position, str(job), problem))
    return problems


def _entry_class_problem(item: Any, classes: _Classes) -> str | None:
    """The class and arguments of a well-formed job entry, checked as a request's."""
    if not isinstance(item, list | tuple) or len(item) not in (2, 3):
        return None
    job, options = item[0], (item[2] if len(item) == 3 else {})
    if not isinstance(job, str) or job.startswith(scheduler.COMMAND_PREFIX):
        return None
    if not isinstance(options, dict):
        return None
    arguments = {"args": list(options.get("args", [])), "kwargs": dict(options.get("kwargs", {}))}
    return classes.problem(job, arguments)


def _entry_problem(position: int, item: Any, timezone: str) -> str | None:
    """Anything else wrong with the entry, as the scheduler says it."""
    try:
        scheduler.parse_entries([item], timezone)
    except Exception as exc:
        where = f"schedule entry 0 ({item!r}): "
        return " ".join(str(exc).removeprefix(where).split()) or type(exc).__name__
    return None


class _Classes:
    """Each class path loaded once, each constructor's signature read once."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[inspect.Signature | None, str | None]] = {}

    def problem(self, path: str, parameters: Any) -> str | None:
        if path not in self._loaded:
            self._loaded[path] = _load(path)
        signature, problem = self._loaded[path]
        if problem is not None:
            return problem
        shape = serialization.arguments_problem(parameters)
        if shape is not None:
            return shape
        if signature is None:
            return None  # a constructor without a readable signature takes what it takes
        try:
            signature.bind(None, *parameters.get("args", []), **parameters.get("kwargs", {}))
        except TypeError as exc:
            return f"stored arguments do not fit the constructor: {exc}"
        return None


def _load(path: str) -> tuple[inspect.Signature | None, str | None]:
    try:
        cls = registry.load_job_class(path)
    except JobNotRegistered:
        return None, NOT_REGISTERED
    except Exception as exc:  # the module exists and fails to import: the worker's error too
        where, what = registry.describe_import_failure(path.rpartition(".")[0], exc)
        return None, f"its module does not import: {what}" + (f" ({where})" if where else "")
    try:
        return inspect.signature(cls.__init__), None
    except (TypeError, ValueError):
        return None, None
