"""Claiming on SQLite: the requests without limits (the fast path), then limited jobs
as ``errands.backends.admission`` admits them (queries ``due_requests_*``,
``limited_keys``, ``limited_usage``, ``log_limit_starts`` and ``trim_limit_starts``,
explained beside their SQL).

Everything runs inside the claim's ``BEGIN IMMEDIATE``: SQLite's single write lock
serialises every claim, so the usage a claim reads cannot change before it commits
and no key needs a lock of its own (PostgreSQL takes an advisory lock per key).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from errands.backends.admission import (
    Admission,
    Candidate,
    KeyUsage,
    admit,
    candidate_limits,
    longest_window,
)
from errands.backends.sqlite.connection import SqliteSession
from errands.backends.sqlite.rules import fail_keyless_requests
from errands.backends.store import Claimed, ClaimRoom
from errands.limiting import QUEUE_KEY_PREFIX
from errands.models import JobProcess

MAX_KEYS = 1000  # keys one claim looks at: past these, the next claims see the rest


@dataclass
class ClaimPlan:
    """What one claim may take: its queues (empty: every queue), the room it has
    in each (``--queue NAME:N``; None: no cap of its own) and the capped queues."""

    queues: list[str]
    room: ClaimRoom
    queue_rooms: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def of(cls, queues: Sequence[str], room: ClaimRoom | None) -> ClaimPlan:
        room = room or ClaimRoom()
        named = list(dict.fromkeys(queues))
        return cls(named, room, {queue: room.rooms.get(queue) for queue in named})

    @property
    def capped(self) -> list[str]:
        return sorted(self.room.queue_limits)

    def took(self, queues: Sequence[str]) -> None:
        """Count jobs just taken (one queue name each) against the queues' rooms."""
        for queue in queues:
            left = self.queue_rooms.get(queue)
            if left is not None:
                self.queue_rooms[queue] = left - 1


# -- the fast path: requests without limits ---------------------------------------------


def due_requests(session: SqliteSession, plan: ClaimPlan, limit: int) -> list[str]:
    """Uuids of due requests without limits in claim order, at most ``limit`` and at
    most its room per queue, none of a capped queue (those are claimed as limited)."""
    if not plan.queues:
        rows = session.rows("due_requests_any_queue", capped=json.dumps(plan.capped), limit=limit)
        return [row["uuid"] for row in rows]
    capped = set(plan.capped)
    wanted = [queue for queue in plan.queues if queue not in capped]
    free = [queue for queue in wanted if plan.queue_rooms.get(queue) is None]
    groups = [(free, limit)] if free else []
    for queue in wanted:
        room = plan.queue_rooms.get(queue)
        if room is not None and room > 0:
            groups.append(([queue], min(limit, room)))
    rows = []
    for names, most in groups:
        rows += session.rows("due_requests_of_queues", queues=json.dumps(names), limit=most)
    if len(groups) > 1:  # each group came in claim order: merge them
        rows.sort(key=claim_order)
    return [row["uuid"] for row in rows[:limit]]


def claim_order(row: Any) -> tuple[float, float, float]:
    """Priority descending, then due time, then age; a value raw SQL stored in the
    wrong type sorts as 0 (the claim then fails its job as invalid)."""
    return (-_number(row["priority"]), _number(row["start_at"]), _number(row["created_at"]))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


# -- the limited path ---------------------------------------------------------------------


def admission(
    session: SqliteSession, plan: ClaimPlan, limit: int, *, writing: bool = True
) -> tuple[Admission, list[str]]:
    """Which limited requests (and requests of capped queues) the claim may take, at
    most ``limit``; and the keys whose usage was read. Not ``writing`` (a look in a
    read transaction), requests that cannot be claimed are only passed over."""
    params: dict[str, Any] = {"queues": json.dumps(plan.queues), "max_keys": MAX_KEYS}
    keys = [row["key"] for row in session.rows("limited_keys", params)]
    if not keys and not plan.capped:
        return Admission(taken=[]), []
    usage, candidates = _usage(session, plan, limit, keys)
    # A job's other limit keys are counted too: read again with them.
    capped_keys = {QUEUE_KEY_PREFIX + queue for queue in plan.capped}
    extra = {key for c in candidates for key in _keys(c)} - set(keys) - capped_keys
    if extra:
        keys = sorted({*keys, *extra})
        usage, candidates = _usage(session, plan, limit, keys)
        known = {*keys, *capped_keys}
        candidates = [c for c in candidates if all(key in known for key in _keys(c))]
    if any(not isinstance(c.ref, str) for c in candidates):
        # A uuid that is NULL or a blob (raw SQL): see take_keyless_requests.
        if writing:
            fail_keyless_requests(session, {})
        candidates = [c for c in candidates if isinstance(c.ref, str)]
    chosen = admit(candidates, usage, room=limit, idle=plan.room.idle, queue_rooms=plan.queue_rooms)
    return chosen, keys


def record_starts(session: SqliteSession, chosen: Admission, keys: Sequence[str]) -> None:
    """Log one start per job taken of each rate-limited key, and forget old starts."""
    if chosen.started:
        starts = [key for key, count in chosen.started.items() for _ in range(count)]
        session.execute("log_limit_starts", starts=json.dumps(starts))
    if keys:
        session.execute("trim_limit_starts", keys=json.dumps(list(keys)), window=longest_window())


def _keys(candidate: Candidate) -> list[str]:
    return [str(limit.key) for limit in candidate.limits]


def _usage(
    session: SqliteSession, plan: ClaimPlan, limit: int, keys: Sequence[str]
) -> tuple[dict[str, KeyUsage], list[Candidate]]:
    """The usage of ``keys`` and of the capped queues, and their candidates in claim order."""
    params = {
        "keys": json.dumps(list(keys)),
        "capped": json.dumps(plan.capped),
        "queue_prefix": QUEUE_KEY_PREFIX,
        "queues": json.dumps(plan.queues),
        "limit": limit,
        "window": longest_window(),
    }
    usage: dict[str, KeyUsage] = {}
    rows = []
    for row in session.rows("limited_usage", params):
        if row["kind"] == "candidate":
            rows.append(row)
        elif row["kind"] == "running":
            usage.setdefault(str(row["key"]), KeyUsage()).running = int(row["amount"])
        else:
            usage.setdefault(str(row["key"]), KeyUsage()).starts.append(float(row["amount"]))
    rows.sort(key=claim_order)
    seen: set[object] = set()
    candidates = []
    for row in rows:
        ref = row["uuid"]
        if ref in seen:
            continue
        seen.add(ref)
        limits = candidate_limits(
            row["limits"], queue=row["queue"], queue_limits=plan.room.queue_limits
        )
        candidates.append(Candidate(ref=ref, limits=limits, queue=row["queue"]))
    return usage, candidates


def process_uuids(request_uuids: Sequence[str]) -> dict[str, str]:
    """A new process uuid for each request claimed."""
    return {request_uuid: str(uuid.uuid4()) for request_uuid in request_uuids}


def claimed(
    processes: Sequence[JobProcess], chosen: Admission | None, expired: tuple[str, ...] = ()
) -> Claimed:
    """The processes, what held back the limited jobs the claim did not take, and the
    queues of the requests it ended as expired."""
    claimed = Claimed(processes)
    claimed.expired = expired
    if chosen is not None:
        claimed.retry_in, claimed.wants_idle = chosen.retry_in, chosen.wants_idle
    return claimed
