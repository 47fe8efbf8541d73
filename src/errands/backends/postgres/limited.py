"""Claiming limited jobs on PostgreSQL: lock the keys, read their usage, let
``errands.backends.admission`` choose, claim the chosen (queries ``limited_keys``,
``limited_usage`` and ``claim_limited``, explained beside their SQL)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from errands.backends.admission import (
    Admission,
    Candidate,
    KeyUsage,
    admit,
    candidate_limits,
    longest_window,
)
from errands.backends.postgres.codec import tags_of
from errands.backends.postgres.connection import Connection, fetch, fetch_tuples
from errands.backends.store import ClaimRoom
from errands.limiting import QUEUE_KEY_PREFIX, decode_limits
from errands.models import JobProcess, build_job_process

MAX_KEYS = 1000  # keys one claim looks at: past these, the next claims see the rest


def claim_limited(
    conn: Connection,
    *,
    worker_id: uuid.UUID,
    queues: Sequence[str],
    limit: int,
    room: ClaimRoom,
    queue_rooms: dict[str, int | None],
) -> tuple[list[JobProcess], Admission | None]:
    """Claim up to ``limit`` limited jobs (and jobs of capped queues) in one transaction."""
    queue_keys = {QUEUE_KEY_PREFIX + queue: queue for queue in room.queue_limits}
    with conn.transaction():
        # Capped queues are locked like keys: their jobs count under one.
        params: dict[str, Any] = {
            "queues": list(queues),
            "keys": sorted(queue_keys),
            "max_keys": MAX_KEYS,
        }
        caps = _caps(fetch(conn, "limited_keys", params), limit, room)
        locked = set(caps)
        capped = sorted(queue_keys[key] for key in locked & queue_keys.keys())
        usage, candidates = _usage(conn, queues, limit, caps, capped, room)
        # A job's other limit keys must be locked too before its usage is read.
        extra = {key for c in candidates for key in _keys(c) if key not in locked}
        if extra:
            params["keys"] = sorted(extra)
            params["max_keys"] = 0
            caps.update(_caps(fetch(conn, "limited_keys", params), limit, room))
            locked = set(caps)
            usage, candidates = _usage(conn, queues, limit, caps, capped, room)
        # Candidates with a key another claim holds now wait for the next claim.
        candidates = [c for c in candidates if all(k in locked for k in _keys(c))]
        admission = admit(candidates, usage, room=limit, idle=room.idle, queue_rooms=queue_rooms)
        if not admission.taken:
            return [], admission
        rows = fetch_tuples(conn, "claim_limited", _claim_params(worker_id, admission, locked))
    processes = [
        build_job_process(
            *row[:19],
            candidate_limits(row[19]),
            row[20],
            tags_of(row[21]),
            row[22],
            None,
            None,
            None,
        )
        for row in rows
    ]
    order = {ref: position for position, ref in enumerate(admission.taken)}
    processes.sort(key=lambda process: order.get(process.request_uuid, 0))
    return processes, admission


def _caps(rows: list[dict[str, Any]], limit: int, room: ClaimRoom) -> dict[str, int]:
    """Each locked key, with how many of its requests are worth reading: no more than
    its first request's limits on it could let in (a later request declaring more
    waits for the next claim)."""
    caps = {}
    for row in rows:
        key = row["key"]
        bounds = [limit]
        for lim in decode_limits(row["head_limits"]):
            if str(lim.key) == key:
                window = lim.rate_window
                bounds += [n for n in (lim.concurrency, window and window[0]) if n]
        queue = key.removeprefix(QUEUE_KEY_PREFIX)
        if key.startswith(QUEUE_KEY_PREFIX) and queue in room.queue_limits:
            bounds.append(room.queue_limits[queue])
        caps[key] = min(bounds)
    return caps


def _keys(candidate: Candidate) -> list[str]:
    return [str(limit.key) for limit in candidate.limits]


def _usage(
    conn: Connection,
    queues: Sequence[str],
    limit: int,
    caps: dict[str, int],
    capped: list[str],
    room: ClaimRoom,
) -> tuple[dict[str, KeyUsage], list[Candidate]]:
    """The usage of the locked keys and capped queues, and their candidates in claim order."""
    keys = sorted(caps)
    params = {
        "keys": keys,
        "caps": [caps[key] for key in keys],
        "capped": capped,
        "queue_prefix": QUEUE_KEY_PREFIX,
        "queues": list(queues),
        "limit": limit,
        "window": longest_window(),
    }
    usage: dict[str, KeyUsage] = {}
    rows: list[dict[str, Any]] = []
    for row in fetch(conn, "limited_usage", params):
        if row["kind"] == "candidate":
            rows.append(row)
        elif row["kind"] == "running":
            usage.setdefault(row["key"], KeyUsage()).running = int(row["amount"])
        else:
            usage.setdefault(row["key"], KeyUsage()).starts.append(float(row["amount"]))
    rows.sort(key=lambda r: (-r["priority"], r["start_at"], r["created_at"]))
    seen: set[uuid.UUID] = set()
    candidates = []
    for row in rows:
        if row["uuid"] in seen:
            continue
        seen.add(row["uuid"])
        limits = candidate_limits(row["limits"], queue=row["queue"], queue_limits=room.queue_limits)
        candidates.append(Candidate(ref=row["uuid"], limits=limits, queue=row["queue"]))
    return usage, candidates


def _claim_params(worker_id: uuid.UUID, admission: Admission, locked: set[str]) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "uuids": list(admission.taken),
        "started_keys": list(admission.started),
        "started_counts": list(admission.started.values()),
        "keys": sorted(locked),
        "window": longest_window(),
    }
