"""PostgreSQL rows as models and models as parameters (psycopg adapts uuids, times and
lists itself; the worker's batches go as binary arrays, see ``arrays.py``)."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from errands import expiry, lifecycle
from errands.backends.postgres.arrays import (
    EncodedArray,
    json_array,
    text_array,
    timestamptz_array,
    uuid_array,
)
from errands.backends.sql import rows as poison
from errands.backends.sql.codec import Codec, Row
from errands.limiting import decode_limits
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Outcome,
    Status,
    WorkerInfo,
    build_job_result,
)

logger = logging.getLogger("errands")


# -- rows to models ------------------------------------------------------------------


def utc(value: Any) -> Any:
    """Datetimes in UTC whatever the session's TimeZone (a caller's connection may differ)."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not datetime.UTC:
        return value.astimezone(datetime.UTC)
    return value


@functools.cache
def _field_names(model: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(model))


def _fields_of(model: Any, row: Row) -> dict[str, Any]:
    columns = row.keys()  # a dict's view: membership is a hash lookup
    values = {name: utc(row[name]) for name in _field_names(model) if name in columns}
    if "limits" in values:
        values["limits"] = decode_limits(values["limits"])
    if "tags" in values:
        values["tags"] = tags_of(values["tags"])
    return values


def tags_of(value: list[str] | None) -> tuple[str, ...]:
    """A ``text[]`` column's tags (NULL: none)."""
    return tuple(value) if value else ()


def to_request(row: Row) -> JobRequest:
    return JobRequest(**_fields_of(JobRequest, row))


def to_process(row: Row) -> JobProcess:
    return JobProcess(**_fields_of(JobProcess, row))


def to_result(row: Row) -> JobResult:
    values = _fields_of(JobResult, row)
    values["status"] = Status(values["status"])
    return JobResult(**values)


def result_from_tuple(row: tuple[Any, ...]) -> JobResult:
    """A row with the fields of JobResult in their order (see complete_many's SQL),
    read on a worker connection (its times are in UTC already)."""
    values = list(row)
    values[7] = Status(values[7])
    # then expires_at, tags, meta and the three progress columns, last
    values[26] = decode_limits(values[26])
    values[28] = tags_of(values[28])
    return build_job_result(*values)


def to_worker(row: Row) -> WorkerInfo:
    return WorkerInfo(**_fields_of(WorkerInfo, row))


def ending_params(ending: lifecycle.Ending) -> dict[str, str]:
    """The status, error type and message of a result the SQL writes (lose_processes,
    cancel_pending, cancel_pending_selected): the rule's text lives in ``lifecycle`` only."""
    return {"status": str(ending.status), "error_type": ending.error_type, "error": ending.error}


#: The claim's parameters for the results of expired requests (see the claim's SQL).
EXPIRY_PARAMS = {
    "expire_batch": expiry.EXPIRE_BATCH,
    "expired_status": str(expiry.EXPIRED.status),
    "expired_type": expiry.EXPIRED.error_type,
    "expired_error": expiry.EXPIRED.error,
}


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: one in an error message must not fail the batch."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def outcome_columns(outcomes: Sequence[Outcome]) -> dict[str, EncodedArray]:
    """The batch as one binary array per column, for ``unnest`` in ``complete_many``
    (sent by a worker connection: see ``postgres_arrays``).

    Most outcomes are a success without a return value: those need no details.
    A requeued outcome gets its new request's uuid here, so the result can point
    at the request written in the same statement.
    """
    return {
        "process_uuid": uuid_array([o.process_uuid for o in outcomes]),
        "status": text_array([o.status.value for o in outcomes]),
        "started_at": timestamptz_array([o.started_at for o in outcomes]),
        "ended_at": timestamptz_array([o.ended_at for o in outcomes]),
        "details": json_array([_details(o) for o in outcomes]),
    }


def _details(outcome: Outcome) -> str | None:
    """An outcome's fields beyond status and times, as a JSON object (None: it has none)."""
    requeue = outcome.requeue
    if not (
        outcome.error_type
        or outcome.error
        or outcome.traceback
        or outcome.return_value is not None
        or requeue
    ):
        return None
    return json.dumps(
        {
            "error_type": _text(outcome.error_type),
            "error": _text(outcome.error),
            "traceback": _text(outcome.traceback),
            "return_value": outcome.return_value,
            "retry_request_uuid": str(uuid.uuid4()) if requeue else None,
            "requeue_delay_seconds": requeue.delay_seconds if requeue else None,
            # A row's count (raw SQL may set it to the column's largest value) must
            # not overflow the column, failing the write of the whole batch.
            "requeue_attempt": min(requeue.retry_attempt, poison.LARGEST_INT4) if requeue else None,
        }
    )


def first_per_process(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """One outcome per process: a duplicate in a batch could not produce a second result anyway."""
    seen: dict[uuid.UUID, Outcome] = {}
    for outcome in outcomes:
        seen.setdefault(outcome.process_uuid, outcome)
    return list(seen.values())


class PostgresCodec(Codec):
    """psycopg sends uuids, times and lists as they are and reads them back typed."""

    def uuid(self, value: UUID) -> Any:
        return value

    def time(self, value: datetime.datetime) -> Any:
        return value

    def texts(self, values: Sequence[str]) -> Any:
        return list(values)

    def moment(self, value: Any) -> datetime.datetime:
        moment: datetime.datetime = value.astimezone(datetime.UTC)
        return moment

    def uuid_of(self, value: Any) -> UUID:
        return value if isinstance(value, UUID) else UUID(str(value))

    def request(self, row: Row) -> JobRequest:
        return to_request(row)

    def process(self, row: Row) -> JobProcess:
        return to_process(row)

    def result(self, row: Row) -> JobResult:
        return to_result(row)

    def worker(self, row: Row) -> WorkerInfo:
        return to_worker(row)
