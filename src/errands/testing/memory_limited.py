"""Flow control in the in-memory backend: which due requests a claim takes, as the
SQL backends choose them (``limited_keys`` and ``limited_usage``, then
``errands.backends.admission``), under the backend's lock (what SQLite's write
lock and PostgreSQL's key locks are there).

Requests without limits, of queues ``queue_limits`` does not cap, are taken in claim
order within the worker's room per queue; the others are candidates: per limit key
(at most ``MAX_KEYS`` keys, in key order) and per capped queue, the first ``limit``
due ones. The backend's ``limit_starts`` (key -> claim times) is the start log.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from errands.backends.admission import (
    Admission,
    Candidate,
    KeyUsage,
    admit,
    longest_window,
)
from errands.backends.store import ClaimRoom
from errands.limiting import QUEUE_KEY_PREFIX, Limit, first_key, queue_limit
from errands.models import JobRequest
from errands.testing.memory_tables import MemoryTables

MAX_KEYS = 1000  # keys one claim looks at, as in the SQL backends


def plain_requests(
    due: Sequence[JobRequest],
    limit: int,
    room: ClaimRoom,
    queue_rooms: dict[str, int | None],
) -> list[JobRequest]:
    """The first ``limit`` of ``due`` (in claim order) without limits, outside the capped
    queues and within each queue's room (``queue_rooms`` is counted down)."""
    taken: list[JobRequest] = []
    for request in due:
        if len(taken) >= limit:
            break
        if request.limits or request.queue in room.queue_limits:
            continue
        left = queue_rooms.get(request.queue)
        if left is not None:
            if left <= 0:
                continue
            queue_rooms[request.queue] = left - 1
        taken.append(request)
    return taken


def limited_admission(
    tables: MemoryTables,
    due: Sequence[JobRequest],
    *,
    limit: int,
    room: ClaimRoom,
    queue_rooms: dict[str, int | None],
    now: datetime.datetime,
) -> tuple[list[JobRequest], Admission]:
    """The limited requests (and requests of capped queues) of ``due`` a claim of at
    most ``limit`` takes; their starts are logged in ``tables.limit_starts``."""
    candidates = _candidates(due, limit, room)
    if not candidates:
        return [], Admission(taken=[])
    usage = _usage(tables, candidates, room, now)
    chosen = admit(
        [c for _, c in candidates], usage, room=limit, idle=room.idle, queue_rooms=queue_rooms
    )
    taken_refs = set(chosen.taken)
    taken = [request for request, c in candidates if c.ref in taken_refs]
    _record_starts(tables, chosen, usage, now)
    return taken, chosen


def _candidates(
    due: Sequence[JobRequest], limit: int, room: ClaimRoom
) -> list[tuple[JobRequest, Candidate]]:
    """Per limit key and per capped queue, the first ``limit`` due requests, in claim order."""
    by_key: dict[str, list[JobRequest]] = {}
    by_queue: dict[str, list[JobRequest]] = {}
    for request in due:  # already in claim order
        key = first_key(request.limits)
        if key is not None:
            by_key.setdefault(key, []).append(request)
        elif request.queue in room.queue_limits:
            by_queue.setdefault(request.queue, []).append(request)
    keys = sorted(by_key)[:MAX_KEYS]
    chosen = {
        r.uuid for group in [*(by_key[k] for k in keys), *by_queue.values()] for r in group[:limit]
    }
    return [
        (request, Candidate(ref=request.uuid, limits=_limits(request, room), queue=request.queue))
        for request in due
        if request.uuid in chosen
    ]


def _limits(request: JobRequest, room: ClaimRoom) -> tuple[Limit, ...]:
    """The request's limits, and its queue's ``queue_limits`` entry as one more."""
    cap = room.queue_limits.get(request.queue)
    return request.limits if cap is None else (*request.limits, queue_limit(request.queue, cap))


def _usage(
    tables: MemoryTables,
    candidates: Sequence[tuple[JobRequest, Candidate]],
    room: ClaimRoom,
    now: datetime.datetime,
) -> dict[str, KeyUsage]:
    """Running jobs and recent starts of every key the candidates name."""
    keys = {str(limit.key) for _, c in candidates for limit in c.limits}
    usage = {key: KeyUsage() for key in keys}
    for process in tables.processes.values():
        for key in {str(limit.key) for limit in process.limits}:  # once per job and key
            if key in usage:
                usage[key].running += 1
        capped = QUEUE_KEY_PREFIX + process.queue
        if process.queue in room.queue_limits and capped in usage:
            usage[capped].running += 1
    window = longest_window()
    for key in keys:
        for started in tables.limit_starts.get(key, []):
            ago = (now - started).total_seconds()
            if ago < window:
                usage[key].starts.append(ago)
    return usage


def _record_starts(
    tables: MemoryTables, chosen: Admission, usage: dict[str, KeyUsage], now: datetime.datetime
) -> None:
    """One start per job taken of each rate-limited key; starts older than any window go."""
    for key, count in chosen.started.items():
        tables.limit_starts.setdefault(key, []).extend([now] * count)
    cutoff = now - datetime.timedelta(seconds=longest_window())
    for key in usage:
        if key in tables.limit_starts:
            kept = [at for at in tables.limit_starts[key] if at >= cutoff]
            if kept:
                tables.limit_starts[key] = kept
            else:
                del tables.limit_starts[key]
