"""The data of a bulk enqueue's ``COPY ... FROM STDIN (FORMAT BINARY)``.

psycopg's ``write_row`` adapts every value of every row. In a batch, though, all
columns but the key and the parameters usually repeat from one request to the
next (same class, queue, options, enqueue time and due time), so this encodes
each distinct run of those columns once, with psycopg's own binary dumpers, and
writes only the key and the parameters' JSON per row.

The framing is PostgreSQL's binary COPY format (see "Binary Format" under COPY in
its documentation): a signature header, then per row a 16-bit field count and
each field as a 32-bit length (-1 for NULL) followed by its bytes, then a
16-bit -1 trailer.
"""

from __future__ import annotations

import datetime
import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg import Connection
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import Format

from errands.limiting import Limit, encode_limits, first_key
from errands.models import NewRequest

# The column order of the copy_requests query: key and parameters first, then the
# columns that repeat across a batch (REPEATED_TYPES).
REPEATED_TYPES = (
    "timestamptz",  # created_at
    "timestamptz",  # start_at
    "text",  # job_class
    "text",  # queue
    "int4",  # priority
    "int4",  # retries
    "int4",  # retry_attempt
    "text",  # concurrency_key
    "float8",  # timeout
    "text",  # source
    "text",  # trace_id
    "text",  # span_id
    "text",  # limit_key
    "timestamptz",  # expires_at
)
COLUMN_COUNT = 3 + len(REPEATED_TYPES)  # and limits last, jsonb
CHUNK_ROWS = 500

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # no flags, no extension
TRAILER = struct.pack("!h", -1)
_ROW_START = struct.pack("!hi", COLUMN_COUNT, 16)  # field count, then the uuid's length
_JSONB_START = struct.Struct("!iB")  # the field's length, then jsonb's format version (1)
_JSONB_VERSION = 1
_FIELD_LENGTH = struct.Struct("!i")
_NULL = _FIELD_LENGTH.pack(-1)

Repeated = tuple[Any, ...]


class RequestRows:
    """Encodes requests as binary COPY rows for one connection's type mapping."""

    def __init__(self, conn: Connection[Any]) -> None:
        self._transformer = Transformer.from_context(conn)
        oids = [conn.adapters.types[name].oid for name in REPEATED_TYPES]
        self._transformer.set_dumper_types(oids, Format.BINARY)
        self._formats = [PyFormat.BINARY] * len(REPEATED_TYPES)
        self._encoded: dict[Repeated, bytes] = {}
        self._encoded_limits: dict[tuple[Limit, ...], bytes] = {}

    def stream(
        self,
        requests: Sequence[NewRequest],
        created_at: datetime.datetime,
        due: Sequence[datetime.datetime],
    ) -> Iterator[bytes]:
        """The whole COPY data, in chunks of ``CHUNK_ROWS`` rows: the server parses
        one chunk while the next is encoded."""
        yield SIGNATURE
        for start in range(0, len(requests), CHUNK_ROWS):
            end = start + CHUNK_ROWS
            yield self._rows(requests[start:end], created_at, due[start:end])
        yield TRAILER

    def _rows(
        self,
        requests: Sequence[NewRequest],
        created_at: datetime.datetime,
        due: Sequence[datetime.datetime],
    ) -> bytes:
        parts: list[bytes] = []
        for request, start_at in zip(requests, due, strict=True):
            parameters = json.dumps(request.parameters).encode()
            parts += (
                _ROW_START,
                request.uuid.bytes,
                _JSONB_START.pack(len(parameters) + 1, _JSONB_VERSION),
                parameters,
                self._repeated(
                    (
                        created_at, start_at, request.job_class, request.queue,
                        request.priority, request.retries, request.retry_attempt,
                        request.concurrency_key, request.timeout, request.source,
                        request.trace_id, request.span_id, first_key(request.limits),
                        request.expires_at,
                    )
                ),
                self._limits(request.limits),
            )  # fmt: skip
        return b"".join(parts)

    def _limits(self, limits: tuple[Limit, ...]) -> bytes:
        if not limits:
            return _NULL
        encoded = self._encoded_limits.get(limits)
        if encoded is None:
            text = (encode_limits(limits) or "").encode()
            encoded = self._encoded_limits[limits] = (
                _JSONB_START.pack(len(text) + 1, _JSONB_VERSION) + text
            )
        return encoded

    def _repeated(self, values: Repeated) -> bytes:
        encoded = self._encoded.get(values)
        if encoded is None:
            fields = self._transformer.dump_sequence(values, self._formats)
            encoded = self._encoded[values] = b"".join(
                _NULL if field is None else _FIELD_LENGTH.pack(len(field)) + bytes(field)
                for field in fields
            )
        return encoded
