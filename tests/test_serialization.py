"""Parameters as JSON: exact round trips, tagged types, clear refusals."""

from __future__ import annotations

import datetime
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from errands import ParameterError, register_type, serialization


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
