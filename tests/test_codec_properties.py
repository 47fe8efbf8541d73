"""Properties of the parameter codec and of enqueue options (hypothesis).

Any generated value either comes back exactly (encode -> JSON -> decode in memory
for many examples; encode -> a real database -> read back -> decode for a subset,
on PostgreSQL and SQLite) or is refused with ``ParameterError``, never anything
else. Enqueue options likewise: valid ones are stored exactly, invalid ones raise
``ParameterError``/``ValueError`` and leave no row.

Examples are derandomized (a fixed seed sequence) so that CI runs the same ones
every time: a failure is reproducible from the log, and a run never turns red on
an example no commit introduced. New examples come from changing the strategies.
"""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sample_jobs
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import errands
from errands import ParameterError, serialization
from errands.backends import Backend
from errands.jobs import EnqueueOptions
from errands.registry import build_job
from errands.serialization import MAX_DEPTH, MAX_INT_DIGITS, TAG
from errands.validation import (
    EARLIEST_START,
    LATEST_START,
    MAX_CONCURRENCY_KEY_LENGTH,
    MAX_QUEUE_LENGTH,
)

IN_MEMORY = settings(max_examples=1_500, deadline=None, derandomize=True)
IN_DATABASE = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    # One database per test, shared by its examples: each only adds rows.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- values -----------------------------------------------------------------------------

ODD_CHARACTERS = ["\x00", "\ud800", "\udfff", "\ufffe", "\uffff", "\U0010ffff", "\u2028", "é"]
characters = st.one_of(st.characters(exclude_categories=()), st.sampled_from(ODD_CHARACTERS))
texts = st.one_of(st.text(characters, max_size=12), st.just(TAG))
# Built, not listed: a strategy's repr shows its constants, and repr() refuses
# an int of over 4,300 digits.
huge_integers = st.builds(
    lambda sign, digits, extra: sign * (10 ** (MAX_INT_DIGITS + digits) + extra),
    st.sampled_from([1, -1]),
    st.integers(min_value=-2, max_value=1),
    st.integers(min_value=-3, max_value=3),
)
integers = st.one_of(st.integers(), huge_integers, st.sampled_from([2**63, -(2**63) - 1]))
floats = st.one_of(
    st.floats(),
    st.sampled_from([-0.0, 1e16, -1e16, 9999999999999998.0, 5e-324, 1.7976931348623157e308]),
)
fixed_zones = st.builds(
    datetime.timezone,
    st.timedeltas(
        min_value=datetime.timedelta(hours=-23, minutes=-59),
        max_value=datetime.timedelta(hours=23, minutes=59),
    ),
)
zones = st.one_of(st.none(), fixed_zones, st.timezones())
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    floats.filter(lambda f: not math.isnan(f)),  # NaN is never equal, so not in sets
    texts,
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(timezones=zones),
    st.times(timezones=st.one_of(st.none(), fixed_zones)),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),
)
scalars = st.one_of(
    hashable_scalars,
    st.decimals(allow_nan=True),
    st.times(timezones=st.timezones()),  # a zone with no offset for a bare time: refused
    st.builds(object),  # no codec: refused
)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(texts, children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.frozensets(hashable_scalars, max_size=4),
        st.sets(hashable_scalars, max_size=4),
        st.dictionaries(st.integers(), children, min_size=1, max_size=2),  # refused
    )


def nest(depth: int, shapes: list[str]) -> Any:
    """A value ``depth`` containers deep, of the given container kinds in turn."""
    value: Any = "bottom"
    for level in range(depth):
        kind = shapes[level % len(shapes)]
        value = {"list": [value], "dict": {"k": value}, "tuple": (value,)}[kind]
    return value


deep = st.builds(
    nest,
    st.integers(min_value=MAX_DEPTH - 3, max_value=MAX_DEPTH + 3) | st.sampled_from([500, 2_000]),
    st.lists(st.sampled_from(["list", "dict", "tuple"]), min_size=1, max_size=3),
)
values = st.one_of(st.recursive(scalars, containers, max_leaves=12), deep)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down: -0.0 is not 0.0, 1 is not
    1.0, a tuple is not a list, a time zone's offset is kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, datetime.datetime | datetime.time):
        return a == b and a.utcoffset() == b.utcoffset()
    return bool(a == b)


def encoded_or_refused(value: Any) -> dict[str, Any] | None:
    """The stored form of a job whose one argument is ``value``, or None if refused."""
    try:
        return serialization.encode_arguments("Job", [value], {}, ["value"])
    except ParameterError:
        return None


def storable(data: Any, depth: int = 0) -> None:
    """Assert that ``data`` is JSON both databases keep exactly: text without NUL
    or lone surrogates, ints json can write, floats jsonb gives back as floats,
    and a nesting a reader can decode (two JSON levels per container at most)."""
    assert depth <= 2 * MAX_DEPTH + 4
    if isinstance(data, str):
        assert "\x00" not in data
        data.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(data, bool) or data is None:
        pass
    elif isinstance(data, int):
        assert len(str(abs(data))) <= MAX_INT_DIGITS
    elif isinstance(data, float):
        assert math.isfinite(data) and abs(data) < 1e16 and repr(data) != "-0.0"
    elif isinstance(data, list):
        for item in data:
            storable(item, depth + 1)
    else:
        assert isinstance(data, dict)
        for key, item in data.items():
            storable(key, depth + 1)
            storable(item, depth + 1)


@IN_MEMORY
@given(values)
@pytest.mark.slow
def test_a_value_round_trips_in_memory_or_is_refused(value: Any) -> None:
    encoded = encoded_or_refused(value)
    event("refused" if encoded is None else "stored")  # --hypothesis-show-statistics
    if encoded is None:
        return
    storable(encoded)
    args, kwargs = serialization.decode_arguments(json.loads(json.dumps(encoded)))
    assert kwargs == {} and len(args) == 1
    assert same(args[0], value)


@settings(IN_MEMORY, max_examples=200)
@given(st.lists(st.recursive(scalars, containers, max_leaves=4), max_size=3))
@pytest.mark.slow
def test_a_value_that_contains_itself_is_refused(items: list[Any]) -> None:
    cycle: list[Any] = list(items)
    cycle.append({"again": cycle})
    assert encoded_or_refused(cycle) is None


@IN_DATABASE
@given(value=values)
@pytest.mark.slow
def test_a_value_round_trips_through_the_database_or_is_refused(
    backend: Backend, value: Any
) -> None:
    try:
        request = sample_jobs.Echo(value).run_in_worker()
    except ParameterError:
        assert encoded_or_refused(value) is None
        event("refused")
        return
    event("stored")
    assert request is not None
    stored = errands.get(request.uuid)
    assert stored is not None
    rebuilt = build_job(stored.job_class, stored.parameters)
    assert isinstance(rebuilt, sample_jobs.Echo)
    assert same(rebuilt.value, value)


# -- enqueue options -------------------------------------------------------------------


def text_options(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.text(characters, max_size=8),
        st.integers(min_value=limit - 2, max_value=limit + 2).map(lambda n: "q" * n),
        st.integers(),
    )


numbers = st.one_of(st.integers(), floats, st.sampled_from([1, -1]).map(lambda s: s * 10**400))
day = 86_400.0
option_values = st.fixed_dictionaries(
    {},
    optional={
        "queue": text_options(MAX_QUEUE_LENGTH),
        "concurrency_key": text_options(MAX_CONCURRENCY_KEY_LENGTH),
        "priority": st.one_of(st.none(), st.integers(-(2**32), 2**32), st.booleans()),
        "retries": st.one_of(st.none(), st.integers(-(2**32), 2**32), st.text(max_size=2)),
        "timeout": st.one_of(st.none(), numbers, st.booleans(), st.text(max_size=2)),
        "delay": st.one_of(
            st.none(),
            numbers,
            st.floats(min_value=-3_000_000 * day, max_value=3_000_000 * day),
            st.timedeltas(),
            st.datetimes(timezones=zones),
            st.sampled_from([EARLIEST_START, LATEST_START]),
            st.booleans(),
        ),
    },
)


def valid(options: dict[str, Any]) -> bool:
    """The rules, written out separately from errands' own checks."""
    return all(RULES[name](value) for name, value in options.items())


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    try:
        return is_number(value) and math.isfinite(float(value))
    except OverflowError:  # an int beyond a float's range
        return False


def good_text(value: Any, limit: int, *, empty: bool) -> bool:
    return (
        isinstance(value, str)
        and (empty or value != "")
        and len(value) <= limit
        and "\x00" not in value
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


def good_delay(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, datetime.datetime):
        return value.utcoffset() is not None and EARLIEST_START <= value <= LATEST_START
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value
    if not finite(seconds):
        return False
    due = datetime.datetime.now(datetime.UTC).timestamp() + float(seconds)
    return EARLIEST_START.timestamp() <= due <= LATEST_START.timestamp()


RULES: dict[str, Callable[[Any], bool]] = {
    # Any false value, None or "" or 0, stands for the job's default queue.
    "queue": lambda v: not v or good_text(v, MAX_QUEUE_LENGTH, empty=False),
    "concurrency_key": lambda v: v is None or good_text(v, MAX_CONCURRENCY_KEY_LENGTH, empty=True),
    "priority": lambda v: v is None or (is_number(v) and type(v) is int and -(2**31) <= v < 2**31),
    "retries": lambda v: v is None or (type(v) is int and -(2**31) <= v < 2**31),
    "timeout": lambda v: v is None or (finite(v) and v > 0),
    "delay": good_delay,
}


def near_an_edge(delay: Any) -> bool:
    """A relative delay whose due time is within a day of a limit: the database's
    clock, not this one, decides it, so the example says nothing."""
    if isinstance(delay, datetime.datetime | bool) or delay is None:
        return False
    seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
    if not finite(seconds):
        return False
    due = datetime.datetime.now(datetime.UTC).timestamp() + float(seconds)
    return any(abs(due - edge.timestamp()) < day for edge in (EARLIEST_START, LATEST_START))


def stored_rows(db_url: str, *, delete: bool = False) -> int:
    """Rows in errands_request, counted (or deleted) without decoding them."""
    query = "DELETE FROM errands_request" if delete else "SELECT count(*) FROM errands_request"
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            cursor = conn.execute(query)
            return cursor.rowcount if delete else int(cursor.fetchone()[0])
    with psycopg.connect(db_url) as pg:
        cursor = pg.execute(query)
        return cursor.rowcount if delete else int(cursor.fetchone()[0])  # type: ignore[index]


@IN_DATABASE
@given(options=option_values, count=st.sampled_from([1, 3, 120]))
@pytest.mark.slow
def test_options_are_stored_exactly_or_refused_without_a_row(
    db_url: str, backend: Backend, options: dict[str, Any], count: int
) -> None:
    assume(not near_an_edge(options.get("delay")))
    stored_rows(db_url, delete=True)  # a concurrency key's slot free again
    before_rows, before = stored_rows(db_url), backend.now()
    jobs = [sample_jobs.Echo(n) for n in range(count)]
    try:
        requests = errands.enqueue_many(jobs, options=EnqueueOptions(**options))
    except (ParameterError, ValueError) as exc:
        assert not valid(options), exc
        assert "sample_jobs.Echo" in str(exc)
        assert stored_rows(db_url) == before_rows
        event("refused")
        return
    event("stored")
    assert valid(options), options
    accepted = [r for r in requests if r is not None]
    # A concurrency key admits one job of the batch; without one, all go in.
    assert len(accepted) == (1 if options.get("concurrency_key") else count)
    stored = {r.uuid: r for r in errands.requests(limit=100_000)}
    assert stored.keys() == {r.uuid for r in accepted}
    for request in accepted:
        check_stored(stored[request.uuid], options, before, backend.now(), db_url)


def check_stored(
    request: errands.JobRequest,
    options: dict[str, Any],
    before: datetime.datetime,
    after: datetime.datetime,
    db_url: str,
) -> None:
    assert request.queue == (options.get("queue") or "default")
    assert request.concurrency_key == (options.get("concurrency_key") or "")
    assert request.priority == (options.get("priority") or 0)
    assert request.retries == (options.get("retries") or 0)
    timeout = options.get("timeout")
    assert request.timeout == (None if timeout is None else float(timeout))
    delay = options.get("delay")
    # SQLite keeps times as float seconds: exact to the microsecond only within
    # about 280 years of 1970, to some 30 us at the ends of the calendar.
    slack = datetime.timedelta(microseconds=0 if db_url.startswith("postgresql") else 100)
    if isinstance(delay, datetime.datetime):
        assert abs(request.start_at - delay) <= slack
    elif delay:
        seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
        offset = datetime.timedelta(seconds=float(seconds))
        assert before + offset - slack - datetime.timedelta(seconds=1) <= request.start_at
        assert request.start_at <= after + offset + slack + datetime.timedelta(seconds=1)


def test_uuid_and_bytes_parameters_are_tagged_not_stringified() -> None:
    """A guard on ``same``: it would catch a codec that gave back strings."""
    key = uuid.uuid4()
    assert not same(str(key), key)
    assert not same(0.0, -0.0) and not same(1, 1.0) and not same((1,), [1])
