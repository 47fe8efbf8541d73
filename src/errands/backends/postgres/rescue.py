"""Rescuing a dead worker's jobs on PostgreSQL: its processes become LOST results, in
the caller's transaction (the statements and why they cannot deadlock: queries.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from errands import lifecycle
from errands.backends.postgres.codec import ending_params, to_result
from errands.backends.postgres.connection import Connection, fetch
from errands.models import JobResult


def stale_worker(conn: Connection, worker_id: uuid.UUID, timeout_seconds: float) -> list[JobResult]:
    """The LOST results of a worker silent for ``timeout_seconds``; none when a peer
    rescued it first, or it beat again (its heartbeat row is the exactly-once gate)."""
    params = {"worker_id": worker_id, "timeout_seconds": float(timeout_seconds)}
    if not fetch(conn, "delete_stale_worker", params):
        return []
    return lose(conn, worker_id, None, lifecycle.lost_with_worker(worker_id, timeout_seconds))


def vanished_worker(
    conn: Connection, worker_id: uuid.UUID, timeout_seconds: float
) -> list[JobResult]:
    """The LOST results of the processes of a worker without a heartbeat row, those
    no other rescuer holds."""
    params = {"worker_id": worker_id, "timeout_seconds": float(timeout_seconds)}
    uuids = [row["uuid"] for row in fetch(conn, "lock_orphaned_processes", params)]
    if not uuids:
        return []
    return lose(conn, worker_id, uuids, lifecycle.lost_without_heartbeat_row(worker_id))


def lose(
    conn: Connection,
    worker_id: uuid.UUID,
    process_uuids: Sequence[uuid.UUID] | None,
    ending: lifecycle.Ending,
) -> list[JobResult]:
    """Turn the worker's processes (all when ``process_uuids`` is None) into results
    of ``ending``."""
    params = {
        "worker_id": worker_id,
        "process_uuids": None if process_uuids is None else list(process_uuids),
        **ending_params(ending),
    }
    return [to_result(row) for row in fetch(conn, "lose_processes", params)]
