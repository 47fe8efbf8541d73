"""Checks of an enqueue's options, made before the database is touched.

Both databases must take every value and give it back as it was: PostgreSQL
refuses NUL characters and lone surrogates in text (SQLite cuts text at a NUL),
an index entry must fit in a page, a timestamp must be one Python can read back.
A value that fails raises ``OptionError`` naming the job class and the option, so
nothing is written. The common case costs one combined test (``plain_options``);
the detailed diagnosis runs only when it fails.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable

from errands.errors import OptionError
from errands.serialization import short_repr as _shown
from errands.serialization import text_problem

# Queue names travel in NOTIFY payloads, worker settings and dashboard URLs.
MAX_QUEUE_LENGTH = 200  # characters
# Concurrency keys are indexed with the job class: 500 characters are at most
# 2,000 bytes of UTF-8, within PostgreSQL's limit for a btree entry (2,704 bytes).
MAX_CONCURRENCY_KEY_LENGTH = 500  # characters
# Due times a day clear of the ends of Python's datetime range (years 1 to 9999),
# so that a due time can be shown in any time zone and compared with any clock.
EARLIEST_START = datetime.datetime(1, 1, 2, tzinfo=datetime.UTC)
LATEST_START = datetime.datetime(9999, 12, 30, tzinfo=datetime.UTC)
# The range of the database's integer columns: a larger value would not be
# stored as given (and a bulk COPY would not even fail on it).
STORABLE_INTEGERS = range(-(2**31), 2**31)

_INF = math.inf
_STORABLE_RANGE = f"{EARLIEST_START.date().isoformat()} to {LATEST_START.date().isoformat()}"
_EXACT_FLOAT_INTEGERS = 2**53  # up to here an int timeout is stored exactly as a float
# Queue names found valid: an application has a few, and a set lookup is cheaper
# than checking again. Bounded, in case names are made up per job.
_checked_queues: set[str] = set()
_CHECKED_QUEUES_KEPT = 1_000


def plain_options(
    priority: object,
    retries: object,
    retry_attempt: object,
    queue: object,
    concurrency_key: object,
    timeout: object,
) -> bool:
    """Whether the options are the common case, valid as they are: exact ints in
    range, a queue name checked before, no concurrency key or a short ASCII one
    without NUL (``isascii`` is O(1) in CPython), and no timeout or a positive
    finite one (NaN fails both comparisons). About 0.15 us: literal bounds, which
    the compiler folds, cost less than global names."""
    return (
        type(priority) is int
        and type(retries) is int
        and type(retry_attempt) is int
        and -(2**31) <= priority < 2**31  # STORABLE_INTEGERS
        and -(2**31) <= retries < 2**31
        and -(2**31) <= retry_attempt < 2**31
        and type(queue) is str
        and queue in _checked_queues
        and type(concurrency_key) is str
        and (
            not concurrency_key
            or (
                len(concurrency_key) <= MAX_CONCURRENCY_KEY_LENGTH
                and concurrency_key.isascii()
                and "\x00" not in concurrency_key
            )
        )
        and (
            timeout is None
            or (type(timeout) is float and 0.0 < timeout < _INF)
            or (type(timeout) is int and 0 < timeout <= _EXACT_FLOAT_INTEGERS)
        )
    )


def checked_options(
    job_class: str,
    priority: object,
    retries: object,
    retry_attempt: object,
    queue: object,
    concurrency_key: object,
    timeout: object,
) -> tuple[str, str, float | None]:
    """The options that ``plain_options`` did not pass, checked one by one: raises
    ``OptionError`` for the first that cannot be stored, else returns the queue,
    concurrency key and timeout as they will be stored."""
    check_integer(job_class, "priority", priority)
    check_integer(job_class, "retries", retries)
    check_integer(job_class, "retry_attempt", retry_attempt)
    checked_queue = _checked_text(job_class, "queue", queue, MAX_QUEUE_LENGTH, empty_ok=False)
    if queue is checked_queue and len(_checked_queues) < _CHECKED_QUEUES_KEPT:
        _checked_queues.add(checked_queue)
    return (
        checked_queue,
        _checked_text(
            job_class, "concurrency_key", concurrency_key, MAX_CONCURRENCY_KEY_LENGTH, empty_ok=True
        ),
        _checked_timeout(job_class, timeout),
    )


def check_integer(job_class: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{job_class}: {name} must be an integer, got {_shown(value)}")
    if value not in STORABLE_INTEGERS:
        raise OptionError(
            f"{job_class}: {name} {_shown(value)} is out of range "
            f"({STORABLE_INTEGERS.start} to {STORABLE_INTEGERS.stop - 1})"
        )


def _checked_text(job_class: str, name: str, value: object, limit: int, *, empty_ok: bool) -> str:
    if not isinstance(value, str):
        raise OptionError(f"{job_class}: {name} must be a string, got {_shown(value)}")
    if not value and not empty_ok:
        raise OptionError(f"{job_class}: {name} must not be empty")
    if len(value) > limit:
        raise OptionError(
            f"{job_class}: {name} is {len(value)} characters long, "
            f"longer than the {limit} allowed: {_shown(value)}"
        )
    problem = text_problem(value)
    if problem is not None:
        raise OptionError(f"{job_class}: {name} {problem}: {_shown(value)}")
    # A str subclass is stored as plain text: psycopg would store an Enum by its
    # name, SQLite's JSON by its value.
    return str.__str__(value)


def _checked_timeout(job_class: str, timeout: object) -> float | None:
    if timeout is None:
        return None
    seconds = _as_seconds(timeout)
    if seconds is None or not 0 < seconds < _INF:
        raise OptionError(
            f"{job_class}: timeout must be a finite number of seconds above 0 "
            f"(or None for no limit), got {_shown(timeout)}"
        )
    return seconds


def resolve_delay(
    delay: object, job_classes: Callable[[], str]
) -> tuple[float, datetime.datetime | None]:
    """(seconds after the database's now, or an absolute start time).

    ``job_classes`` names the batch's classes, for an error message only.
    """
    if delay is None:
        return 0.0, None
    if isinstance(delay, datetime.datetime):
        return 0.0, _checked_start(delay, job_classes)
    if isinstance(delay, datetime.timedelta):
        seconds: object = delay.total_seconds()
    elif isinstance(delay, bool) or not isinstance(delay, int | float):
        raise OptionError(
            f"{job_classes()}: delay must be seconds, a timedelta or an aware datetime, "
            f"got {_shown(delay)}"
        )
    else:
        seconds = delay
    problem = delay_problem(seconds)
    if problem is not None:
        raise OptionError(f"{job_classes()}: delay {problem}, got {_shown(delay)}")
    return _as_seconds(seconds) or 0.0, None


def delay_problem(seconds: object) -> str | None:
    """Why a delay in seconds cannot be stored, or None: it must be a finite number
    whose due time (from now) falls between EARLIEST_START and LATEST_START.

    Also for delays user code computes in the worker (``DeferJob``,
    ``calculate_retry_delay``): the database would refuse, or store a time no
    reader can load.
    """
    value = _as_seconds(seconds)
    if value is None or not math.isfinite(value):
        return "must be a finite number of seconds"
    if value and not _due_in_range(value):
        return f"puts the start outside {_STORABLE_RANGE}"
    return None


def _checked_start(start: datetime.datetime, job_classes: Callable[[], str]) -> datetime.datetime:
    if start.utcoffset() is None:
        raise OptionError(f"{job_classes()}: delay: datetime {start!r} must be timezone-aware")
    if not EARLIEST_START <= start <= LATEST_START:
        raise OptionError(
            f"{job_classes()}: delay: start time {start.isoformat()} is outside {_STORABLE_RANGE}"
        )
    return start


def _due_in_range(seconds: float) -> bool:
    """Whether now + ``seconds`` is within the storable range. The database's clock
    adds the delay; this one stands in for it (the margin covers the skew)."""
    try:
        due = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    except OverflowError:  # past timedelta's range, or datetime's
        return False
    return EARLIEST_START <= due <= LATEST_START


def _as_seconds(value: object) -> float | None:
    """``value`` as a float of seconds; None if it is no number, or an int too
    large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
