"""Complete and claim in one transaction: the slots a worker's limited jobs free go
straight to the next requests of their keys, for the same worker.

Without it, a key's slots turn over once per cycle of: outcomes written (and a
NOTIFY), the wake-up coming back through the listener, and a claim of five
statements (lock, usage, claim). With it, the transaction that writes the outcomes
locks the freed keys (``handoff_lock``), writes them (``complete_many``) and claims
(``handoff_claim``): the count of a key's running jobs is read after the lock and
after the completions, as a claim of limited jobs reads it, so a key never holds
more than its limit, whichever workers complete and claim at once.

Only the plain case is handed on: a key's requests with one concurrency limit and
no rate, the same as the first request's. Everything else (rates, several limits,
``--queue NAME:N`` caps, ``queue_limits``) goes the usual way: the key is not
locked here, ``complete_many`` notifies its queues, and a claim takes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from errands.backends.postgres.codec import first_per_process, outcome_columns, result_from_tuple
from errands.backends.postgres.connection import fetch, fetch_tuples
from errands.backends.postgres.limited import processes_of
from errands.models import ABORTED_STATUSES, JobProcess, JobResult, Outcome

if TYPE_CHECKING:
    import uuid

    from errands.backends.postgres.backend import PostgresBackend


@dataclass
class Handoff:
    """What a worker may take for the slots its outcomes free."""

    worker_id: uuid.UUID
    queues: Sequence[str]
    #: how many jobs the worker may take now (0: none; the outcomes are only written)
    room: int
    #: each freed key, with the queues of the jobs that freed it (notified if slots
    #: are still free after the hand-off)
    keys: Mapping[str, Iterable[str]] = field(default_factory=dict)
    #: each key's concurrency limit, as its finished jobs declared it: requests read
    #: per key (a request declaring more waits for the next claim, as in _caps)
    caps: Mapping[str, int] = field(default_factory=dict)


def write_outcomes(
    backend: PostgresBackend,
    outcomes: Sequence[Outcome],
    *,
    aborted_only: bool = False,
    handoff: Handoff | None = None,
) -> tuple[list[JobResult], list[JobProcess]]:
    """Write ``outcomes`` (see ``Backend.complete_many``); with a ``handoff`` that has
    room, claim in the same transaction the freed keys' next requests."""
    if not outcomes:
        return [], []
    unique = first_per_process(outcomes)
    returned = sorted(s.value for s in ABORTED_STATUSES) if aborted_only else None
    params = {**outcome_columns(unique), "returned_statuses": returned, "handed_keys": []}
    claimed: list[JobProcess] = []
    with backend._worker_connection() as conn:
        if handoff is None or handoff.room <= 0 or not handoff.keys:
            rows = fetch_tuples(conn, "complete_many", params)
        else:
            with conn.transaction():
                lock = {"keys": sorted(handoff.keys)}
                locked = [row["key"] for row in fetch(conn, "handoff_lock", lock)]
                params["handed_keys"] = locked
                rows = fetch_tuples(conn, "complete_many", params)
                if locked:
                    claimed = _claim(conn, handoff, locked)
            if claimed:  # counted toward the worker's vacuum, as a claim's jobs are
                backend._vacuum.after_claim(
                    conn, claimed=len(claimed), limit=handoff.room, limited=True
                )
    gone = {row[1] for row in rows if row[0] is None}  # their processes were rescued
    if gone:
        backend.record_late_outcomes([o for o in unique if o.process_uuid in gone])
    by_process = {row[1]: result_from_tuple(row) for row in rows if row[0] is not None}
    results = [by_process[o.process_uuid] for o in unique if o.process_uuid in by_process]
    return results, claimed


def _claim(conn: object, handoff: Handoff, locked: list[str]) -> list[JobProcess]:
    pairs = sorted({(key, queue) for key in locked for queue in handoff.keys[key]})
    params = {
        "keys": locked,
        "caps": [min(handoff.room, handoff.caps.get(key, handoff.room)) for key in locked],
        "queues": list(handoff.queues),
        "limit": handoff.room,
        "worker_id": handoff.worker_id,
        "notify_keys": [key for key, _ in pairs],
        "notify_queues": [queue for _, queue in pairs],
    }
    rows = fetch_tuples(conn, "handoff_claim", params)  # type: ignore[arg-type]
    # The last row is the NOTIFYs' (all NULL); RETURNING keeps no claim order.
    rows = sorted((row for row in rows if row[0] is not None), key=lambda r: (-r[9], r[18], r[2]))
    return processes_of(rows)
