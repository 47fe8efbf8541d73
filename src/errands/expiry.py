"""Expiry: a job that no worker claimed by its ``expires_at`` never runs.

``expires=`` (per call: ``run_in_worker(expires=)``, ``EnqueueOptions(expires=)``;
per class: an ``expires`` attribute or a ``default_expires()`` method) is seconds
from the enqueue, a ``timedelta``, or an aware ``datetime``; None never expires.
It is stored as an absolute time on the request, and travels to its process and
result (a retry or a deferral keeps it: the job's deadline does not move; a
manual retry starts without one).

The claim enforces it: each claim first turns the expired requests into results
(the rule, :data:`EXPIRED`, below), then claims among the rest. The times compare
with the database clock; a relative expiry is computed here from this process's
clock (a skew of seconds moves it by as much).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import Any

from errands.errors import OptionError
from errands.lifecycle import Ending, Retry
from errands.models import JobRequest, Status
from errands.validation import EARLIEST_START, LATEST_START

#: The error type of an expired job's result (there is no exception class: nothing raised).
EXPIRED_TYPE = "errands.Expired"

#: What an expired job's result says: CANCELLED, never retried, error "expired".
EXPIRED = Ending(Status.CANCELLED, EXPIRED_TYPE, "expired", Retry.NEVER)

#: Expired requests one claim converts at most (PostgreSQL): the next claims take the rest.
EXPIRE_BATCH = 1000


def is_expired(error_type: str) -> bool:
    """Whether a result's error type says it expired."""
    return error_type == EXPIRED_TYPE


def expired_requests(requests: Iterable[JobRequest], now: datetime.datetime) -> list[JobRequest]:
    """The requests whose expiry passed by ``now`` (the in-memory backend's claim)."""
    return [r for r in requests if r.expires_at is not None and r.expires_at <= now]


def class_default(job: Any) -> object:
    """The job's own expiry: ``default_expires()`` if it has one, else its ``expires``
    attribute (None when it declares neither)."""
    method = getattr(job, "default_expires", None)
    if callable(method):
        return method()
    return getattr(job, "expires", None)


def resolve(
    job: Any, path: str, given: object, now: datetime.datetime | None = None
) -> datetime.datetime | None:
    """The absolute expiry of ``job``: the call's ``given`` (when not None), else the
    class's, as an aware datetime; None when the job never expires.

    Raises OptionError naming the class and the option for a value that is not
    seconds above 0, a positive timedelta or an aware datetime within the storable
    range (checked before anything is written).
    """
    value = class_default(job) if given is None else given
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.utcoffset() is None:
            raise OptionError(f"{path}: expires: datetime {value!r} must be timezone-aware")
        if not EARLIEST_START <= value <= LATEST_START:
            raise OptionError(f"{path}: expires: {value.isoformat()} is outside the storable range")
        return value.astimezone(datetime.UTC)
    seconds = _seconds(value)
    if seconds is None or not (math.isfinite(seconds) and seconds > 0):
        raise OptionError(
            f"{path}: expires must be seconds above 0, a positive timedelta or an aware "
            f"datetime (or None: never), got {value!r:.80}"
        )
    start = now or datetime.datetime.now(datetime.UTC)
    try:
        moment = start + datetime.timedelta(seconds=seconds)
    except OverflowError:
        moment = LATEST_START + datetime.timedelta(days=1)
    if moment > LATEST_START:
        raise OptionError(f"{path}: expires: {value!r:.80} puts it outside the storable range")
    return moment


def _seconds(value: object) -> float | None:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
