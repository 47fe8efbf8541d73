"""Job parameters and return values as JSON, never pickle.

Plain JSON values (None, bool, int, finite float, str, list, dict with str keys)
are stored as they are. Other common types are stored as a tagged object
``{"__errands__": "<tag>", "value": ...}`` and come back as the same type:
datetime, date, time, timedelta, UUID, Decimal, bytes, tuple, set and frozenset.
Applications add their own types with :func:`register_type`. Anything else is
refused when the job is enqueued, with an error naming the job class and the
parameter, so a bad value never reaches a worker.

Only what both databases keep exactly is accepted: strings without NUL characters
or lone surrogates (PostgreSQL's jsonb refuses both), integers of at most
``MAX_INT_DIGITS`` digits, finite floats, and containers nested at most
``MAX_DEPTH`` deep (which also catches a value that contains itself). Floats
PostgreSQL would give back changed (-0.0, and from 1e16 on, which jsonb prints
as integers) are stored tagged as ``"float"``.
"""

from __future__ import annotations

import base64
import datetime
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from errands.errors import InvalidJobRow, ParameterError
from errands.models import Undecodable

TAG = "__errands__"

# Containers inside containers, counted from a parameter itself. Far below
# Python's recursion limit (1,000), which decoding (recursive too) must not reach:
# a value 500 levels deep raised RecursionError instead of ParameterError.
MAX_DEPTH = 100
# Python's default limit for int <-> str conversions (sys.int_info): json cannot
# write a longer integer, nor a worker read it back.
MAX_INT_DIGITS = 4300
_INT_BOUND = 10**MAX_INT_DIGITS
# From 1e16 on, repr() writes a float with an exponent, which PostgreSQL's jsonb
# stores as a numeric and prints back as an integer (1e16 -> 10000000000000000).
_PLAIN_FLOAT_BOUND = 1e16


@dataclass(frozen=True, slots=True)
class _Codec:
    tag: str
    type_: type
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    builtin: bool = False  # errands' own: the payload is plain JSON as it is


def _encode_timedelta(value: datetime.timedelta) -> list[int]:
    return [value.days, value.seconds, value.microseconds]


def _encode_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _decode_timedelta(value: list[int]) -> datetime.timedelta:
    days, seconds, microseconds = value
    return datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _encode_clock(value: datetime.datetime | datetime.time) -> str:
    """ISO 8601 text, which keeps a UTC offset but no zone: a zone that gives no
    offset (a ``ZoneInfo`` on a ``time``) would come back as no zone at all, and
    Python 3.11's ``fromisoformat`` drops an offset's microseconds."""
    if value.tzinfo is not None:
        offset = value.utcoffset()
        if offset is None:
            raise ValueError(
                f"its time zone {value.tzinfo!r} gives no UTC offset; use a fixed one "
                "(datetime.timezone)"
            )
        if offset.microseconds:
            raise ValueError(f"its UTC offset {offset} has a fraction of a second")
    # The base class's method: a subclass's may write more (pandas: nanoseconds).
    if isinstance(value, datetime.datetime):
        return datetime.datetime.isoformat(value)
    return datetime.time.isoformat(value)


# Order matters: datetime is a subclass of date, so it must be tried first.
_BUILTIN_CODECS: list[_Codec] = [
    _Codec("datetime", datetime.datetime, _encode_clock, datetime.datetime.fromisoformat, True),
    _Codec("date", datetime.date, datetime.date.isoformat, datetime.date.fromisoformat, True),
    _Codec("time", datetime.time, _encode_clock, datetime.time.fromisoformat, True),
    _Codec("timedelta", datetime.timedelta, _encode_timedelta, _decode_timedelta, True),
    # The base classes' __str__: a subclass's could write anything.
    _Codec("uuid", uuid.UUID, uuid.UUID.__str__, uuid.UUID, True),
    _Codec("decimal", Decimal, Decimal.__str__, Decimal, True),
    _Codec("bytes", bytes, _encode_bytes, base64.b64decode, True),
    # Only for the floats jsonb would change (see _Encoder.encode_float).
    _Codec("float", float, float.__repr__, float, True),
]
# Containers whose items are encoded recursively.
_CONTAINERS: dict[str, type] = {"tuple": tuple, "set": set, "frozenset": frozenset}

_custom_codecs: dict[str, _Codec] = {}


def register_type(
    type_: type,
    *,
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    name: str | None = None,
) -> None:
    """Teach errands to store values of ``type_``.

    ``encode`` turns a value into something JSON-storable (it may use other
    supported types); ``decode`` turns that back into the value. ``name`` is the
    tag stored in the database (default: the type's qualified name); keep it
    stable, since stored jobs refer to it.
    """
    tag = name or f"{type_.__module__}.{type_.__qualname__}"
    if tag in _CONTAINERS or any(c.tag == tag for c in _BUILTIN_CODECS) or tag == "dict":
        raise ValueError(f"the tag {tag!r} is reserved by errands; pass another name=")
    _custom_codecs[tag] = _Codec(tag, type_, encode, decode, builtin=False)


def encode(value: Any, *, job_class: str = "", parameter: str = "value") -> Any:
    """``value`` as JSON-compatible data; ParameterError names class and parameter if impossible."""
    return _Encoder(job_class, parameter).encode(value, parameter)


def decode(data: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(data, list):
        return [decode(item) for item in data]
    if not isinstance(data, dict):
        return data
    if TAG not in data:
        return {key: decode(item) for key, item in data.items()}
    return _decode_tagged(data[TAG], data.get("value"))


def encode_arguments(
    job_class: str, args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str]
) -> dict[str, Any]:
    """A job's constructor arguments as ``{"args": [...], "kwargs": {...}}``.

    ``names`` are the constructor's positional parameter names, used only to
    name the offending argument in errors.
    """
    if not args and not kwargs:
        return {"args": [], "kwargs": {}}  # many jobs take no arguments: skip the encoder
    encoder = _Encoder(job_class, "")
    encoded_args = [
        encoder.encode(arg, names[i] if i < len(names) else f"args[{i}]")
        for i, arg in enumerate(args)
    ]
    encoded_kwargs = {key: encoder.encode(item, key) for key, item in kwargs.items()}
    return {"args": encoded_args, "kwargs": encoded_kwargs}


def decode_arguments(parameters: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The inverse of :func:`encode_arguments`."""
    args = [decode(arg) for arg in parameters.get("args", [])]
    kwargs = {key: decode(item) for key, item in parameters.get("kwargs", {}).items()}
    return args, kwargs


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as given on both databases, or None.

    PostgreSQL refuses NUL in text and jsonb, and SQLite cuts text at one; lone
    surrogates cannot be written as UTF-8.
    """
    if "\x00" in text:
        return f"contains a NUL character (at index {text.index(chr(0))})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate {text[exc.start]!r} (at index {exc.start})"
    return None


class _Encoder:
    def __init__(self, job_class: str, parameter: str) -> None:
        self.job_class = job_class
        self.parameter = parameter

    def encode(self, value: Any, path: str, depth: int = 0) -> Any:
        # Cheap tests first: isascii() is O(1) in CPython, and a plain ASCII
        # string without NUL needs nothing more.
        if isinstance(value, str):
            return value if value.isascii() and "\x00" not in value else self._text(value, path)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if -(2**63) <= value < 2**63 or -_INT_BOUND < value < _INT_BOUND:
                return value
            return self._huge_int(value, path)
        if isinstance(value, float):
            # Literal bounds (_PLAIN_FLOAT_BOUND) are cheaper than names; 0.0 and
            # -0.0 take the slower path, which tells them apart.
            return value if -1e16 < value < 1e16 and value else self._encode_float(value, path)
        if isinstance(value, list):
            if depth >= MAX_DEPTH:
                raise self._too_deep(path, value)
            return [self.encode(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        if isinstance(value, dict):
            if depth >= MAX_DEPTH:
                raise self._too_deep(path, value)
            return self._encode_dict(value, path, depth)
        return self._encode_tagged(value, path, depth)

    def _too_deep(self, path: str, value: Any) -> ParameterError:
        # Containers and custom types count; scalars at the bottom (a str, a
        # datetime) do not.
        problem = f"is nested deeper than {MAX_DEPTH} levels (or contains itself)"
        return self._error(path, value, problem, list_types=False)

    def _encode_float(self, value: float, path: str) -> Any:
        bound = _PLAIN_FLOAT_BOUND
        if -bound < value < bound and (value or math.copysign(1, value) > 0):
            return value
        if not math.isfinite(value):
            raise self._error(path, value, "is not a finite number")
        return {TAG: "float", "value": float.__repr__(value)}  # -0.0, or from 1e16 on

    def _text(self, value: str, path: str) -> str:
        problem = text_problem(value)
        if problem is not None:
            raise self._error(path, value, problem, list_types=False)
        return value

    def _huge_int(self, value: int, path: str) -> int:
        problem = f"has more than {MAX_INT_DIGITS} digits"
        raise self._error(path, value, problem, list_types=False)

    def _encode_dict(self, value: dict[Any, Any], path: str, depth: int) -> Any:
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise self._error(path, value, f"has a non-string key {short_repr(key)}")
            if not key.isascii() or "\x00" in key:
                self._check_key(key, value, path)
            encoded[key] = self.encode(item, f"{path}[{key!r}]", depth + 1)
        # A user dict that happens to contain the tag key is wrapped, so decode
        # never mistakes it for a tagged value.
        return {TAG: "dict", "value": encoded} if TAG in encoded else encoded

    def _check_key(self, key: str, value: dict[Any, Any], path: str) -> None:
        problem = text_problem(key)
        if problem is not None:
            raise self._error(
                path, value, f"has a key {short_repr(key)} that {problem}", list_types=False
            )

    def _encode_tagged(self, value: Any, path: str, depth: int) -> Any:
        for tag, container in _CONTAINERS.items():
            if type(value) is container:
                if depth >= MAX_DEPTH:
                    raise self._too_deep(path, value)
                items = self._encode_items(value, path, depth, ordered=tag == "tuple")
                return {TAG: tag, "value": items}
        codec = _codec_for(value)
        if codec is None:
            raise self._error(path, value, "cannot be stored as JSON")
        if depth >= MAX_DEPTH and not codec.builtin:
            raise self._too_deep(path, value)
        try:
            payload = codec.encode(value)
        except Exception as exc:
            raise self._error(path, value, f"failed to encode ({exc})") from exc
        # Built-in codecs give plain JSON (ASCII text, small ints); an
        # application's may give anything, another custom value too.
        return {
            TAG: codec.tag,
            "value": payload if codec.builtin else self.encode(payload, path, depth + 1),
        }

    def _encode_items(self, items: Any, path: str, depth: int, *, ordered: bool) -> list[Any]:
        # Sets have no order; sorting by repr makes the stored form deterministic.
        sequence = list(items) if ordered else sorted(items, key=_sort_key)
        return [self.encode(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(sequence)]

    def _error(
        self, path: str, value: Any, problem: str, *, list_types: bool = True
    ) -> ParameterError:
        where = f"{self.job_class}: " if self.job_class else ""
        kind = type(value).__qualname__
        message = f"{where}parameter '{path}' of type {kind} {problem}"
        if list_types:
            message += (
                "; errands stores parameters as JSON (str, int, float, bool, None, list, "
                "dict, datetime, date, time, timedelta, UUID, Decimal, bytes, tuple, set) "
                "plus types added with errands.register_type()"
            )
        return ParameterError(message)


def short_repr(value: Any, limit: int = 60) -> str:
    """A short repr for an error message (of a 1 MB key, or an int repr refuses)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__qualname__}>"
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _sort_key(item: Any) -> str:
    """repr() orders a set's items; one it fails on (an int too long to print, a
    value nested past the recursion limit) is refused by the encoder anyway."""
    try:
        return repr(item)
    except Exception:
        return ""


def _codec_for(value: Any) -> _Codec | None:
    for codec in _custom_codecs.values():
        if type(value) is codec.type_:
            return codec
    for codec in _BUILTIN_CODECS:
        if isinstance(value, codec.type_):
            return codec
    for codec in _custom_codecs.values():
        if isinstance(value, codec.type_):
            return codec
    return None


def _decode_tagged(tag: str, payload: Any) -> Any:
    if tag == "dict":
        return {key: decode(item) for key, item in payload.items()}
    if tag in _CONTAINERS:
        return _CONTAINERS[tag](decode(item) for item in payload)
    codec = _custom_codecs.get(tag) or next((c for c in _BUILTIN_CODECS if c.tag == tag), None)
    if codec is None:
        raise ParameterError(
            f"stored value has the unknown type tag {tag!r}; register it with "
            "errands.register_type() in the worker too"
        )
    return codec.decode(decode(payload))


# -- stored arguments that are no job's --------------------------------------------------

_JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def json_kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), "number")


def arguments_problem(parameters: Any) -> str | None:
    """What makes stored parameters unusable as a job's arguments, or None.

    Enqueueing stores ``{"args": [...], "kwargs": {...}}``; anything else came
    from elsewhere.
    """
    if isinstance(parameters, Undecodable):
        return f"parameters cannot be loaded ({parameters.problem})"
    if not isinstance(parameters, dict):
        return f"parameters are a JSON {json_kind(parameters)}, not an object"
    args = parameters.get("args", [])
    if not isinstance(args, list):
        return f"parameters' 'args' is a JSON {json_kind(args)}, not an array"
    kwargs = parameters.get("kwargs", {})
    if not isinstance(kwargs, dict):
        return f"parameters' 'kwargs' is a JSON {json_kind(kwargs)}, not an object"
    return None


def invalid_arguments(parameters: Any) -> InvalidJobRow | None:
    """The error for stored parameters that are no job's arguments, or None if they are
    (for a decoding that failed: its own error then stands)."""
    problem = arguments_problem(parameters)
    return None if problem is None else InvalidJobRow(f"the stored job cannot be run: {problem}")
