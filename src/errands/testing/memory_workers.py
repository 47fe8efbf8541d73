"""Heartbeat rows of the in-memory backend: the ``errands_worker`` table as a dict.

The testing helpers run jobs in this process without registering a worker, so
for them the table stays empty (no workers, nothing stale, nothing to rescue).
A worker that does claim from a :class:`~errands.testing.memory.MemoryBackend`
(a test driving the backend directly) registers, beats and is judged stale
exactly as on a database: silent for longer than the timeout, by this clock.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid

from errands.models import WorkerInfo


def _cutoff(now: datetime.datetime, timeout_seconds: float) -> datetime.datetime:
    return now - datetime.timedelta(seconds=timeout_seconds)


class WorkerRows:
    """Registered workers by id; callers hold the backend's lock."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, WorkerInfo] = {}

    def register(self, worker: WorkerInfo, now: datetime.datetime) -> None:
        """Insert, or update all but ``started_at`` (the SQL upsert)."""
        known = self.rows.get(worker.worker_id)
        started_at = now if known is None else known.started_at
        self.rows[worker.worker_id] = dataclasses.replace(
            worker, queues=list(worker.queues), started_at=started_at, last_heartbeat_at=now
        )

    def beat(self, worker_id: uuid.UUID, now: datetime.datetime) -> bool:
        """Refresh a beat; False when the row is gone (the worker was declared dead)."""
        known = self.rows.get(worker_id)
        if known is None:
            return False
        self.rows[worker_id] = dataclasses.replace(known, last_heartbeat_at=now)
        return True

    def remove(self, worker_id: uuid.UUID) -> None:
        self.rows.pop(worker_id, None)

    def is_stale(self, worker: WorkerInfo, now: datetime.datetime, timeout: float) -> bool:
        beat = worker.last_heartbeat_at
        return beat is not None and beat < _cutoff(now, timeout)

    def listed(self, now: datetime.datetime, timeout: float) -> list[WorkerInfo]:
        """Every row with its ``stale`` mark, oldest worker first (as ``list_workers``)."""
        rows = sorted(self.rows.values(), key=lambda w: (w.started_at or now, w.worker_id))
        return [dataclasses.replace(w, stale=self.is_stale(w, now, timeout)) for w in rows]

    def counts(self, now: datetime.datetime, timeout: float) -> tuple[int, int]:
        """(active, stale) workers."""
        stale = sum(1 for w in self.rows.values() if self.is_stale(w, now, timeout))
        return len(self.rows) - stale, stale

    def take_stale(
        self, now: datetime.datetime, timeout: float, *, spare: uuid.UUID | None = None
    ) -> list[uuid.UUID]:
        """Delete the rows of silent workers but ``spare`` (the rescuer) and return their
        ids: whoever takes a row rescues that worker's processes (exactly once, under
        the lock)."""
        stale = [
            w.worker_id
            for w in self.rows.values()
            if w.worker_id != spare and self.is_stale(w, now, timeout)
        ]
        for worker_id in stale:
            del self.rows[worker_id]
        return stale
