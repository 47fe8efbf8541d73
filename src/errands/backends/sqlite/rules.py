"""Job-state writes on SQLite: what PostgreSQL does in one statement with data-modifying
CTEs, done here with several statements inside one ``BEGIN IMMEDIATE`` transaction
(complete, requeue, lose, cancel). The endings come from ``errands.lifecycle``."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

from errands import expiry, lifecycle
from errands.backends.sql import rows as poison
from errands.backends.sqlite.codec import json_or_null, to_result, to_unix
from errands.backends.sqlite.connection import SqliteSession
from errands.models import (
    JobResult,
    Outcome,
    Requeue,
    Status,
)

logger = logging.getLogger("errands")


#: The columns a request, its process and its result share, copied along the way.
JOB_COLUMNS = (
    "job_class",
    "parameters",
    "queue",
    "priority",
    "retries",
    "retry_attempt",
    "concurrency_key",
    "timeout",
    "source",
    "trace_id",
    "span_id",
    "limits",  # flow control: JSON text, NULL for none
    "expires_at",  # expiry: unix seconds, NULL for never
    "tags",  # errands.tagging: JSON text, NULL for none
    "meta",  # errands.tagging: JSON text, NULL for none
)

# -- writing results -------------------------------------------------------------------


def insert_result(session: SqliteSession, job: sqlite3.Row, **columns: Any) -> JobResult | None:
    """Write one result carrying ``job``'s fields; None if its process already has one."""
    params: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "started_at": None,
        "error_type": "",
        "error": "",
        "traceback": "",
        "return_value": None,
        "retry_request_uuid": None,
        "progress_done": None,  # a request's result (cancelled, expired) has none
        "progress_total": None,
        "progress_message": None,
        **{name: job[name] for name in JOB_COLUMNS},
        "start_at": job["start_at"],  # a process's or a request's due time
        **columns,
    }
    row = session.execute("insert_result", **params).fetchone()
    return None if row is None else to_result(row)


def fail_keyless_requests(session: SqliteSession, claims: dict[Any, str]) -> dict[str, str]:
    """ERRORED results for the requests whose uuid is NULL or a blob; ``claims``
    without them."""
    for request in session.rows("take_keyless_requests"):
        insert_result(
            session,
            request,
            process_uuid=str(uuid4()),
            request_uuid=str(uuid4()),  # the result's must be text
            requested_at=request["created_at"],
            worker_id=None,
            status=str(Status.ERRORED),
            ended_at=session.now,
            error_type=poison.INVALID_JOB_ROW,
            error=f"the stored job cannot be run: its uuid is {request['uuid']!r:.60}",
        )
    return {key: value for key, value in claims.items() if isinstance(key, str)}


def process_identity(process: sqlite3.Row) -> dict[str, Any]:
    """Result columns that come from the process it records."""
    return {
        # A NULL key (raw SQL can write one) would fail the insert, and with it the
        # rescue of every other process of the worker.
        "process_uuid": process["uuid"] or str(uuid4()),
        "request_uuid": process["request_uuid"],
        "requested_at": process["requested_at"],
        "worker_id": process["worker_id"],
        "started_at": process["started_at"],
        # errands.progress: the last the job reported
        "progress_done": process["progress_done"],
        "progress_total": process["progress_total"],
        "progress_message": process["progress_message"],
    }


def requeue(session: SqliteSession, process: sqlite3.Row, requeue: Requeue) -> str:
    """Enqueue the process's job again, due ``delay_seconds`` after now; its new uuid."""
    request_uuid = str(uuid.uuid4())
    job = {name: process[name] for name in JOB_COLUMNS}
    # A row's count (raw SQL may set it to the largest integer SQLite holds) must
    # not overflow, failing the write of the whole batch.
    job["retry_attempt"] = min(requeue.retry_attempt, poison.LARGEST_INT64)
    session.execute(
        "insert_request",
        uuid=request_uuid,
        start_at=session.now + requeue.delay_seconds,
        **job,
    )
    return request_uuid


def complete(session: SqliteSession, process: sqlite3.Row, outcome: Outcome) -> JobResult | None:
    retry_uuid = requeue(session, process, outcome.requeue) if outcome.requeue else None
    columns = process_identity(process)
    if outcome.started_at is not None:  # else the stamp mark_started wrote, if any
        columns["started_at"] = to_unix(outcome.started_at)
    return insert_result(
        session,
        process,
        **columns,
        status=str(outcome.status),
        ended_at=to_unix(outcome.ended_at),
        error_type=outcome.error_type,
        error=outcome.error,
        traceback=outcome.traceback,
        return_value=json_or_null(outcome.return_value),
        retry_request_uuid=retry_uuid,
    )


def lose(
    session: SqliteSession, processes: Sequence[sqlite3.Row], ending: lifecycle.Ending
) -> list[JobResult]:
    """LOST results for processes just deleted (no requeue: the caller decides retries)."""
    results = []
    for process in processes:
        result = insert_result(
            session,
            process,
            **process_identity(process),
            status=str(ending.status),
            ended_at=session.now,
            error_type=ending.error_type,
            error=ending.error,
        )
        if result is not None:
            # What the LOST job is still owed (hooks, a retry), in the same transaction.
            session.run("insert_followup", result_uuid=str(result.uuid), job_class=result.job_class)
            results.append(result)
    return results


def cancel(
    session: SqliteSession,
    request: sqlite3.Row,
    ending: lifecycle.Ending = lifecycle.CANCELLED_PENDING,
) -> JobResult | None:
    """The CANCELLED result of a request just deleted (it never had a process)."""
    return insert_result(
        session,
        request,
        process_uuid=str(uuid4()),
        request_uuid=request["uuid"],
        requested_at=request["created_at"],
        worker_id=None,
        status=str(ending.status),
        ended_at=session.now,
        error_type=ending.error_type,
        error=ending.error,
    )


def expire(session: SqliteSession) -> list[JobResult]:
    """Expired requests (errands.expiry) become their CANCELLED "expired" results, in
    the claim's write transaction, before it reads the due requests."""
    taken = session.rows("take_expired_requests")
    results = [cancel(session, request, expiry.EXPIRED) for request in taken]
    return [result for result in results if result is not None]


def workflow_jobs(session: SqliteSession, moved: Sequence[sqlite3.Row]) -> frozenset[uuid.UUID]:
    """The processes among ``moved`` that are a workflow's jobs (see Claimed)."""
    if not moved:
        return frozenset()
    by_request = {row["request_uuid"]: row["uuid"] for row in moved}
    rows = session.rows("claimed_in_workflows", requests=json.dumps(list(by_request)))
    return frozenset(uuid.UUID(by_request[row["request_uuid"]]) for row in rows)
