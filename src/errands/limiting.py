"""Flow control: ``Limit``, how many of a key's jobs may run at once and how often they
may start.

A job carries its limits from enqueue to its result. A worker claims it only when
every one of its limits allows it (``errands.backends.admission`` decides, under a
lock per key, so that workers claiming at once never overshoot). Limits are stored
with the job as JSON; a stored limit that does not load is left out (a row is data:
an odd value harms at most its own job's limiting, never a claim).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_KEY_LENGTH = 200
RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
_RATE_EXPECTED = 'expected a count of at least 1 per unit, such as "20/s", "100/min" or "1000/h"'
QUEUE_KEY_PREFIX = "queue:"  # the key a queue_limits entry is counted under


def parse_rate(rate: str) -> tuple[int, float]:
    """``"20/s"`` as (20, 1.0): at most that many starts in any window of that length."""
    if not isinstance(rate, str):
        raise ValueError(f"rate={rate!r}: {_RATE_EXPECTED}")
    return _parsed_rate(rate)


@functools.lru_cache(maxsize=1024)  # admission reads each candidate's rates per claim
def _parsed_rate(rate: str) -> tuple[int, float]:
    match = _RATE.match(rate.lower())
    if match is None or match.group(2) not in RATE_UNITS or int(match.group(1)) < 1:
        raise ValueError(f"rate={rate!r}: {_RATE_EXPECTED}")
    return int(match.group(1)), RATE_UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``concurrency`` jobs of ``key`` claimed or running at once, across every
    worker; at most ``rate`` (``"N/s"``, ``"N/min"``, ``"N/h"``) of them started in any
    window of that length. ``key`` is a string, or a callable taking the job and
    returning one (called at enqueue; the string is stored).
    """

    key: str | Callable[[Any], str]
    concurrency: int | None = None
    rate: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.key):
            check_key(self.key, what="Limit(key=...)")
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise ValueError(
                f"Limit({self.key!r}, concurrency={self.concurrency!r}): "
                "expected a whole number of at least 1"
            )
        if self.rate is not None:
            try:
                parse_rate(self.rate)
            except ValueError as exc:
                raise ValueError(f"Limit({self.key!r}, {exc}") from None
        if self.concurrency is None and self.rate is None:
            raise ValueError(f"Limit({self.key!r}): give concurrency=, rate= or both")

    @property
    def rate_window(self) -> tuple[int, float] | None:
        """The rate as (starts, seconds), or None."""
        return None if self.rate is None else parse_rate(self.rate)

    def resolved(self, job: Any) -> Limit:
        """This limit with its key as stored for ``job`` (a callable key is called)."""
        if not callable(self.key):
            return self
        key = self.key(job)
        check_key(key, what=f"the key of a Limit of {type(job).__qualname__}")
        return Limit(key, concurrency=self.concurrency, rate=self.rate)

    def describe(self) -> str:
        parts = [] if self.concurrency is None else [f"{self.concurrency} at once"]
        if self.rate is not None:
            parts.append(self.rate)
        return f"{self.key!r} ({', '.join(parts)})"


def check_key(key: Any, *, what: str) -> None:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"{what}: expected a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{what}: longer than {MAX_KEY_LENGTH} characters")


def check_limits(limits: Any, *, what: str) -> tuple[Limit, ...]:
    """``limits`` as a tuple, or a ValueError naming ``what`` when it is not a list of Limit."""
    if isinstance(limits, Limit):
        limits = [limits]
    if not isinstance(limits, list | tuple):
        raise ValueError(f"{what}: expected a list of errands.Limit, got {limits!r}")
    for limit in limits:
        if not isinstance(limit, Limit):
            raise ValueError(f"{what}: expected errands.Limit items, got {limit!r}")
    return tuple(limits)


# -- stored form -------------------------------------------------------------------


def encode_limits(limits: Sequence[Limit]) -> str | None:
    """The stored JSON of resolved limits; None (SQL NULL) for a job without limits."""
    if not limits:
        return None
    return json.dumps(
        [{"key": lim.key, "concurrency": lim.concurrency, "rate": lim.rate} for lim in limits]
    )


def decode_limits(value: Any) -> tuple[Limit, ...]:
    """Stored limits (JSON text, or the list a driver decoded) as Limits; entries that
    do not load are left out."""
    if value is None or value == ():
        return ()
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return ()
    if not isinstance(value, list):
        return ()
    return tuple(limit for limit in map(_decode_one, value) if limit is not None)


def _decode_one(item: Any) -> Limit | None:
    if not isinstance(item, dict):
        return None
    key = item.get("key")
    if not isinstance(key, str):
        return None
    try:
        limit = Limit(key, concurrency=item.get("concurrency"), rate=item.get("rate"))
    except (ValueError, TypeError, AttributeError):
        return None
    return None if callable(limit.key) else limit


def first_key(limits: Sequence[Limit]) -> str | None:
    """The key a job waits under in the claim index (its first limit's), None if none."""
    return str(limits[0].key) if limits else None


def queue_limit(queue: str, concurrency: int) -> Limit:
    """The limit a ``queue_limits`` entry puts on every job of ``queue``."""
    return Limit(QUEUE_KEY_PREFIX + queue, concurrency=concurrency)


# -- what the limits do now (errands limits, errands why, the dashboard) ------------


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """One limit key now: its limits as its jobs declare them, and its jobs."""

    key: str
    #: the smallest concurrency its jobs declare (None: none declares one)
    concurrency: int | None
    #: the strictest rate its jobs declare, as written (``"20/s"``; None: none)
    rate: str | None
    running: int  # claimed or running
    waiting: int  # due, not claimed: held by the limit or about to be claimed
    scheduled: int  # due later
    #: starts within the rate's window (None without a rate: only rates record starts)
    recent_starts: int | None

    @property
    def full(self) -> bool:
        """No job of the key may start now."""
        at_concurrency = self.concurrency is not None and self.running >= self.concurrency
        window = None if self.rate is None else parse_rate(self.rate)
        at_rate = window is not None and (self.recent_starts or 0) >= window[0]
        return at_concurrency or at_rate

    def describe(self) -> str:
        parts = [] if self.concurrency is None else [f"{self.concurrency} at once"]
        if self.rate is not None:
            parts.append(self.rate)
        return ", ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "running": self.running,
            "waiting": self.waiting,
            "scheduled": self.scheduled,
            "recent_starts": self.recent_starts,
            "full": self.full,
        }


def summarize(
    jobs: Iterable[tuple[Any, str]], start_ages: Iterable[tuple[str, float]]
) -> list[LimitUsage]:
    """The usage of every key, from each limited job's stored limits and its state
    (``"running"``, ``"waiting"`` or ``"scheduled"``) and the recorded starts' ages."""
    declared: dict[str, list[Limit]] = {}
    counts: dict[str, dict[str, int]] = {}
    for stored, state in jobs:
        for limit in decode_limits(stored):
            key = str(limit.key)
            declared.setdefault(key, []).append(limit)
            per_state = counts.setdefault(key, {})
            per_state[state] = per_state.get(state, 0) + 1
    ages: dict[str, list[float]] = {}
    for key, age in start_ages:
        ages.setdefault(key, []).append(age)
    return [_usage(key, declared[key], counts[key], ages.get(key, [])) for key in sorted(declared)]


def _usage(key: str, limits: list[Limit], counts: dict[str, int], ages: list[float]) -> LimitUsage:
    concurrencies = [lim.concurrency for lim in limits if lim.concurrency is not None]
    rates = [lim.rate for lim in limits if lim.rate is not None]
    # The strictest rate: the fewest starts per second.
    rate = min(rates, key=lambda r: parse_rate(r)[0] / parse_rate(r)[1], default=None)
    window = None if rate is None else parse_rate(rate)[1]
    return LimitUsage(
        key=key,
        concurrency=min(concurrencies, default=None),
        rate=rate,
        running=counts.get("running", 0),
        waiting=counts.get("waiting", 0),
        scheduled=counts.get("scheduled", 0),
        recent_starts=None if window is None else sum(1 for age in ages if age <= window),
    )
