"""How errands shows jobs to people: times, durations, attempts and states.

One home, shared by the CLI and the dashboard, for the rules behind what they
show: how long a job ran or waited, which attempt it is, whether a process is
claimed, running or cancelling. Where the two show a value differently, both
spellings live here side by side: the CLI prints compact columns in local time
with ``-`` for nothing (``4m05s``, attempt ``2/4``); the dashboard writes words
and UTC ISO times that its script localises, with an empty string for nothing
(``4 min 5 s``, retry ``1/3``).

Nothing here touches a database or imports the CLI or the dashboard.
"""

from __future__ import annotations

import datetime

from errands.models import JobProcess, JobRequest, JobResult, UndecodableTime, WorkerInfo

Row = JobRequest | JobProcess | JobResult


# -- times ---------------------------------------------------------------------------------


def local_time(value: datetime.datetime | None) -> str:
    """The CLI's time: local, to the second (``2026-12-07 09:13:26``); ``-`` for none."""
    if value is None:
        return "-"
    if is_undecodable(value):  # a poison row's (in local time, past 9999)
        return str(value)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(value: datetime.datetime | None) -> str:
    """The dashboard's time: UTC ISO 8601, for ``<time datetime>``; its script localises it."""
    return value.astimezone(datetime.UTC).isoformat() if value else ""


def is_undecodable(value: object) -> bool:
    """A placeholder for a stored time errands could not load (see backends/rows.py)."""
    return isinstance(value, UndecodableTime)


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


def attempt_number(row: Row) -> int:
    """Which run of the job this is, counting from 1 (retry_attempt counts from 0)."""
    return row.retry_attempt + 1


def attempt_of(row: Row) -> str:
    """The CLI's attempt column: this attempt of all it may get (``2/4``: one retry of three)."""
    return f"{attempt_number(row)}/{row.retries + 1}"


def retry_of(row: Row) -> str:
    """The dashboard's attempt column: retries used of retries allowed (``1/3``)."""
    return f"{row.retry_attempt}/{row.retries}"


# -- states --------------------------------------------------------------------------------


def process_state(process: JobProcess) -> str:
    """``cancelling`` (a cancel was asked for), ``running`` (started) or ``claimed``."""
    if process.cancel_requested:
        return "cancelling"
    return "running" if process.started_at else "claimed"


def request_state(request: JobRequest, now: datetime.datetime) -> str:
    """``scheduled`` (due after ``now``) or ``pending`` (due: waiting for a worker)."""
    return "scheduled" if request.start_at > now else "pending"


def worker_state(worker: WorkerInfo) -> str:
    """``stale`` (silent for longer than the heartbeat timeout) or ``active``."""
    return "stale" if worker.stale else "active"
