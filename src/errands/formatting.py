"""How errands shows jobs to people: times, durations, attempts and states.

One home, shared by the CLI and the dashboard, for the rules behind what they
show: how long a job ran or waited, which attempt it is, whether a process is
claimed, running or cancelling.

Both show a time the same way, always naming its zone: ``2026-12-07 11:20:03 UTC``
(:func:`display_time`): the CLI in the local zone of the machine it runs on, the
dashboard in UTC, which its script rewrites in the viewer's zone, in the same
form. JSON output keeps ISO 8601 with its offset. Both count attempts the same
way (:func:`attempt_text`): ``2 of 4`` is the second run of a job allowed three
retries. Where the two show a duration differently, both spellings live here:
the CLI prints compact columns with ``-`` for nothing (``4m05s``); the dashboard
writes words, with an empty string for nothing (``4 min 5 s``).

Nothing here touches a database or imports the CLI or the dashboard.
"""

from __future__ import annotations

import datetime

from errands.models import JobProcess, JobRequest, JobResult, UndecodableTime, WorkerInfo
from errands.workflow_models import NodeStatus, is_held

Row = JobRequest | JobProcess | JobResult


# -- times ---------------------------------------------------------------------------------


def display_time(value: datetime.datetime, zone: datetime.tzinfo | None = None) -> str:
    """A time as errands shows it to people, to the second and naming its zone.

    ``2026-12-07 11:20:03 UTC``, or ``2026-12-07 12:20:03 CET``: in ``zone``, by
    default the local zone of this machine. A zone without a name of letters
    (``+03``, or none) is written as its UTC offset: ``2026-12-07 14:20:03 +03:00``.
    """
    if is_undecodable(value):  # a poison row's (in local time, past 9999)
        return str(value)
    moment = value.astimezone(zone)
    return f"{moment:%Y-%m-%d %H:%M:%S} {zone_name(moment)}"


def zone_name(moment: datetime.datetime) -> str:
    """``UTC``, ``CET``...: the zone's abbreviation when it has one, else ``+03:00``."""
    name = moment.tzname() or ""
    if name.isalpha():
        return name
    offset = moment.utcoffset() or datetime.timedelta(0)
    sign = "-" if offset < datetime.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def local_time(value: datetime.datetime | None) -> str:
    """The CLI's time: :func:`display_time` in the local zone; ``-`` for none."""
    return "-" if value is None else display_time(value)


def utc_time(value: datetime.datetime | None) -> str:
    """The dashboard's time as the server writes it: :func:`display_time` in UTC."""
    return display_time(value, datetime.UTC) if value else ""


def iso_utc(value: datetime.datetime | None) -> str:
    """The dashboard's time: UTC ISO 8601, for ``<time datetime>``; its script localises it."""
    return value.astimezone(datetime.UTC).isoformat() if value else ""


def is_undecodable(value: object) -> bool:
    """A placeholder for a stored time errands could not load (see backends/rows.py)."""
    return isinstance(value, UndecodableTime)


#: Said instead of the due time of a workflow job waiting for the jobs it depends on.
HELD_TEXT = "after its dependencies"


def is_held_time(value: object) -> bool:
    """Whether a due time is a workflow job's "held until its dependencies end"
    (:data:`errands.workflow_models.HELD_UNTIL`), not a time to show."""
    return isinstance(value, datetime.datetime) and not is_undecodable(value) and is_held(value)


def local_due(value: datetime.datetime | None) -> str:
    """The CLI's due time: :func:`local_time`, or :data:`HELD_TEXT` for a held job."""
    return HELD_TEXT if is_held_time(value) else local_time(value)


# -- durations -----------------------------------------------------------------------------


def compact_duration(seconds: float | None) -> str:
    """The CLI's duration, for table columns: ``0.85s``, ``12.34s``, ``4m05s``, ``3h10m``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def duration_in_words(seconds: float | None) -> str:
    """The dashboard's duration, read at a glance: 850 ms, 12.3 s, 4 min 5 s, 3 h 10 min."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def run_seconds(result: JobResult) -> float | None:
    """How long a finished job ran; None when it never started (cancelled while pending)."""
    if result.started_at is None:
        return None
    return (result.ended_at - result.started_at).total_seconds()


def was_delayed(job: JobProcess | JobResult) -> bool:
    """Whether the job was due later than its enqueueing on purpose: by more than a second."""
    return job.start_at is not None and (job.start_at - job.requested_at).total_seconds() > 1


def waited_seconds(job: JobProcess | JobResult) -> float | None:
    """How long a started job waited for a worker; None before it started.

    A delayed job waits from its due time, any other from its enqueueing; never
    less than 0 (the database's clock and the worker's may differ).
    """
    if job.started_at is None:
        return None
    since = job.start_at if job.start_at is not None and was_delayed(job) else job.requested_at
    return max((job.started_at - since).total_seconds(), 0)


# -- attempts ------------------------------------------------------------------------------


#: Said of an attempt beyond those the job allows: a person retried it by hand.
MANUAL_RETRY = "manual retry"


def attempt_number(row: Row) -> int:
    """Which run of the job this is, counting from 1 (the stored retry_attempt counts from 0).

    The ``attempt`` field of the CLI's JSON.
    """
    return row.retry_attempt + 1


def attempts_allowed(row: Row) -> int:
    """How many runs the job may get on its own: the first and its ``retries``."""
    return row.retries + 1


def attempt_text(row: Row) -> str:
    """Which attempt this is, as every surface shows it (the word "attempt" is the label's).

    ``1 of 1`` (a job without retries), ``2 of 4`` (its first retry of three). An
    attempt beyond those allowed was retried by hand (``errands retry``, the
    dashboard): ``2 (manual retry)``, never ``2 of 1``.
    """
    number, allowed = attempt_number(row), attempts_allowed(row)
    if number > allowed:
        return f"{number} ({MANUAL_RETRY})"
    return f"{number} of {allowed}"


# -- states --------------------------------------------------------------------------------


def process_state(process: JobProcess) -> str:
    """``cancelling`` (a cancel was asked for), ``running`` (started) or ``claimed``."""
    if process.cancel_requested:
        return "cancelling"
    return "running" if process.started_at else "claimed"


def request_state(request: JobRequest, now: datetime.datetime) -> str:
    """``waiting`` (a workflow job whose dependencies have not all ended), ``scheduled``
    (due after ``now``) or ``pending`` (due: waiting for a worker)."""
    if is_held_time(request.start_at):
        return "waiting"
    return "scheduled" if request.start_at > now else "pending"


def node_state(node: NodeStatus) -> str:
    """A workflow job's state as shown: its :class:`~errands.workflow_models.NodeState`,
    with ``running`` for a pending one a worker holds now."""
    return "running" if node.running and not node.state.ended else str(node.state)


def worker_state(worker: WorkerInfo) -> str:
    """``stale`` (silent for longer than the heartbeat timeout) or ``active``."""
    return "stale" if worker.stale else "active"
