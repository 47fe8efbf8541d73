"""Enqueueing on PostgreSQL: one INSERT for a few jobs, COPY for many, and the
transaction that checks concurrency keys (advisory locks per slot)."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from errands.backends.base import ConcurrencySlot, EnqueueTransaction
from errands.backends.postgres.codec import to_process, to_request, utc
from errands.backends.postgres.connection import (
    COPY_THRESHOLD,
    ENTER_SCHEMA,
    LEAVE_SCHEMA,
    Connection,
    Row,
    database_errors,
    execute,
    fetch,
    set_schema,
    statements,
)
from errands.backends.postgres.copy_rows import RequestRows
from errands.backends.sql.workflows import edge_rows, node_rows
from errands.backends.store import SlotState
from errands.limiting import encode_limits, first_key
from errands.models import (
    JobProcess,
    JobRequest,
    NewRequest,
    build_job_request,
)
from errands.workflow_models import WorkflowPlan

logger = logging.getLogger("errands")


# -- query parameters ----------------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def slot_columns(slots: Sequence[ConcurrencySlot]) -> dict[str, list[str]]:
    return {
        "job_class": [job_class for job_class, _ in slots],
        "concurrency_key": [key for _, key in slots],
    }


def request_values(request: NewRequest) -> dict[str, Any]:
    """One request's values, for ``insert_request``."""
    return {
        "uuid": request.uuid,
        "start_at": request.start_at,
        "delay_seconds": float(request.delay_seconds),
        "job_class": request.job_class,
        "parameters": _json(request.parameters),
        "queue": request.queue,
        "priority": request.priority,
        "retries": request.retries,
        "retry_attempt": request.retry_attempt,
        "concurrency_key": request.concurrency_key,
        "timeout": request.timeout,
        "source": request.source,
        "trace_id": request.trace_id,
        "span_id": request.span_id,
        "limits": encode_limits(request.limits),
        "limit_key": first_key(request.limits),
        "expires_at": request.expires_at,
        "tags": list(request.tags) if request.tags else None,
        "meta": _json(request.meta),
    }


def tagging_in(requests: Sequence[NewRequest]) -> bool:
    """Whether a request of the batch has tags or meta (COPY's rows carry neither:
    such a batch goes as one INSERT)."""
    return any(request.tags or request.meta for request in requests)


def request_columns(requests: Sequence[NewRequest]) -> dict[str, list[Any]]:
    """The batch as one array per column, for ``unnest`` in ``insert_requests``."""
    rows = [request_values(request) for request in requests]
    columns = {column: [row[column] for row in rows] for column in rows[0]}
    # Arrays of arrays must be rectangular: each request's tags go as JSON text.
    columns["tags"] = [_json(tags) for tags in columns["tags"]]
    return columns


def insert_requests(conn: Connection, requests: Sequence[NewRequest]) -> list[JobRequest]:
    """Insert a batch on ``conn``: COPY for a large one, else one INSERT statement.

    On a connection in autocommit mode the INSERT is its own transaction: a job
    enqueued alone costs one round trip, with no BEGIN and COMMIT.
    """
    if not requests:
        return []
    if len(requests) >= COPY_THRESHOLD and not tagging_in(requests):
        return copy_requests(conn, requests)
    # Scalar parameters for one job: psycopg adapts them far faster than arrays.
    name, params = (
        ("insert_request", request_values(requests[0]))
        if len(requests) == 1
        else ("insert_requests", request_columns(requests))
    )
    # Text results: a caller's connection may use client-side cursors.
    with conn.cursor(row_factory=tuple_row) as cursor:
        rows = cursor.execute(statements(conn)[name], params).fetchall()
    # The database computed only the two times; the rest is what was sent.
    times = {key: (utc(created_at), utc(start_at)) for key, created_at, start_at in rows}
    return [_as_request(request, *times[request.uuid]) for request in requests]


def copy_requests(conn: Connection, requests: Sequence[NewRequest]) -> list[JobRequest]:
    """Insert a large batch with COPY, the fastest way into a table.

    COPY cannot compute values nor return rows, so the due times are computed
    here from the transaction's ``now()`` (the very value ``insert_requests``
    would use), the returned requests are built from what was sent, and the
    due queues are notified by a statement of their own. Needs a transaction
    (the time read and the COPY must share it).
    """
    now = utc(fetch(conn, "transaction_now")[0]["now"])
    due_times = [_due_time(request, now) for request in requests]
    with conn.cursor() as cursor, cursor.copy(statements(conn)["copy_requests"]) as copy:
        for chunk in RequestRows(conn).stream(requests, now, due_times):
            copy.write(chunk)
    inserted = [_as_request(r, now, at) for r, at in zip(requests, due_times, strict=True)]
    due = sorted({request.queue for request in inserted if request.start_at <= now})
    if due:
        fetch(conn, "notify_queues", {"queues": due})
    return inserted


def _due_time(request: NewRequest, now: datetime.datetime) -> datetime.datetime:
    if request.start_at is not None:
        start_at: datetime.datetime = utc(request.start_at)  # a caller's, in any zone
        return start_at
    if not request.delay_seconds:
        return now
    return now + datetime.timedelta(seconds=request.delay_seconds)


def _as_request(
    request: NewRequest, created_at: datetime.datetime, start_at: datetime.datetime
) -> JobRequest:
    return build_job_request(
        request.uuid,
        created_at,
        start_at,
        request.job_class,
        request.parameters,
        request.queue,
        request.priority,
        request.retries,
        request.retry_attempt,
        request.concurrency_key,
        request.timeout,
        request.source,
        request.trace_id,
        request.span_id,
        request.limits,
        request.expires_at,
        request.tags,
        request.meta,
    )


# -- enqueueing ----------------------------------------------------------------------


NODE_COLUMNS = ("node", "name", "job_class", "run_on_failure", "waiting", "request_uuid")
EDGE_COLUMNS = ("parent", "child", "position")


class PostgresEnqueueTransaction(EnqueueTransaction):
    """Enqueue statements on one connection, inside a transaction someone else ends."""

    def __init__(self, conn: Connection, url: str) -> None:
        self._conn = conn
        self._url = url

    # The I/O, which the psycopg2 variant (contrib.django.dbapi) replaces: every
    # statement below goes through these three.
    def _fetch(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        with database_errors(self._url):
            return fetch(self._conn, name, params)

    def _rowcount(self, name: str, params: Mapping[str, Any]) -> int:
        with database_errors(self._url):
            return execute(self._conn, name, params)

    def lock_slots(self, slots: Sequence[ConcurrencySlot]) -> None:
        if slots:
            self._fetch("lock_slots", slot_columns(slots))

    def slots_in_use(self, slots: Sequence[ConcurrencySlot]) -> set[ConcurrencySlot]:
        if not slots:
            return set()
        rows = self._fetch("slots_in_use", slot_columns(slots))
        return {(row["job_class"], row["concurrency_key"]) for row in rows}

    def requests_for_slot(self, slot: ConcurrencySlot) -> list[JobRequest]:
        params = {"job_class": slot[0], "concurrency_key": slot[1]}
        return [to_request(row) for row in self._fetch("requests_for_slot", params)]

    def processes_for_slot(self, slot: ConcurrencySlot) -> list[JobProcess]:
        params = {"job_class": slot[0], "concurrency_key": slot[1]}
        return [to_process(row) for row in self._fetch("processes_for_slot", params)]

    def insert_requests(self, requests: Sequence[NewRequest]) -> list[JobRequest]:
        with database_errors(self._url):
            return insert_requests(self._conn, requests)

    def unique_slots(
        self, slots: Sequence[ConcurrencySlot], *, successes: bool
    ) -> dict[ConcurrencySlot, SlotState]:
        if not slots:
            return {}
        rows = self._fetch("unique_slots", {**slot_columns(slots), "successes": successes})
        return {
            (row["job_class"], row["concurrency_key"]): SlotState(
                pending=row["pending"], running=row["running"], success_age=row["success_age"]
            )
            for row in rows
        }

    def replace_request(
        self, target: uuid.UUID, new: NewRequest, *, move_due_time: bool
    ) -> JobRequest | None:
        params = {**request_values(new), "target": target, "move_due_time": move_due_time}
        rows = self._fetch("replace_request", params)
        return to_request(rows[0]) if rows else None

    def link_retry(self, *, result_uuid: uuid.UUID, request_uuid: uuid.UUID) -> bool:
        params = {"result_uuid": result_uuid, "request_uuid": request_uuid}
        return self._rowcount("link_retry", params) > 0

    def settle_followup(self, *, result_uuid: uuid.UUID) -> bool:
        return self._rowcount("settle_followup", {"result_uuid": result_uuid}) > 0

    def insert_workflow(self, plan: WorkflowPlan) -> None:
        self._rowcount("insert_workflow", {"uuid": plan.uuid, "name": plan.name})
        nodes = node_rows(plan.nodes)
        self._rowcount(
            "insert_workflow_nodes",
            {
                "workflow_uuid": plan.uuid,
                **{column: [row[column] for row in nodes] for column in NODE_COLUMNS},
            },
        )
        edges = edge_rows(plan.nodes)
        if edges:
            self._rowcount(
                "insert_workflow_edges",
                {
                    "workflow_uuid": plan.uuid,
                    **{column: [row[column] for row in edges] for column in EDGE_COLUMNS},
                },
            )

    def end_workflow_node(self, *, result_uuid: uuid.UUID) -> None:
        self._rowcount("end_workflow_node", {"result_uuid": result_uuid})

    def reserve_occurrences(
        self, occurrences: Sequence[tuple[str, datetime.datetime]]
    ) -> set[tuple[str, datetime.datetime]]:
        if not occurrences:
            return set()
        params = {"entry_key": [k for k, _ in occurrences], "run_at": [t for _, t in occurrences]}
        rows = self._fetch("reserve_occurrences", params)
        return {(row["entry_key"], utc(row["run_at"])) for row in rows}

    def link_occurrence(
        self, *, key: str, run_at: datetime.datetime, request_uuid: uuid.UUID
    ) -> None:
        params = {"entry_key": key, "run_at": run_at, "request_uuid": request_uuid}
        self._fetch("link_occurrence", params)


@contextlib.contextmanager
def joined_transaction(conn: Connection) -> Iterator[None]:
    """Run inside the caller's transaction without ever committing it."""
    if conn.autocommit or conn.info.transaction_status == TransactionStatus.INTRANS:
        # In a transaction this is a savepoint: a failed enqueue undoes only itself.
        # In autocommit there is no caller's transaction to join: the enqueue is
        # its own transaction, as each of the caller's statements would be.
        with conn.transaction():
            yield
    else:
        # Idle and not autocommit: the first statement opens the caller's implicit
        # transaction, which the caller commits or rolls back.
        yield


@contextlib.contextmanager
def caller_schema(conn: Connection, schema: str) -> Iterator[None]:
    """Inside ``joined_transaction`` on a caller's connection: errands' statements for
    ``schema``, with it as the search_path (SET LOCAL) until the block ends, when the
    caller's search_path is back. Nothing without a schema."""
    if not schema:
        yield
        return
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(ENTER_SCHEMA, {"schema": schema}).fetchone()
    before = set_schema(conn, schema)
    try:
        yield
    finally:
        set_schema(conn, before)
        if row is not None and conn.info.transaction_status == TransactionStatus.INTRANS:
            conn.execute(LEAVE_SCHEMA, {"previous": row[0]})
