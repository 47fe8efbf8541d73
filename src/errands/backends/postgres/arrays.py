"""Binary arrays for the worker's batch statements, framed by errands.

The worker sends each batch of outcomes (and of start stamps) as one typed array
per column, unnested by the statement. psycopg's own list dumper encodes such
an array element by element through its generic machinery, about 2 us per outcome
and column in the worker's process, on the thread that shares the interpreter
with the loop feeding the children. The arrays here are framed directly in
PostgreSQL's binary array format (``array_send``): a header, the one dimension's
length and lower bound, then each element as its length and its bytes (-1: NULL).

Each array type is a small wrapper holding the encoded bytes, so that a
connection with ``register`` applied sends it as that array type.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Sequence

from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper
from psycopg.pq import Format

# Element type oids (pg_type.oid of the element) and of their arrays.
_UUID, _UUID_ARRAY = 2950, 2951
_TIMESTAMPTZ, _TIMESTAMPTZ_ARRAY = 1184, 1185
_TEXT, _TEXT_ARRAY = 25, 1009
_JSON, _JSON_ARRAY = 114, 199

_HEADER = struct.Struct("!iiIii")  # dimensions, has NULLs, element oid; length, lower bound
_EMPTY_HEADER = struct.Struct("!iiI")  # an empty array has no dimension
_NULL = struct.pack("!i", -1)
_UUID_LENGTH = struct.pack("!i", 16)
_TIMESTAMP = struct.Struct("!iq")  # length 8, microseconds since 2000-01-01 UTC
_LENGTH = struct.Struct("!i")
_POSTGRES_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class EncodedArray:
    """An array already in PostgreSQL's binary format."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class UuidArray(EncodedArray):
    __slots__ = ()


class TimestamptzArray(EncodedArray):
    __slots__ = ()


class TextArray(EncodedArray):
    __slots__ = ()


class JsonArray(EncodedArray):
    __slots__ = ()


def _framed(element_oid: int, elements: list[bytes], has_null: bool) -> bytes:
    if not elements:
        return _EMPTY_HEADER.pack(0, 0, element_oid)
    return _HEADER.pack(1, has_null, element_oid, len(elements), 1) + b"".join(elements)


def uuid_array(values: Sequence[uuid.UUID]) -> UuidArray:
    """uuid[] of ``values`` (none of them None)."""
    return UuidArray(_framed(_UUID, [_UUID_LENGTH + value.bytes for value in values], False))


def timestamptz_array(values: Sequence[datetime.datetime | None]) -> TimestamptzArray:
    """timestamptz[] of aware datetimes, None as NULL (microseconds, as stored)."""
    elements = [_NULL if value is None else _timestamp(value) for value in values]
    return TimestamptzArray(_framed(_TIMESTAMPTZ, elements, None in values))


def _timestamp(value: datetime.datetime) -> bytes:
    # Whole days, seconds and microseconds: exact, where a float timestamp is not.
    since = value - _POSTGRES_EPOCH
    return _TIMESTAMP.pack(
        8, (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds
    )


def text_array(values: Sequence[str | None]) -> TextArray:
    """text[] of ``values``, None as NULL."""
    return TextArray(_framed(_TEXT, _texts(values), None in values))


def json_array(values: Sequence[str | None]) -> JsonArray:
    """json[] of JSON texts, None as NULL (json's binary form is its text)."""
    return JsonArray(_framed(_JSON, _texts(values), None in values))


def _texts(values: Sequence[str | None]) -> list[bytes]:
    encoded: dict[str, bytes] = {}  # a column repeats a few values (statuses) many times
    elements = []
    for value in values:
        if value is None:
            elements.append(_NULL)
            continue
        element = encoded.get(value)
        if element is None:
            data = value.encode()
            element = encoded[value] = _LENGTH.pack(len(data)) + data
        elements.append(element)
    return elements


class _EncodedArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: EncodedArray) -> bytes:
        return obj.data


def _dumper(array_oid: int) -> type[Dumper]:
    return type(f"Dumper{array_oid}", (_EncodedArrayDumper,), {"oid": array_oid})


_DUMPERS: dict[type[EncodedArray], type[Dumper]] = {
    UuidArray: _dumper(_UUID_ARRAY),
    TimestamptzArray: _dumper(_TIMESTAMPTZ_ARRAY),
    TextArray: _dumper(_TEXT_ARRAY),
    JsonArray: _dumper(_JSON_ARRAY),
}


def register(context: AdaptContext) -> None:
    """Let ``context`` (a connection) send the arrays of this module."""
    for array_type, dumper in _DUMPERS.items():
        context.adapters.register_dumper(array_type, dumper)
