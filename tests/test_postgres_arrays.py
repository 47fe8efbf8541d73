"""The binary arrays the worker's batch statements send (``backends.postgres_arrays``):
each must reach PostgreSQL as exactly the values it was built from."""

from __future__ import annotations

import datetime
import uuid
import zoneinfo
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from errands.backends.postgres import arrays as postgres_arrays
from errands.backends.postgres.arrays import (
    EncodedArray,
    json_array,
    text_array,
    timestamptz_array,
    uuid_array,
)


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url) as connection:
        postgres_arrays.register(connection)
        connection.execute("SET TimeZone = 'UTC'")
        yield connection


def round_trip(conn: psycopg.Connection[Any], array: EncodedArray, sql_type: str) -> Any:
    row = conn.execute(f"SELECT %s::{sql_type}", [array]).fetchone()  # type: ignore[call-overload]
    assert row is not None
    return row[0]


def test_uuids_arrive_in_order(conn: psycopg.Connection[Any]) -> None:
    values = [uuid.uuid4() for _ in range(300)] + [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    assert round_trip(conn, uuid_array(values), "uuid[]") == values


def test_times_arrive_to_the_microsecond_in_any_zone_and_null(
    conn: psycopg.Connection[Any],
) -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    values = [
        datetime.datetime(2026, 12, 5, 9, 36, 51, 297340, tzinfo=datetime.UTC),
        None,
        datetime.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=berlin),  # before 2000
        datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC),  # PostgreSQL's epoch itself
        datetime.datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=datetime.UTC),
        datetime.datetime.now(datetime.UTC),
    ]
    assert round_trip(conn, timestamptz_array(values), "timestamptz[]") == values


def test_texts_arrive_as_given_with_null(conn: psycopg.Connection[Any]) -> None:
    values = ["SUCCESSFUL", None, "tab\there, new\nline", "", "ünïcode ✓ 🎉", "SUCCESSFUL"]
    assert round_trip(conn, text_array(values), "text[]") == values


def test_json_texts_arrive_as_json_with_null(conn: psycopg.Connection[Any]) -> None:
    values = ['{"error": "ä\\u0000b", "n": 1}', None]
    assert round_trip(conn, json_array(values), "json[]") == [{"error": "ä\x00b", "n": 1}, None]


def test_empty_arrays_are_empty(conn: psycopg.Connection[Any]) -> None:
    assert round_trip(conn, uuid_array([]), "uuid[]") == []
    assert round_trip(conn, timestamptz_array([]), "timestamptz[]") == []
    assert round_trip(conn, text_array([]), "text[]") == []


def test_arrays_unnest_side_by_side(conn: psycopg.Connection[Any]) -> None:
    keys = [uuid.uuid4() for _ in range(3)]
    statuses = ["SUCCESSFUL", "ERRORED", "LOST"]
    rows = conn.execute(
        "SELECT * FROM unnest(%s::uuid[], %s::text[])",
        [uuid_array(keys), text_array(statuses)],
    ).fetchall()
    assert rows == list(zip(keys, statuses, strict=True))
