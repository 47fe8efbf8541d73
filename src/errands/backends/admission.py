"""Which limited jobs a claim may take: the one rule of flow control, for every backend.

A claim of limited jobs reads, for the keys it may take jobs of, how many of each
key's jobs are claimed or running (``KeyUsage.running``) and when its jobs were
claimed within the longest rate window (``KeyUsage.starts``), then the due candidates
in claim order. :func:`admit` takes them in that order while every limit of each
allows it, counting what it takes as it goes; the backend then claims exactly those.
The backend holds a lock per key from before it reads the usage until it commits
(PostgreSQL: an advisory lock; SQLite: its write lock; memory: its mutex), so claims
of one key are serialised and never overshoot.

A start is counted from its claim: the worker claims limited jobs only into idle
slots, so a job starts within milliseconds of its claim. The windows are held
``RATE_GUARD`` longer than stated so that those milliseconds cannot put one start
too many in a window measured from the starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from errands.limiting import RATE_UNITS, Limit, decode_limits, queue_limit

RATE_GUARD = 0.05  # seconds a rate window is held beyond its length


@dataclass
class KeyUsage:
    """One key's jobs at claim time."""

    running: int = 0
    #: seconds ago each recent start (claim) was, within the longest window
    starts: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A due request that has limits, in claim order."""

    ref: object  # what the backend claims it by (a uuid)
    limits: tuple[Limit, ...]
    queue: str = ""


@dataclass
class Admission:
    taken: list[object]
    #: seconds until a job held by a rate could be taken (None: none is, or not known)
    retry_in: float | None = None
    #: keys whose jobs were taken, with how many (the rate log records these)
    started: dict[str, int] = field(default_factory=dict)
    #: a job with a rate waits only for an idle runner of this worker
    wants_idle: bool = False


def admit(
    candidates: Sequence[Candidate],
    usage: Mapping[str, KeyUsage],
    *,
    room: int,
    idle: int | None = None,
    queue_rooms: Mapping[str, int | None] | None = None,
) -> Admission:
    """Take, in order, up to ``room`` candidates that every one of their limits allows,
    of which at most ``idle`` (default: ``room``) with a rate: a worker takes those only
    into slots where they start at once. ``queue_rooms`` caps what is taken per queue
    (a worker's own ``--queue NAME:N``; None: no cap)."""
    taken: list[object] = []
    added: dict[str, int] = {}
    retry_in: float | None = None
    rated_room = room if idle is None else min(idle, room)
    left = dict(queue_rooms or {})
    wants_idle = False
    for candidate in candidates:
        if len(taken) >= room:
            break
        rated = any(limit.rate is not None for limit in candidate.limits)
        queue_left = left.get(candidate.queue)
        if rated and rated_room <= 0:
            wants_idle = True
            continue
        if queue_left is not None and queue_left <= 0:
            continue
        wait = _wait(candidate.limits, usage, added)
        if wait == 0.0:
            rated_room -= rated
            if queue_left is not None:
                left[candidate.queue] = queue_left - 1
            taken.append(candidate.ref)
            for key in {str(limit.key) for limit in candidate.limits}:  # once per job and key
                added[key] = added.get(key, 0) + 1
        elif wait is not None:
            retry_in = wait if retry_in is None else min(retry_in, wait)
    rated_keys = {str(lim.key) for c in candidates for lim in c.limits if lim.rate is not None}
    started = {key: count for key, count in added.items() if key in rated_keys}
    return Admission(taken=taken, retry_in=retry_in, started=started, wants_idle=wants_idle)


def _wait(
    limits: Sequence[Limit], usage: Mapping[str, KeyUsage], added: Mapping[str, int]
) -> float | None:
    """0.0 when every limit allows one more job now; else how long until the rates that
    hold it would allow it (None when a concurrency limit holds it: a completion will
    wake the workers)."""
    longest = 0.0
    for limit in limits:
        key = str(limit.key)
        current = usage.get(key) or KeyUsage()
        extra = added.get(key, 0)
        if limit.concurrency is not None and current.running + extra >= limit.concurrency:
            return None
        window = limit.rate_window
        if window is not None:
            longest = max(longest, _rate_wait(window, current.starts, extra))
    return longest


def _rate_wait(window: tuple[int, float], starts: Sequence[float], extra: int) -> float:
    """How long until one more start fits in the window (0.0: now)."""
    count, seconds = window
    held = seconds + RATE_GUARD
    recent = sorted(ago for ago in starts if ago < held)  # newest first
    in_window = len(recent) + extra
    if in_window < count:
        return 0.0
    if extra >= count:  # this claim alone fills the window
        return held
    # The window frees up when enough of the recent starts grow older than it:
    # the (in_window - count + 1)-th oldest leaving lets one more in.
    oldest_first = recent[::-1]
    leaving = oldest_first[in_window - count]
    return max(held - leaving, 0.001)


def candidate_limits(
    stored: Any, *, queue: str = "", queue_limits: Mapping[str, int] | None = None
) -> tuple[Limit, ...]:
    """A request's stored limits, with its queue's ``queue_limits`` entry as one more."""
    limits = decode_limits(stored)
    if queue_limits and queue in queue_limits:
        limits = (*limits, queue_limit(queue, queue_limits[queue]))
    return limits


def longest_window() -> float:
    """How far back starts matter: the longest window a rate can name, and the guard."""
    return max(RATE_UNITS.values()) + RATE_GUARD
