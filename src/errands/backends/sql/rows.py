"""Rows errands cannot load ("poison rows"): read them anyway, and fail only their job.

Anyone who can write to the tables can insert a row Python cannot load: JSON
nested deeper than ``json`` decodes, a time past year 9999 (PostgreSQL accepts
it, ``datetime`` cannot hold it), text where SQLite stores an integer. Loading
such a row used to raise in whatever read it: a claim (after it had committed,
so its whole batch was stranded), every maintenance tick (so rescue and pruning
stopped), every listing of the CLI and the dashboard.

Here a row is read value by value instead, each value that fails to load
replaced by a placeholder of the field's type where it has one (``UndecodableTime``,
``UndecodableInt``...; ``Undecodable`` for JSON), so every reader gets its models
and can sort, subtract and print them. Only after a load failed: the happy path
keeps psycopg's and the SQLite backend's own decoding, with a ``try`` around it,
a length check on JSON (:func:`loads`: JSON too deep to pickle counts as
undecodable) and, on SQLite, a type check of the columns it does not convert.
A claim that read such a row fails that job alone with ``InvalidJobRow``
(:func:`fail_invalid`); the job's other fields stay as stored, for the operator.

Rows that load but are no job's (parameters that are a JSON array, a malformed
``args``) reach the job process, where building the job fails anyway: there
``registry.build_job`` names the row the cause (``serialization.invalid_arguments``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from errands.errors import InvalidJobRow
from errands.models import JobProcess, Outcome, Status, Undecodable, UndecodableTime
from errands.serialization import arguments_problem

if TYPE_CHECKING:
    import psycopg

    from errands.backends.base import Backend

logger = logging.getLogger("errands")

TIME_COLUMNS = frozenset(
    {
        "created_at",
        "start_at",
        "requested_at",
        "started_at",
        "ended_at",
        "last_heartbeat_at",
        "applied_at",
        "run_at",
        "paused_at",
    }
)
# Deeper than any JSON errands writes: serialization.MAX_DEPTH levels of values,
# each at most two of JSON (a tagged value wraps its items), within the wrapping
# of a job's arguments; and well short of what Python cannot pickle or copy.
NESTING_LIMIT = 256
_LONG = 2 * NESTING_LIMIT  # nesting n levels takes 2n brackets: most JSON is shorter
TOO_DEEP = f"JSON nested deeper than {NESTING_LIMIT} levels"
LARGEST_INT4 = 2**31 - 1  # PostgreSQL's integer columns
LARGEST_INT64 = 2**63 - 1  # SQLite's
INVALID_JOB_ROW = f"{InvalidJobRow.__module__}.{InvalidJobRow.__qualname__}"
# The fields a worker needs of a claimed job, with the type each must have.
_JOB_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "uuid": uuid.UUID,
    "request_uuid": uuid.UUID,
    "worker_id": uuid.UUID,
    "job_class": str,
    "queue": str,
    "priority": int,
    "retries": int,
    "retry_attempt": int,
    "concurrency_key": str,
    "timeout": (int, float, type(None)),
    "source": str,
    "trace_id": (str, type(None)),
    "span_id": (str, type(None)),
}
# How many rows were read with placeholders, ever: a claim compares it before and
# after reading its rows, so the happy path pays no check per row. (Another
# thread's salvage in between only makes the claim check a batch for nothing.)
_salvaged = 0


def salvage_mark() -> int:
    return _salvaged


def _count_salvage() -> None:
    global _salvaged
    _salvaged += 1


class UndecodableInt(int):
    """Stands for a stored integer errands cannot load: 0, so sums and comparisons work."""

    def __repr__(self) -> str:
        return "<undecodable number>"


class UndecodableFloat(float):
    """Stands for a stored number (a timeout) errands cannot load: 0."""

    def __repr__(self) -> str:
        return "<undecodable number>"


class UndecodableText(str):
    """Stands for stored text errands cannot load, and says so when shown."""

    __slots__ = ()


class UndecodableUUID(uuid.UUID):
    """Stands for a stored uuid errands cannot load: the nil uuid, which names no job."""

    __slots__ = ()


#: Types that only placeholders have: a model holding one came from a poison row.
PLACEHOLDERS = (
    Undecodable,
    UndecodableTime,
    UndecodableInt,
    UndecodableFloat,
    UndecodableText,
    UndecodableUUID,
)
_INT_COLUMNS = frozenset({"priority", "retries", "retry_attempt", "pid"})
_UUID_COLUMNS = frozenset(
    {"uuid", "request_uuid", "process_uuid", "worker_id", "retry_request_uuid"}
)
_TEXT_COLUMNS = frozenset(
    {"job_class", "queue", "concurrency_key", "source", "trace_id", "span_id"}
    | {"error_type", "error", "traceback", "hostname"}
)


def loads(data: bytes | str) -> Any:
    """``json.loads``, refusing JSON nested deeper than errands ever writes.

    Enqueueing refuses values nested deeper than ``serialization.MAX_DEPTH``, so
    stored JSON deeper than ``NESTING_LIMIT`` came from raw SQL. Python loads JSON
    some hundreds of levels deeper still, but then cannot pickle it to a job
    process, nor copy or print it: the parent worker itself failed at every turn.
    The length, then a count of brackets (in C), spare the exact check to the
    rare values long enough and with brackets enough to be that deep.
    """
    value = json.loads(data)
    if len(data) > _LONG and _too_deep(data, value):
        raise ValueError(TOO_DEEP)
    return value


def _too_deep(data: bytes | str, value: Any) -> bool:
    opening = (b"[", b"{") if isinstance(data, bytes) else ("[", "{")
    brackets = data.count(opening[0]) + data.count(opening[1])  # type: ignore[arg-type]
    return brackets > NESTING_LIMIT and _deeper_than(value, NESTING_LIMIT)


def _deeper_than(value: Any, limit: int) -> bool:
    # Without recursion: the value may be nested as deep as Python's own limit.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def bound_json(conn: psycopg.Connection[Any]) -> None:
    """Load jsonb as :func:`loads` does, on ``conn`` (a pool's ``configure``)."""
    from psycopg.types.json import JsonbBinaryLoader, JsonbLoader

    # Subclasses, rather than set_json_loads(loads): psycopg's loaders then call
    # json.loads directly, without a Python call more per value.
    class BoundedJsonbLoader(JsonbLoader):
        def load(self, data: Any) -> Any:
            text = data if isinstance(data, bytes) else bytes(data)
            value = json.loads(text)
            if len(text) > _LONG and _too_deep(text, value):
                raise ValueError(TOO_DEEP)
            return value

    class BoundedJsonbBinaryLoader(JsonbBinaryLoader):
        def load(self, data: Any) -> Any:
            if data and data[0] != 1:
                raise ValueError(f"unknown jsonb binary format: {data[0]}")
            text = bytes(data[1:])
            value = json.loads(text)
            if len(text) > _LONG and _too_deep(text, value):
                raise ValueError(TOO_DEEP)
            return value

    conn.adapters.register_loader("jsonb", BoundedJsonbLoader)
    conn.adapters.register_loader("jsonb", BoundedJsonbBinaryLoader)


def placeholder(column: str, exc: BaseException) -> Any:
    """What a model holds for a stored value that failed to load with ``exc``: a value
    of the field's own type where it has one, so that code using the model (sorting,
    subtracting times, formatting) keeps working, yet one :func:`job_problem` spots."""
    if column in TIME_COLUMNS:
        return UndecodableTime()
    if column in _INT_COLUMNS:
        return UndecodableInt(0)
    if column == "timeout":
        return UndecodableFloat(0.0)
    if column in _UUID_COLUMNS:
        return UndecodableUUID(int=0)
    if column in _TEXT_COLUMNS:
        return UndecodableText(f"<undecodable {column}: {describe(exc)}>")
    if column == "queues":  # a worker's, a list of names
        return [UndecodableText(f"<undecodable {column}: {describe(exc)}>")]
    return Undecodable(column, describe(exc))


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# -- reading ---------------------------------------------------------------------------


def salvage_tuples(cursor: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
    """The rows of the cursor's current result, loaded value by value; for a fetch
    that raised. The statement has run (and in autocommit, committed): its rows
    are still in memory, so nothing is lost by reading them again."""
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    result = cursor.pgresult
    if result is None:
        return []
    transformer = Transformer(cursor)
    columns = range(result.nfields)
    names = [(result.fname(c) or b"?").decode() for c in columns]
    loaders = [transformer.get_loader(result.ftype(c), Format(result.fformat(c))) for c in columns]
    _count_salvage()
    return [
        tuple(_load(loaders[c], result.get_value(row, c), names[c]) for c in columns)
        for row in range(result.ntuples)
    ]


def salvage_dicts(cursor: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    """As :func:`salvage_tuples`, each row a dict by column name."""
    result = cursor.pgresult
    if result is None:
        return []
    names = [(result.fname(c) or b"?").decode() for c in range(result.nfields)]
    return [dict(zip(names, row, strict=True)) for row in salvage_tuples(cursor)]


def _load(loader: Any, data: bytes | None, column: str) -> Any:
    if data is None:
        return None
    try:
        return loader.load(data)
    except Exception as exc:  # RecursionError, psycopg.DataError, ValueError ...
        return placeholder(column, exc)


def salvage_values(
    items: Sequence[tuple[str, Any]], convert: Callable[[str, Any], Any]
) -> dict[str, Any]:
    """``{name: convert(name, value)}``, a placeholder for each value ``convert``
    refuses; for the SQLite backend, whose values are converted in Python."""
    _count_salvage()
    values = {}
    for name, value in items:
        try:
            values[name] = convert(name, value)
        except Exception as exc:
            values[name] = placeholder(name, exc)
    return values


# -- judging a job -----------------------------------------------------------------------


def job_problem(job: JobProcess) -> str | None:
    """What makes a claimed job's row unusable, or None when it can be run."""
    problems = []
    for field in dataclasses.fields(job):
        value = getattr(job, field.name)
        expected = _JOB_FIELD_TYPES.get(field.name)
        if isinstance(value, Undecodable):
            problems.append(f"{field.name} cannot be loaded ({value.problem})")
        elif isinstance(value, PLACEHOLDERS):
            problems.append(f"{field.name} cannot be loaded ({value!r:.200})")
        elif expected is not None and (isinstance(value, bool) or not isinstance(value, expected)):
            problems.append(f"{field.name} holds {type(value).__name__} {value!r:.60}")
    if not isinstance(job.parameters, Undecodable):
        arguments = arguments_problem(job.parameters)
        if arguments is not None:
            problems.append(arguments)
    return "; ".join(problems) or None


def fail_invalid(backend: Backend, processes: list[JobProcess]) -> list[JobProcess]:
    """The claimed ``processes`` that can run; each other one gets its ERRORED result
    now (``InvalidJobRow``, not retried: the row would fail again)."""
    runnable, failed = [], []
    ended_at = datetime.datetime.now(datetime.UTC)
    for process in processes:
        problem = job_problem(process)
        if problem is None:
            runnable.append(process)
            continue
        logger.error(
            "claimed a job whose row cannot be loaded; it fails",
            extra={"job_uuid": str(process.uuid), "problem": problem},
        )
        failed.append(
            Outcome(
                process_uuid=process.uuid,
                status=Status.ERRORED,
                started_at=None,
                ended_at=ended_at,
                error_type=INVALID_JOB_ROW,
                error=f"the stored job cannot be run: {problem}",
            )
        )
    if failed:
        # Only aborted results come back: none of these, so none is loaded again.
        backend.complete_many(outcomes=failed, aborted_only=True)
    return runnable
