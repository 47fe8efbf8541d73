"""What ``errands schedule`` and the dashboard show of each schedule entry: its next
runs, the occurrence already queued, and its last run with its outcome."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from errands.backends.base import Backend
from errands.models import JobProcess, JobRequest, JobResult, PageSpec, Selection
from errands.registry import job_class_path
from errands.scheduler import Entry, ShellCommand

#: How many of an entry's newest processes and results are searched for its last run
#: when its latest occurrence has not run yet.
LAST_RUN_SEARCH = 100


@dataclass(frozen=True)
class EntryStatus:
    """What ``errands schedule`` and the dashboard show of one entry.

    The latest occurrence (``latest_occurrence_at``, ``latest_request_uuid``) is
    often one enqueued ahead that has not run: workers enqueue occurrences before
    they are due. So ``queued`` is the occurrence enqueued and waiting (its
    request), and ``last_run`` the latest one that started: its process while it
    runs, then its result.
    """

    entry: Entry
    description: str
    next_runs: list[datetime.datetime]
    latest_occurrence_at: datetime.datetime | None
    latest_request_uuid: Any
    queued: JobRequest | None = None
    last_run: JobProcess | JobResult | None = None

    @property
    def last_request_uuid(self) -> Any:
        """The latest occurrence's request (an alias of ``latest_request_uuid``)."""
        return self.latest_request_uuid

    @property
    def last_run_at(self) -> datetime.datetime | None:
        """When the last run started (ended, for one cancelled before it started)."""
        if self.last_run is None:
            return None
        if self.last_run.started_at is None and isinstance(self.last_run, JobResult):
            return self.last_run.ended_at
        return self.last_run.started_at

    @property
    def last_outcome(self) -> str | None:
        """``RUNNING`` or the last run's result status; None before the first run."""
        if isinstance(self.last_run, JobResult):
            return str(self.last_run.status)
        return "RUNNING" if self.last_run is not None else None

    def as_json(self) -> dict[str, Any]:
        queued, last, latest = self.queued, self.last_run, self.latest_occurrence_at
        return {
            "job": self.entry.job,
            "key": self.entry.key,
            "description": self.description,
            "catch_up": self.entry.catch_up,
            "next_runs": [moment.isoformat() for moment in self.next_runs],
            "queued": None
            if queued is None
            else {"request_uuid": str(queued.uuid), "due_at": _iso(queued.start_at)},
            "last_run": None
            if last is None
            else {
                "uuid": str(last.uuid),
                "started_at": _iso(self.last_run_at),
                "outcome": self.last_outcome,
            },
            "latest_occurrence_at": _iso(latest),
            "latest_request_uuid": str(self.latest_request_uuid) if latest else None,
        }


def status(backend: Backend, entries: Sequence[Entry], *, count: int = 3) -> list[EntryStatus]:
    """Each entry with its next ``count`` run times, its queued occurrence and its last run."""
    now = backend.now()
    last = backend.last_occurrences()
    statuses = []
    for entry in entries:
        upcoming, moment = [], now
        for _ in range(count):
            moment = entry.schedule.next_after(moment)
            upcoming.append(moment)
        occurrence = last.get(entry.key)
        uuid = occurrence.request_uuid if occurrence else None
        latest = backend.get(uuid=uuid) if uuid else None
        queued = latest if isinstance(latest, JobRequest) else None
        ran = latest if isinstance(latest, JobProcess | JobResult) else None
        statuses.append(
            EntryStatus(
                entry=entry,
                description=entry.schedule.describe(),
                next_runs=upcoming,
                latest_occurrence_at=occurrence.run_at if occurrence else None,
                latest_request_uuid=uuid,
                queued=queued,
                last_run=ran or _last_run(backend, entry),
            )
        )
    return statuses


def _last_run(backend: Backend, entry: Entry) -> JobProcess | JobResult | None:
    """The newest process or result this entry enqueued, found by its ``source``."""
    job_class = job_class_path(ShellCommand) if entry.is_command else entry.job
    selection, page = Selection(job_class=job_class), PageSpec(limit=LAST_RUN_SEARCH)
    processes = backend.page_processes(selection=selection, page=page)[::-1]  # newest first
    for rows in (processes, backend.page_results(selection=selection, page=page)):
        found = next((row for row in rows if row.source == entry.source), None)
        if found is not None:
            return found
    return None


def _iso(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
