"""Parameters as JSON: exact round trips, tagged types, clear refusals."""

from __future__ import annotations

import datetime
import json
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sample_jobs

import errands
from errands import ParameterError, register_type, serialization
from errands.backends.sql.rows import NESTING_LIMIT
from errands.registry import build_job


class Money:
    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (other.cents, other.currency) == (
            self.cents,
            self.currency,
        )

    __hash__ = None  # type: ignore[assignment]


register_type(
    Money,
    name="test.Money",
    encode=lambda m: [m.cents, m.currency],
    decode=lambda v: Money(*v),
)

VALUES: list[Any] = [
    None,
    True,
    0,
    -7,
    1.5,
    "text",
    [1, "two", [3.0]],
    {"nested": {"list": [1, 2]}},
    datetime.datetime(2026, 3, 29, 1, 30, tzinfo=datetime.UTC),
    datetime.datetime(2026, 3, 29, 1, 30, 0, 123456),
    datetime.date(2026, 2, 28),
    datetime.time(23, 59, 1),
    datetime.timedelta(days=-1, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("1.10"),
    b"\x00\xff",
    (1, (2, 3)),
    {1, 2, 3},
    frozenset({"a"}),
    {"__errands__": "not a tag", "value": 1},
    Money(250, "EUR"),
    {"deep": [(Decimal("0.1"), {datetime.date(2026, 1, 1)})]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip_through_json_keeps_value_and_type(value: Any) -> None:
    stored = json.loads(json.dumps(serialization.encode(value)))
    restored = serialization.decode(stored)
    assert restored == value
    assert type(restored) is type(value)


def test_arguments_keep_positional_and_keyword_parts() -> None:
    stored = serialization.encode_arguments("app.Job", [1, (2,)], {"when": Decimal("3")}, ["a"])
    args, kwargs = serialization.decode_arguments(json.loads(json.dumps(stored)))
    assert args == [1, (2,)]
    assert kwargs == {"when": Decimal("3")}


def test_unstorable_argument_names_class_and_parameter() -> None:
    with pytest.raises(ParameterError) as info:
        serialization.encode_arguments("app.Report", [1, {"x": object()}], {}, ["user_id", "opts"])
    message = str(info.value)
    assert "app.Report" in message
    assert "opts['x']" in message
    assert "object" in message


@pytest.mark.parametrize(
    "value", [float("nan"), {1: "int key"}, object()], ids=["nan", "int-key", "object"]
)
def test_values_json_cannot_hold_are_refused(value: Any) -> None:
    with pytest.raises(ParameterError):
        serialization.encode(value, job_class="app.Job", parameter="p")


def test_unknown_tag_when_decoding_says_how_to_fix() -> None:
    with pytest.raises(ParameterError, match="register_type"):
        serialization.decode({"__errands__": "app.Unknown", "value": 1})


def test_reserved_tags_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="reserved"):
        register_type(Money, name="datetime", encode=str, decode=str)


# Floats PostgreSQL's jsonb would give back changed: -0.0 as 0, and from 1e16 on
# (written with an exponent) as an integer.
CHANGED_BY_JSONB = [-0.0, 1e16, -1e16, 1.5e300, 1.7976931348623157e308]


@pytest.mark.parametrize("value", CHANGED_BY_JSONB, ids=repr)
def test_floats_jsonb_would_change_are_tagged(value: float) -> None:
    encoded = serialization.encode(value)
    assert encoded == {"__errands__": "float", "value": repr(value)}
    decoded = serialization.decode(json.loads(json.dumps(encoded)))
    assert type(decoded) is float and repr(decoded) == repr(value)


def test_plain_floats_stay_plain() -> None:
    for value in (0.0, 1.5, -2.25, 9999999999999998.0, 5e-324):
        assert serialization.encode(value) == value


def test_floats_jsonb_would_change_come_back_as_floats_from_the_database(db_url: str) -> None:
    request = sample_jobs.Echo(CHANGED_BY_JSONB).run_in_worker()
    assert request is not None
    stored = errands.get(request.uuid)
    assert stored is not None
    job = build_job(stored.job_class, stored.parameters)
    assert [repr(v) for v in job.value] == [repr(v) for v in CHANGED_BY_JSONB]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\x00b", "NUL"),
        ("\ud800", "surrogate"),
        ({"k\x00": 1}, "key"),
        ({"\udfff": 1}, "key"),
        (10**serialization.MAX_INT_DIGITS, "digits"),
        (-(10**serialization.MAX_INT_DIGITS), "digits"),
        (datetime.time(1, tzinfo=ZoneInfo("Europe/Paris")), "no UTC offset"),
        (
            datetime.datetime(
                2030, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(microseconds=1))
            ),
            "fraction of a second",
        ),
    ],
    ids=[
        "nul",
        "surrogate",
        "nul-key",
        "surrogate-key",
        "huge-int",
        "huge-negative-int",
        "time-zoneinfo",
        "offset-microseconds",
    ],
)
def test_values_a_database_would_not_keep_are_refused(value: Any, problem: str) -> None:
    with pytest.raises(ParameterError, match=problem) as info:
        serialization.encode(value, job_class="app.Job", parameter="p")
    assert "app.Job: parameter 'p'" in str(info.value)


def test_the_largest_storable_int_is_kept() -> None:
    value = 10**serialization.MAX_INT_DIGITS - 1
    encoded = serialization.encode(value)
    assert serialization.decode(json.loads(json.dumps(encoded))) == value


def test_a_datetime_in_an_iana_zone_comes_back_with_its_offset() -> None:
    value = datetime.datetime(2030, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    decoded = serialization.decode(json.loads(json.dumps(serialization.encode(value))))
    assert decoded == value and decoded.utcoffset() == datetime.timedelta(hours=2)


@pytest.mark.parametrize("shape", [list, tuple, lambda v: {"k": v}], ids=["list", "tuple", "dict"])
def test_nesting_is_limited_at_encode_time(shape: Any) -> None:
    value: Any = 0
    for _ in range(serialization.MAX_DEPTH):
        value = shape([value]) if shape in (list, tuple) else shape(value)
    serialization.encode(value)  # MAX_DEPTH levels: accepted
    with pytest.raises(ParameterError, match=f"deeper than {serialization.MAX_DEPTH}"):
        serialization.encode(shape([value]) if shape in (list, tuple) else shape(value))


def test_a_custom_type_that_encodes_to_itself_is_refused() -> None:
    class Loop:
        pass

    register_type(Loop, name="test.Loop", encode=lambda v: v, decode=lambda v: v)
    with pytest.raises(ParameterError, match="contains itself"):
        serialization.encode(Loop(), job_class="app.Job", parameter="p")


@pytest.mark.parametrize(
    "bottom",
    [datetime.timedelta(days=1), datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC), "text"],
    ids=["timedelta", "datetime", "str"],
)
def test_the_deepest_value_accepted_stays_within_what_readers_load(bottom: Any) -> None:
    """Scalars at the bottom do not count as a level; the stored JSON (two levels
    per container at most) stays below the nesting the backends load (rows.py)."""
    value: Any = bottom
    for _ in range(serialization.MAX_DEPTH):
        value = {"__errands__": value}  # wrapped: two JSON levels each
    stored = serialization.encode_arguments("app.Job", [value], {}, ["p"])
    text = json.dumps(stored)
    depth = max(_running_depths(text))
    assert depth <= NESTING_LIMIT
    (decoded,), _ = serialization.decode_arguments(json.loads(text))
    assert decoded == value


def _running_depths(text: str) -> list[int]:
    depth, depths = 0, []
    for char in json.dumps(json.loads(text), separators=(",", ":")):
        depth += (char in "[{") - (char in "]}")  # no brackets inside these strings
        depths.append(depth)
    return depths
