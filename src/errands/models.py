"""Plain data for a job's life: request (pending) -> process (claimed/running) -> result.

These classes hold rows as the backends return them. They carry no behaviour
and import nothing from errands but ``limiting`` (the limits a job carries), so
every other module may depend on them.
"""

from __future__ import annotations

import datetime
import enum
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar
from uuid import UUID, SafeUUID

from errands.limiting import Limit


class Status(enum.StrEnum):
    """The terminal status of one process (one attempt at running a job)."""

    SUCCESSFUL = "SUCCESSFUL"
    ERRORED = "ERRORED"  # run() raised, the class or parameters could not be loaded, or timed out
    CANCELLED = "CANCELLED"  # cancelled by an operator, or terminated by a second shutdown signal
    DEFERRED = "DEFERRED"  # run() raised DeferJob; enqueued again unless should_enqueue declined
    LOST = "LOST"  # the process died, or its worker stopped heartbeating


#: Statuses that ``run()`` could not observe itself; ``Job.on_aborted`` fires for them.
ABORTED_STATUSES = frozenset({Status.LOST, Status.CANCELLED})
#: Statuses that count as a failed attempt and may be retried.
FAILED_STATUSES = frozenset({Status.ERRORED, Status.LOST})


def uuid7() -> UUID:
    """A new time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds,
    then 74 random bits.

    Keys made in time order land at the right edge of the primary-key index,
    where its pages are already in memory: a bulk enqueue inserts about a third
    faster than with random (version 4) keys.
    """
    return uuid7s(1)[0]


def uuid7s(count: int) -> list[UUID]:
    """``count`` new version 7 UUIDs (one clock reading and one call for randomness)."""
    fixed = (time.time_ns() // 1_000_000) << 80 | _VERSION_7 | _VARIANT_RFC
    randomness = os.urandom(10 * count)
    keys = []
    for start in range(0, 10 * count, 10):
        rand = int.from_bytes(randomness[start : start + 10])
        # The top 12 random bits go between version and variant, the other 62 after.
        keys.append(_uuid_from_int(fixed | (rand >> 62) << 64 & _RAND_A_MASK | rand & _RAND_B_MASK))
    return keys


def uuid_from_bytes(data: bytes) -> UUID:
    """``UUID(bytes=data)`` at less than half the cost (see ``_uuid_from_int``)."""
    return _uuid_from_int(int.from_bytes(data))


def _uuid_from_int(value: int) -> UUID:
    # UUID(int=...) re-checks a value built in range above; setting its two slots
    # directly (what Python 3.14's own uuid7 does) takes a third of the time.
    key = object.__new__(UUID)
    object.__setattr__(key, "int", value)
    object.__setattr__(key, "is_safe", _SAFETY_UNKNOWN)
    return key


_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A_MASK = 0xFFF << 64
_SAFETY_UNKNOWN = SafeUUID.unknown  # an enum member lookup per key costs as much as the key
_RAND_B_MASK = (1 << 62) - 1


T = TypeVar("T")


def positional_builder(cls: type[T]) -> Callable[..., T]:
    """A constructor of ``cls``, a frozen and slotted dataclass, from all its fields
    in their order.

    A frozen dataclass's own ``__init__`` sets each field through
    ``object.__setattr__``, a quarter of a microsecond a field: building the
    requests of a bulk enqueue, or the processes and outcomes of a busy worker,
    cost 3 to 5 µs per object. This sets the slots through their descriptors, in a
    function generated once per class (the way ``dataclasses`` generates
    ``__init__``), for an equal, still frozen object at a third of the cost. It
    fills in no default and checks nothing: callers pass every field.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    taken = {"obj", "new", "cls"} & set(names)  # the generated function's own names
    if taken:
        raise TypeError(f"{cls.__name__}: fields {sorted(taken)} clash with the builder's names")
    lines = [f"def build({', '.join(names)}):", "    obj = new(cls)"]
    lines += [f"    set_{name}(obj, {name})" for name in names]
    lines.append("    return obj")
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    namespace.update({f"set_{name}": getattr(cls, name).__set__ for name in names})
    exec("\n".join(lines), namespace)  # the names are the class's own fields
    build: Callable[..., T] = namespace["build"]
    return build


class Undecodable:
    """Stands in a model for a stored value errands cannot load (see backends/rows.py).

    A row anyone with write access inserted may hold JSON nested deeper than Python
    decodes, or a value of the wrong type; rather than fail every reader of the
    table, the row is read with this placeholder in that field. It prints as what
    went wrong, and never equals a real value.
    """

    __slots__ = ("column", "problem")

    def __init__(self, column: str, problem: str) -> None:
        self.column = column
        self.problem = problem

    def __repr__(self) -> str:
        return f"<undecodable {self.column}: {self.problem}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Undecodable) and (self.column, self.problem) == (
            other.column,
            other.problem,
        )

    def __hash__(self) -> int:
        return hash((self.column, self.problem))


class UndecodableTime(datetime.datetime):
    """Stands for a stored time errands cannot load (past year 9999, 'infinity').

    The latest time a datetime holds, so that code comparing, sorting or
    subtracting times keeps working; its type tells it apart from a real time.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> UndecodableTime:
        # datetime's own methods (replace, astimezone) call this with their values.
        if not args and not kwargs:
            args, kwargs = (9999, 12, 31, 23, 59, 59, 999999), {"tzinfo": datetime.UTC}
        return super().__new__(cls, *args, **kwargs)

    def __reduce__(self) -> Any:
        return (UndecodableTime, ())

    def __repr__(self) -> str:
        return "<undecodable time>"

    __str__ = __repr__


def _jsonable(value: Any) -> Any:
    if isinstance(value, Undecodable | UndecodableTime):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class NewRequest:
    """What an enqueue asks the backend to insert.

    ``start_at`` is absolute; when it is None the backend computes the due time
    from the database clock as ``now() + delay_seconds``, so enqueuers with a
    skewed clock never schedule early or late.
    """

    job_class: str
    parameters: dict[str, Any]
    queue: str = "default"
    priority: int = 0
    retries: int = 0
    retry_attempt: int = 0
    concurrency_key: str = ""
    delay_seconds: float = 0.0
    start_at: datetime.datetime | None = None
    timeout: float | None = None
    source: str = ""
    trace_id: str | None = None
    span_id: str | None = None
    uuid: UUID = field(default_factory=uuid7)
    limits: tuple[Limit, ...] = ()
    #: expiry: not claimed by then, the job never runs (errands.expiry); None: never expires
    expires_at: datetime.datetime | None = None
    #: tags and metadata (errands.tagging): from enqueue to the result
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A pending job: waiting for its ``start_at`` and a free worker."""

    uuid: UUID
    created_at: datetime.datetime
    start_at: datetime.datetime
    job_class: str
    parameters: dict[str, Any]
    queue: str
    priority: int
    retries: int
    retry_attempt: int
    concurrency_key: str
    timeout: float | None
    source: str
    trace_id: str | None
    span_id: str | None
    #: flow control: the limits the job waits on (errands.Limit), from its enqueue
    limits: tuple[Limit, ...] = ()
    #: expiry: not claimed by then, it ends CANCELLED "expired" (errands.expiry)
    expires_at: datetime.datetime | None = None
    #: tags and metadata (errands.tagging), from its enqueue
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None

    kind = "request"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **_jsonable(asdict(self))}


@dataclass(frozen=True, slots=True)
class JobProcess:
    """A claimed job: owned by ``worker_id``; running once ``started_at`` is set."""

    uuid: UUID
    request_uuid: UUID
    requested_at: datetime.datetime
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    worker_id: UUID
    job_class: str
    parameters: dict[str, Any]
    queue: str
    priority: int
    retries: int
    retry_attempt: int
    concurrency_key: str
    timeout: float | None
    source: str
    trace_id: str | None
    span_id: str | None
    cancel_requested: bool = False
    # When the request was due (its run_in_worker delay, a retry's backoff); None
    # where a backend's listing does not carry it.
    start_at: datetime.datetime | None = None
    limits: tuple[Limit, ...] = ()
    expires_at: datetime.datetime | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None
    #: progress (errands.progress): the last the job reported; None before any
    progress_done: int | None = None
    progress_total: int | None = None
    progress_message: str | None = None

    kind = "process"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **_jsonable(asdict(self))}


@dataclass(frozen=True, slots=True)
class JobResult:
    """The history row of one finished process. One process produces exactly one result."""

    uuid: UUID
    process_uuid: UUID
    request_uuid: UUID
    requested_at: datetime.datetime
    started_at: datetime.datetime | None
    ended_at: datetime.datetime
    created_at: datetime.datetime
    status: Status
    worker_id: UUID | None
    job_class: str
    parameters: dict[str, Any]
    queue: str
    priority: int
    retries: int
    retry_attempt: int
    concurrency_key: str
    timeout: float | None
    source: str
    trace_id: str | None
    span_id: str | None
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    return_value: Any = None
    retry_request_uuid: UUID | None = None
    # When the request was due, so that a delayed job's wait is told apart from
    # its delay; None for results written before schema version 5 recorded it.
    start_at: datetime.datetime | None = None
    limits: tuple[Limit, ...] = ()
    expires_at: datetime.datetime | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None
    #: progress (errands.progress): the last the job reported before it ended
    progress_done: int | None = None
    progress_total: int | None = None
    progress_message: str | None = None

    kind = "result"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **_jsonable(asdict(self))}


@dataclass(frozen=True, slots=True)
class Requeue:
    """Instruction, inside an Outcome, to enqueue the job again (a retry or a deferral).

    The new request copies the process's fields with this ``retry_attempt`` and is
    due ``delay_seconds`` after the database's ``now()``.
    """

    delay_seconds: float
    retry_attempt: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one process ended, as the worker parent reports it to the backend."""

    process_uuid: UUID
    status: Status
    started_at: datetime.datetime | None
    ended_at: datetime.datetime
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    return_value: Any = None
    requeue: Requeue | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's heartbeat row."""

    worker_id: UUID
    hostname: str
    pid: int
    queues: list[str]
    started_at: datetime.datetime | None = None
    last_heartbeat_at: datetime.datetime | None = None
    stale: bool = False

    def as_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self))  # type: ignore[no-any-return]


class Kind(enum.StrEnum):
    """The three tables a job passes through, for operations that take any of them."""

    REQUEST = "request"
    PROCESS = "process"
    RESULT = "result"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rows of one table a page, a count or a bulk operation covers; None means any.

    ``since``/``until`` bound the table's own time column, inclusively: when a
    request was enqueued, when a process was claimed, when a result ended.
    Fields that do not apply to a table are ignored there.
    """

    queue: str | None = None
    job_class: str | None = None
    concurrency_key: str | None = None
    #: the row's own uuid, its request's or its process's
    uuid: UUID | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    #: requests only: True for those due now (pending), False for those due later (scheduled)
    due: bool | None = None
    #: results only
    status: Status | None = None
    #: results only: True for results already retried or deferred (a follow-up request exists)
    retried: bool | None = None
    #: results only: True for final failures ("dead letters": ERRORED or LOST with no
    #: attempts left and never retried since), False for every other result
    final: bool | None = None
    #: rows carrying this tag (errands.tagging)
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    """A place in a listing: the sort time and uuid of the last row already shown.

    The sort time is a request's ``start_at``, a process's ``created_at`` or a
    result's ``ended_at``; the uuid breaks ties, so no row is shown twice or skipped.
    """

    at: datetime.datetime
    uuid: UUID


@dataclass(frozen=True, slots=True)
class PageSpec:
    """One page of a listing, found by keyset (fast at any depth, unlike OFFSET).

    The default order is the natural one of each table: requests due soonest,
    processes claimed longest ago, results ended most recently; ``reverse`` flips it.
    """

    after: Cursor | None = None
    reverse: bool = False
    limit: int = 50


@dataclass(frozen=True, slots=True)
class Throughput:
    """How many results of one status ended in one time bucket."""

    bucket_start: datetime.datetime
    status: Status
    count: int
    #: of those, how many were retried (a follow-up request exists; deferrals excluded)
    retried: int


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One run time of a schedule entry that was enqueued (the scheduler's memory)."""

    entry_key: str
    run_at: datetime.datetime
    request_uuid: UUID | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    pending: int  # due now
    scheduled: int  # due later
    running: int  # claimed processes (started or not)
    oldest_pending_age: float | None  # seconds, database clock


@dataclass(frozen=True, slots=True)
class Stats:
    queues: list[QueueStats]
    results_by_status: dict[str, int]
    workers_active: int
    workers_stale: int

    def as_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self))  # type: ignore[no-any-return]


#: A running job's progress (errands.progress): done, total (None: unknown), message.
Progress = tuple[int, int | None, str | None]


# Positional builders of the models built per job on hot paths (see positional_builder).
build_new_request = positional_builder(NewRequest)
build_job_request = positional_builder(JobRequest)
build_job_process = positional_builder(JobProcess)
build_job_result = positional_builder(JobResult)
build_outcome = positional_builder(Outcome)
