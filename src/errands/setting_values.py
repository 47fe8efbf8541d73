"""Parsers of setting values: each takes a value as a source gives it (a TOML value,
an environment variable's text, a ``configure()`` argument) and returns it as
``Settings`` holds it, or raises :class:`Invalid` saying what is expected."""

from __future__ import annotations

import ipaddress
import json
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from errands.backoff import Backoff


class Invalid(ValueError):
    """A value that does not fit its setting; the message says what is expected."""


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("expected a string")
    return value


def _to_number(value: Any, kind: type) -> float:
    if isinstance(value, bool):
        raise Invalid(f"expected {'an integer' if kind is int else 'a number'}")
    try:
        number = kind(value.strip()) if isinstance(value, str) else kind(value)
    except (TypeError, ValueError):
        raise Invalid(f"expected {'an integer' if kind is int else 'a number'}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise Invalid("expected an integer")
    return number  # type: ignore[no-any-return]


def positive(kind: type, *, allow_zero: bool = False) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        number = _to_number(value, kind)
        if number < 0 or (number == 0 and not allow_zero):
            raise Invalid("must be zero or more" if allow_zero else "must be more than zero")
        return number

    return parse


def optional(parse: Callable[[Any], Any], *, also: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """``parse``, or None for a missing value ("", "none", or a word in ``also``)."""
    unset = ("", "none", *also)

    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in unset):
            return None
        try:
            return parse(value)
        except Invalid as exc:
            if not also:
                raise
            raise Invalid(f"{exc} (or {' or '.join(repr(word) for word in also)})") from None

    return parse_optional


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise Invalid("expected true or false")


def to_names(value: Any) -> tuple[str, ...]:
    """A list of dotted names; from the environment, comma-separated."""
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid("expected a list of dotted names")
    return tuple(value)


def to_queue_limits(value: Any) -> tuple[tuple[str, int], ...]:
    """``{"mail": 10}``; from the environment ``mail=10,default=4``."""
    if isinstance(value, str):
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        value = {name.strip(): number for name, _, number in pairs}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise Invalid("expected a table of queue names to numbers, such as {mail = 10}")
    try:
        return tuple(sorted((queue, positive(int)(n)) for queue, n in value.items()))
    except Invalid as exc:
        raise Invalid(f"each queue's number: {exc}") from None


def to_schedule(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise Invalid(f"expected a JSON list of [job, schedule] pairs ({exc})") from None
    if not isinstance(value, list | tuple):
        raise Invalid("expected a list of [job, schedule] pairs")
    return tuple(tuple(entry) if isinstance(entry, list) else entry for entry in value)


MIN_SECRET_KEY_LENGTH = 32
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\.?")


def to_secret_key(value: Any) -> str:
    key = to_str(value)
    if key and len(key) < MIN_SECRET_KEY_LENGTH:
        raise Invalid(
            f"too short: use at least {MIN_SECRET_KEY_LENGTH} random characters, e.g. the "
            "output of python -c 'import secrets; print(secrets.token_urlsafe(32))', or "
            "leave it unset for a random key kept in the database"
        )
    return key


def _to_list(value: Any, what: str) -> list[str]:
    """A list of strings; from the environment, comma-separated."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected a list of {what}")
    return list(value)


def to_hosts(value: Any) -> tuple[str, ...]:
    """Host names as a Host header carries them, without port: IPv6 in brackets."""
    hosts = []
    for given in _to_list(value, "host names"):
        host = given.strip().lower()
        if _is_bracketed_ipv6(f"[{host}]"):
            host = f"[{host}]"  # a bare IPv6 address: the Host header brackets it
        if not (host == "*" or _HOST_NAME.fullmatch(host) or _is_bracketed_ipv6(host)):
            raise Invalid(
                f"{given!r} is not a host name: expected names such as 'ops.example.com', "
                "'*.example.com', '10.0.0.5' or '[::1]', without scheme, port or path "
                "('*' alone allows any host)"
            )
        hosts.append(host)
    return tuple(hosts)


def _is_bracketed_ipv6(host: str) -> bool:
    if not (host.startswith("[") and host.endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def to_networks(value: Any) -> tuple[str, ...]:
    networks = []
    for given in _to_list(value, "IP addresses or networks"):
        try:
            network = ipaddress.ip_network(given.strip(), strict=False)
        except ValueError:
            raise Invalid(
                f"{given!r} is not an IP address or network: expected e.g. '10.0.0.7', "
                "'10.0.0.0/8' or '::1'"
            ) from None
        # A single address reads as one; a network keeps its prefix.
        single = network.num_addresses == 1 and "/" not in given
        networks.append(str(network.network_address if single else network))
    return tuple(networks)


#: PostgreSQL truncates identifiers (and so channel names) to 63 bytes; the longest
#: channel errands derives from a schema is ``<schema>_results``, 8 bytes more.
MAX_SCHEMA_LENGTH = 63 - len("_results")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def to_schema(value: Any) -> str:
    """The ``schema`` setting: "" (the connection's search_path, as always), or a
    lower-case SQL identifier, which names the schema and prefixes the channels."""
    name = to_str(value).strip()
    if not name:
        return ""
    if not _SCHEMA_NAME.fullmatch(name):
        raise Invalid(
            "expected a PostgreSQL schema name of lower-case letters, digits and "
            "underscores, not starting with a digit, such as 'tenant_a'"
        )
    if len(name) > MAX_SCHEMA_LENGTH:
        raise Invalid(
            f"too long: at most {MAX_SCHEMA_LENGTH} characters (its notification "
            f"channel {name}_results must fit PostgreSQL's 63-byte names)"
        )
    if name.startswith("pg_"):
        raise Invalid("names starting with 'pg_' are reserved for PostgreSQL's own schemas")
    return name


def choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = to_str(value).strip()
        text = text.upper() if upper else text.lower()
        if text not in options:
            raise Invalid(f"expected one of {', '.join(options)}")
        return text

    return parse


def to_timezone(value: Any) -> str:
    name = to_str(value)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Invalid("expected an IANA time zone name such as 'UTC' or 'Europe/Berlin'") from None
    return name


_BACKOFF_FIELDS = ("base", "factor", "maximum", "jitter")
_BACKOFF_EXPECTED = (
    "expected true (1 s doubling up to an hour, ±10 %), false or none (retry at once), "
    "or a table such as {base = 1, factor = 2, maximum = 3600, jitter = 0.1} "
    "(env: base=1,factor=2,maximum=3600,jitter=0.1)"
)


def to_backoff(value: Any) -> Backoff | None:
    """The ``retry_backoff`` setting: None (no delay before retries), ``Backoff()``
    for true, or a Backoff of the table's fields (the others keep their defaults)."""
    if isinstance(value, Backoff) or value is None:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "off", "false", "no", "0"):
            return None
        if text in ("true", "on", "yes", "1"):
            return Backoff()
        pairs = [part.partition("=") for part in text.split(",") if part.strip()]
        if not all(sep for _, sep, _ in pairs):
            raise Invalid(_BACKOFF_EXPECTED)
        value = {name.strip(): number.strip() for name, _, number in pairs}
    if isinstance(value, bool):
        return Backoff() if value else None
    if not isinstance(value, Mapping) or not set(value) <= set(_BACKOFF_FIELDS):
        raise Invalid(_BACKOFF_EXPECTED)
    try:
        return Backoff(**{name: _to_number(number, float) for name, number in value.items()})
    except ValueError as exc:  # Invalid, or Backoff's own check of a value
        raise Invalid(str(exc)) from None


#: The terminal statuses a result may have (errands.models.Status, which this lowest
#: layer cannot import; tests/test_retention checks they agree).
RESULT_STATUSES = ("SUCCESSFUL", "ERRORED", "CANCELLED", "DEFERRED", "LOST")
_RETENTION_EXPECTED = (
    "expected seconds, or a table of statuses to seconds such as "
    "{SUCCESSFUL = 86400, ERRORED = 2592000, default = 604800} "
    "(env: SUCCESSFUL=86400,ERRORED=2592000,default=604800)"
)


@dataclass(frozen=True)
class Retention:
    """Seconds a result is kept, by its status: ``by_status`` pairs, else ``default``."""

    default: float
    by_status: tuple[tuple[str, float], ...] = ()

    def seconds(self, status: str) -> float:
        return dict(self.by_status).get(status, self.default)

    def per_status(self) -> dict[str, float]:
        """Every status with its seconds."""
        return {status: self.seconds(status) for status in RESULT_STATUSES}

    def longest(self) -> float:
        return max(self.per_status().values())

    def as_text(self) -> str:
        """As an environment variable writes it."""
        pairs = [*self.by_status, ("default", self.default)]
        return ",".join(f"{key}={seconds!r}" for key, seconds in pairs)


def to_retention(value: Any, *, default: float = 7 * 24 * 3600) -> float | Retention:
    """``results_retention``: seconds (a float, as before), or a :class:`Retention` of
    a table by status; a status the table leaves out keeps ``default`` (the table's
    own ``default`` key, else the setting's default)."""
    if isinstance(value, Retention):
        return value
    if isinstance(value, str) and "=" in value:
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        value = {key.strip(): seconds.strip() for key, _, seconds in pairs}
    if not isinstance(value, Mapping):
        if isinstance(value, list | tuple | dict | set):
            raise Invalid(_RETENTION_EXPECTED)
        try:
            return float(positive(float)(value))
        except Invalid as exc:
            raise Invalid(_RETENTION_EXPECTED if "expected" in str(exc) else str(exc)) from None
    by_status: dict[str, float] = {}
    fallback = default
    for key, seconds in value.items():
        name = str(key).strip()
        status = name.upper()
        if name.lower() != "default" and status not in RESULT_STATUSES:
            raise Invalid(
                f"unknown status {name!r}: expected {', '.join(RESULT_STATUSES)} or default"
            )
        try:
            number = float(positive(float)(seconds))
        except Invalid as exc:
            raise Invalid(f"{name}: {exc}") from None
        if name.lower() == "default":
            fallback = number
        else:
            by_status[status] = number
    ordered = tuple((s, by_status[s]) for s in RESULT_STATUSES if s in by_status)
    return Retention(default=fallback, by_status=ordered)
