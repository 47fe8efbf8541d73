"""Job parameters and return values as JSON, never pickle.

Plain JSON values (None, bool, int, finite float, str, list, dict with str keys)
are stored as they are. Other common types are stored as a tagged object
``{"__errands__": "<tag>", "value": ...}`` and come back as the same type:
datetime, date, time, timedelta, UUID, Decimal, bytes, tuple, set and frozenset.
Applications add their own types with :func:`register_type`. Anything else is
refused when the job is enqueued, with an error naming the job class and the
parameter, so a bad value never reaches a worker.
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

from errands.errors import ParameterError

TAG = "__errands__"


@dataclass(frozen=True, slots=True)
class _Codec:
    tag: str
    type_: type
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _encode_timedelta(value: datetime.timedelta) -> list[int]:
    return [value.days, value.seconds, value.microseconds]


def _decode_timedelta(value: list[int]) -> datetime.timedelta:
    days, seconds, microseconds = value
    return datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds)


# Order matters: datetime is a subclass of date, so it must be tried first.
_BUILTIN_CODECS: list[_Codec] = [
    _Codec(
        "datetime", datetime.datetime, datetime.datetime.isoformat, datetime.datetime.fromisoformat
    ),
    _Codec("date", datetime.date, datetime.date.isoformat, datetime.date.fromisoformat),
    _Codec("time", datetime.time, datetime.time.isoformat, datetime.time.fromisoformat),
    _Codec("timedelta", datetime.timedelta, _encode_timedelta, _decode_timedelta),
    _Codec("uuid", uuid.UUID, str, uuid.UUID),
    _Codec("decimal", Decimal, str, Decimal),
    _Codec("bytes", bytes, lambda v: base64.b64encode(v).decode("ascii"), base64.b64decode),
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
    _custom_codecs[tag] = _Codec(tag, type_, encode, decode)


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


class _Encoder:
    def __init__(self, job_class: str, parameter: str) -> None:
        self.job_class = job_class
        self.parameter = parameter

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self._error(path, value, "is not a finite number")
            return value
        if isinstance(value, list):
            return [self.encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, dict):
            return self._encode_dict(value, path)
        return self._encode_tagged(value, path)

    def _encode_dict(self, value: dict[Any, Any], path: str) -> Any:
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise self._error(path, value, f"has a non-string key {key!r}")
            encoded[key] = self.encode(item, f"{path}[{key!r}]")
        # A user dict that happens to contain the tag key is wrapped, so decode
        # never mistakes it for a tagged value.
        return {TAG: "dict", "value": encoded} if TAG in encoded else encoded

    def _encode_tagged(self, value: Any, path: str) -> Any:
        for tag, container in _CONTAINERS.items():
            if type(value) is container:
                return {TAG: tag, "value": self._encode_items(value, path, ordered=tag == "tuple")}
        codec = _codec_for(value)
        if codec is None:
            raise self._error(path, value, "cannot be stored as JSON")
        try:
            payload = codec.encode(value)
        except Exception as exc:
            raise self._error(path, value, f"failed to encode ({exc})") from exc
        return {TAG: codec.tag, "value": self.encode(payload, path)}

    def _encode_items(self, items: Any, path: str, *, ordered: bool) -> list[Any]:
        # Sets have no order; sorting by repr makes the stored form deterministic.
        sequence = list(items) if ordered else sorted(items, key=repr)
        return [self.encode(item, f"{path}[{i}]") for i, item in enumerate(sequence)]

    def _error(self, path: str, value: Any, problem: str) -> ParameterError:
        where = f"{self.job_class}: " if self.job_class else ""
        kind = type(value).__qualname__
        return ParameterError(
            f"{where}parameter '{path}' of type {kind} {problem}; errands stores parameters "
            "as JSON (str, int, float, bool, None, list, dict, datetime, date, time, "
            "timedelta, UUID, Decimal, bytes, tuple, set) plus types added with "
            "errands.register_type()"
        )


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
