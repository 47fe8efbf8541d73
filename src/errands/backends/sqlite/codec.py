"""SQLite rows as models and models as parameters: uuids as text, times as REAL unix
seconds, lists as JSON; a value raw SQL stored in the wrong type is refused here."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from errands import serialization
from errands.backends.sql import rows as poison
from errands.backends.sql.codec import Codec, Row
from errands.limiting import decode_limits, encode_limits, first_key
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    NewRequest,
    Status,
    WorkerInfo,
)

logger = logging.getLogger("errands")


_TIMESTAMP_COLUMNS = frozenset(
    {
        "created_at",
        "start_at",
        "requested_at",
        "started_at",
        "ended_at",
        "last_heartbeat_at",
        "expires_at",
    }
)
_UUID_COLUMNS = frozenset(
    {"uuid", "request_uuid", "process_uuid", "worker_id", "retry_request_uuid"}
)
_JSON_COLUMNS = frozenset({"parameters", "return_value", "queues", "meta"})
_BOOL_COLUMNS = frozenset({"cancel_requested", "stale"})
_STORED_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("priority", "retries", "retry_attempt", "pid"), (int,)),
    **dict.fromkeys(("job_class", "queue", "concurrency_key", "source"), (str,)),
    **dict.fromkeys(("trace_id", "span_id", "error_type", "error", "traceback"), (str,)),
    "timeout": (float, int),
    **dict.fromkeys(("progress_done", "progress_total"), (int,)),
    "progress_message": (str,),
}


# -- values ---


def to_unix(moment: datetime.datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def from_unix(unix: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)


def json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def column_value(name: str, value: Any) -> Any:
    """A stored value as the models hold it."""
    if name == "limits":  # JSON text, NULL for none; what does not load is left out
        return decode_limits(value)
    if name == "tags":  # JSON text of a list, NULL for none
        return decode_tags(value)
    if value is None:
        if name == "uuid":  # a TEXT PRIMARY KEY may hold NULL in SQLite
            raise TypeError("NULL stored as the row's uuid")
        return None
    if name in _TIMESTAMP_COLUMNS:
        return from_unix(value)
    if name in _UUID_COLUMNS:
        return uuid.UUID(value)
    if name in _JSON_COLUMNS:
        loaded = poison.loads(value)
        if name == "queues" and type(loaded) is not list:
            raise TypeError(f"a worker's queues are a JSON {serialization.json_kind(loaded)}")
        return loaded
    if name in _BOOL_COLUMNS:
        return bool(value)
    if name == "status":
        return Status(value)
    # SQLite stores any type in any column: one a row got by raw SQL is refused here.
    if type(value) not in _STORED_TYPES.get(name, (type(value),)):
        raise TypeError(f"{type(value).__name__} {value!r:.60} stored in {name}")
    return value


def decode_tags(value: Any) -> tuple[str, ...]:
    """The ``tags`` column (JSON text of a list of strings, NULL for none)."""
    if value is None:
        return ()
    loaded = json.loads(value)
    if type(loaded) is not list or not all(type(tag) is str for tag in loaded):
        raise TypeError(f"tags stored as {value!r:.60}")
    return tuple(loaded)


def encode_tags(tags: Sequence[str]) -> str | None:
    return json.dumps(list(tags)) if tags else None


def model_values(row: Row, model: type[Any]) -> dict[str, Any]:
    """The row's columns that are fields of ``model`` (extra columns are internal);
    a placeholder for each value that cannot be loaded (see rows.py)."""
    names = {field.name for field in dataclasses.fields(model)}
    # (iterating a Row yields its values, so .keys() is needed)
    try:
        return {key: column_value(key, row[key]) for key in row.keys() if key in names}  # noqa: SIM118
    except Exception:
        items = [(key, row[key]) for key in row.keys() if key in names]  # noqa: SIM118
        return poison.salvage_values(items, column_value)


def to_request(row: Row) -> JobRequest:
    return JobRequest(**model_values(row, JobRequest))


def to_process(row: Row) -> JobProcess:
    return JobProcess(**model_values(row, JobProcess))


def to_result(row: Row) -> JobResult:
    return JobResult(**model_values(row, JobResult))


def to_worker(row: Row) -> WorkerInfo:
    return WorkerInfo(**model_values(row, WorkerInfo))


def json_list(values: Sequence[Any]) -> str:
    return json.dumps([str(value) for value in values])


def request_json(request: NewRequest) -> dict[str, Any]:
    """One request as an element of the ``insert_requests`` JSON array."""
    return {
        "uuid": str(request.uuid),
        "start_at": to_unix(request.start_at),
        "delay_seconds": request.delay_seconds,
        "job_class": request.job_class,
        "parameters": json.dumps(request.parameters),
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
        "expires_at": to_unix(request.expires_at),
        "tags": encode_tags(request.tags),
        "meta": json_or_null(request.meta),
    }


class SqliteCodec(Codec):
    """uuids as text, times as REAL unix seconds, lists as JSON."""

    def uuid(self, value: UUID) -> Any:
        return str(value)

    def time(self, value: datetime.datetime) -> Any:
        return value.timestamp()

    def texts(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values))

    def json_value(self, value: Any) -> Any:
        return None if value is None else poison.loads(value)

    def moment(self, value: Any) -> datetime.datetime:
        return from_unix(value)

    def uuid_of(self, value: Any) -> UUID:
        return UUID(value) if isinstance(value, str) else value

    def request(self, row: Row) -> JobRequest:
        return to_request(row)

    def process(self, row: Row) -> JobProcess:
        return to_process(row)

    def result(self, row: Row) -> JobResult:
        return to_result(row)

    def worker(self, row: Row) -> WorkerInfo:
        return to_worker(row)
