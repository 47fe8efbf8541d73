"""Complete and claim in one transaction (PostgreSQL, postgres/handoff.py): the slots
freed by a batch of outcomes go to the key's next requests, never beyond the limit."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import errands
from errands import EnqueueOptions, Limit
from errands.models import Outcome, Status


class Sleepy(errands.Job):
    def run(self) -> None:
        pass


def _done(process: Any) -> Outcome:
    now = datetime.datetime.now(datetime.UTC)
    return Outcome(
        process_uuid=process.uuid, status=Status.SUCCESSFUL, started_at=now, ended_at=now
    )


def test_handoff_refills_freed_slots_and_never_exceeds_the_limit(pg_backend: Any) -> None:
    options = EnqueueOptions(limits=[Limit("api", concurrency=3)])
    errands.enqueue_many([Sleepy() for _ in range(10)], options=options)
    a, b = uuid.uuid4(), uuid.uuid4()
    held = list(pg_backend.claim(worker_id=a, queues=[], limit=10))
    assert len(held) == 3  # the limit
    # Two of A's jobs end: A may take up to 10, but only the 2 freed slots are there.
    results, claimed = pg_backend.complete_and_claim(
        outcomes=[_done(p) for p in held[:2]],
        worker_id=a,
        queues=[],
        room=10,
        keys={"api": {"default"}},
        caps={"api": 3},
    )
    assert len(results) == 2 and len(claimed) == 2
    assert all(p.limits == (Limit("api", concurrency=3),) for p in claimed)
    # Nothing left for another worker while the key is full.
    assert list(pg_backend.claim(worker_id=b, queues=[], limit=10)) == []
    # A's other job ends with no room: written, nothing claimed, the slot stays free.
    results, claimed = pg_backend.complete_and_claim(
        outcomes=[_done(held[2])],
        worker_id=a,
        queues=[],
        room=0,
        keys={"api": {"default"}},
    )
    assert len(results) == 1 and claimed == []
    assert len(list(pg_backend.claim(worker_id=b, queues=[], limit=10))) == 1
