"""Uniqueness: ``Unique``, at most one job of a key in the states it names.

A unique job's key is stored in its ``concurrency_key`` column, prefixed with
``errands.unique`` (``errands.unique:<key>`` for a given key, ``errands.unique#<hash>``
for the default key, a hash of the job's stored arguments), so it travels with the
job from request to process to result as any concurrency key does, and is found by
the same indexes. Enqueues of one (job class, key) slot are serialised as every
concurrency slot is (PostgreSQL: an advisory lock per slot; SQLite: the single
writer; memory: the backend's lock), so the check and the insert, replacement or
postponement that follows it are race-free.

Every rule about what a conflict means lives in :func:`decide`; the backends only
report a slot's state (:meth:`EnqueueTransaction.unique_slots`) and carry out the
decision (:meth:`EnqueueTransaction.replace_request`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from errands.backends.store import EnqueueTransaction, SlotState
from errands.errors import OptionError
from errands.models import JobRequest, NewRequest

#: Stored keys of unique jobs start with this; a job's own concurrency key may not.
RESERVED_PREFIX = "errands.unique"
MAX_KEY_LENGTH = 400  # the stored key (prefix included) stays under the 500 allowed
PENDING, RUNNING, SUCCEEDED = "pending", "running", "succeeded"
STATES = (PENDING, RUNNING, SUCCEEDED)
SKIP, REPLACE, DEBOUNCE = "skip", "replace", "debounce"
CONFLICT_MODES = (SKIP, REPLACE, DEBOUNCE)


@dataclass(frozen=True, slots=True, init=False)
class Unique:
    """At most one job of this class and ``key`` in any of ``states``.

    ``key``: None (the job's class and its stored arguments), a string, or a callable
    taking the job and returning a string (called at enqueue). ``states``: in which
    states an existing job makes an enqueue a duplicate: ``"pending"`` (waiting to
    run, due or not), ``"running"`` (claimed by a worker or running), ``"succeeded"``
    (ended SUCCESSFUL within the last ``period`` seconds; ``period`` is required with
    it and only with it). ``on_conflict``: ``"skip"`` (the duplicate is not enqueued),
    ``"replace"`` (its arguments and options replace those of the pending job, which
    keeps its due time), ``"debounce"`` (the same, and the pending job's due time
    moves to the duplicate's: it runs once, after the last of a burst). A pending job
    only can be replaced: a duplicate of a job that is no longer pending is skipped.
    """

    key: str | Callable[[Any], str] | None
    states: tuple[str, ...]
    period: float | None
    on_conflict: str

    def __init__(
        self,
        key: str | Callable[[Any], str] | None = None,
        *,
        states: Iterable[str] | str = (PENDING,),
        period: float | datetime.timedelta | None = None,
        on_conflict: str = SKIP,
    ) -> None:
        if key is not None and not callable(key):
            _check_key(key, what="Unique(key=...)")
        checked_states = _checked_states(states)
        seconds = _checked_period(period, checked_states)
        if on_conflict not in CONFLICT_MODES:
            raise OptionError(
                f"Unique(on_conflict={on_conflict!r}): expected one of "
                + ", ".join(repr(mode) for mode in CONFLICT_MODES)
            )
        if on_conflict != SKIP and PENDING not in checked_states:
            raise OptionError(
                f"Unique(on_conflict={on_conflict!r}): replaces a pending job, "
                f"so states must include 'pending' (got {checked_states!r})"
            )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "states", checked_states)
        object.__setattr__(self, "period", seconds)
        object.__setattr__(self, "on_conflict", on_conflict)

    def stored_key(self, job: Any, parameters: Mapping[str, Any], names: Sequence[str] = ()) -> str:
        """The key stored for ``job`` in its concurrency_key column (``names``: its
        constructor's positional parameters, so that an argument counts the same
        whether it was passed by position or by name)."""
        if self.key is None:
            canonical = _by_name(parameters, names)
            encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
            return f"{RESERVED_PREFIX}#{hashlib.sha256(encoded.encode()).hexdigest()[:32]}"
        key = self.key(job) if callable(self.key) else self.key
        _check_key(key, what="the key of its Unique")
        return f"{RESERVED_PREFIX}:{key}"


def _by_name(parameters: Mapping[str, Any], names: Sequence[str]) -> Any:
    """Stored arguments with the positional ones that have a name moved to keywords."""
    args, kwargs = parameters.get("args"), parameters.get("kwargs")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return parameters
    named = dict(zip(names, args, strict=False))
    return {**parameters, "args": args[len(named) :], "kwargs": {**named, **kwargs}}


def _check_key(key: Any, *, what: str) -> None:
    if not isinstance(key, str) or not key.strip():
        raise OptionError(f"{what}: expected a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH - len(RESERVED_PREFIX) - 1:
        raise OptionError(f"{what}: longer than {MAX_KEY_LENGTH - 16} characters")
    if "\x00" in key or (not key.isprintable() and _has_surrogates(key)):
        raise OptionError(f"{what}: NUL characters and lone surrogates cannot be stored")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _checked_states(states: Any) -> tuple[str, ...]:
    if isinstance(states, str):
        states = (states,)
    try:
        given = tuple(states)
    except TypeError:
        given = None
    if not given or any(state not in STATES for state in given):
        raise OptionError(
            f"Unique(states={states!r}): expected one or more of "
            + ", ".join(repr(state) for state in STATES)
        )
    return tuple(state for state in STATES if state in given)  # a canonical order


def _checked_period(period: Any, states: tuple[str, ...]) -> float | None:
    if period is None:
        if SUCCEEDED in states:
            raise OptionError(
                "Unique(states=(..., 'succeeded')): give period=, the seconds "
                "a success keeps counting"
            )
        return None
    if SUCCEEDED not in states:
        raise OptionError(
            f"Unique(period={period!r}): a period counts successes: add 'succeeded' to states"
        )
    if isinstance(period, datetime.timedelta):
        period = period.total_seconds()
    if (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not math.isfinite(period)
        or period <= 0
    ):
        raise OptionError(
            f"Unique(period={period!r}): expected a finite number of seconds above 0 or a timedelta"
        )
    return float(period)


def resolve(unique: Any, job: Any, path: str) -> Unique | None:
    """The ``Unique`` to apply to ``job``: the call's, else its class's; checked."""
    if unique is None:
        unique = getattr(type(job), "unique", None)
        if unique is None:
            return None
    if not isinstance(unique, Unique):
        raise OptionError(f"{path}: unique: expected errands.Unique or None, got {unique!r}")
    return unique


def unique_request(
    unique: Unique,
    job: Any,
    request: NewRequest,
    *,
    path: str,
    own_key: str,
    names: Sequence[str] = (),
) -> NewRequest:
    """``request`` with its uniqueness key stored as its concurrency key.

    ``own_key`` is the job's concurrency key from options or its default: a unique job
    has none of its own, unless it is its uniqueness key (a retry carries it)."""
    try:
        key = unique.stored_key(job, request.parameters, names)
    except OptionError as exc:
        raise OptionError(f"{path}: unique: {exc}") from None
    except Exception as exc:
        raise OptionError(f"{path}: unique: its key callable raised {exc!r}") from exc
    if own_key and own_key != key:
        raise OptionError(
            f"{path}: unique: a unique job's concurrency key is its uniqueness key; "
            f"got concurrency_key {own_key!r} too"
        )
    return dataclasses.replace(request, concurrency_key=key)


def check_own_key(key: Any, path: str, what: str) -> None:
    """A job's own concurrency key may not look like a uniqueness key."""
    if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
        raise OptionError(
            f"{path}: {what}: keys starting with {RESERVED_PREFIX!r} are errands' "
            f"uniqueness keys (use errands.Unique); got {key!r}"
        )


# -- the rule ---------------------------------------------------------------------


EMPTY = SlotState(pending=None, running=False, success_age=None)


class Action(enum.Enum):
    INSERT = "insert"
    SKIP = "skip"
    REPLACE = "replace"


def decide(unique: Unique, state: SlotState) -> Action:
    """What an enqueue of a job with ``unique`` does, given its slot's ``state``."""
    if PENDING in unique.states and state.pending is not None:
        return Action.SKIP if unique.on_conflict == SKIP else Action.REPLACE
    if RUNNING in unique.states and state.running:
        return Action.SKIP
    if SUCCEEDED in unique.states and state.success_age is not None:
        assert unique.period is not None
        if state.success_age < unique.period:
            return Action.SKIP
    return Action.INSERT


def merged(old: NewRequest, new: NewRequest, unique: Unique) -> NewRequest:
    """A not yet inserted request replaced by ``new`` (same slot): ``new`` under the
    old one's key, with the old one's due time unless debouncing."""
    if unique.on_conflict == DEBOUNCE:
        return dataclasses.replace(new, uuid=old.uuid)
    return dataclasses.replace(
        new, uuid=old.uuid, delay_seconds=old.delay_seconds, start_at=old.start_at
    )


class Arbiter:
    """Decides the unique jobs of one enqueue batch, in order, against their slots'
    states (read once for the batch) and the batch's own earlier jobs."""

    def __init__(
        self, tx: EnqueueTransaction, entries: Iterable[tuple[NewRequest, Unique]]
    ) -> None:
        self.tx = tx
        entries = list(entries)
        self.successes = any(SUCCEEDED in unique.states for _, unique in entries)
        slots = sorted({(request.job_class, request.concurrency_key) for request, _ in entries})
        self.states = tx.unique_slots(slots, successes=self.successes) if slots else {}

    def enqueue(
        self, request: NewRequest, unique: Unique, batch: dict[UUID, NewRequest]
    ) -> tuple[UUID | None, JobRequest | None]:
        """Decide ``request``: the uuid of the request it becomes (None: skipped), and
        that request when it was replaced in the database. An insert or a
        replacement of a request of ``batch`` (not inserted yet) is made in ``batch``.
        """
        slot = (request.job_class, request.concurrency_key)
        while True:
            state = self.states.get(slot) or EMPTY
            action = decide(unique, state)
            if action is Action.SKIP:
                return None, None
            if action is Action.INSERT:
                batch[request.uuid] = request
                self.states[slot] = dataclasses.replace(state, pending=request.uuid)
                return request.uuid, None
            assert state.pending is not None
            if state.pending in batch:
                batch[state.pending] = merged(batch[state.pending], request, unique)
                return state.pending, None
            replaced = self.tx.replace_request(
                state.pending, request, move_due_time=unique.on_conflict == DEBOUNCE
            )
            if replaced is not None:
                return replaced.uuid, replaced
            # Claimed meanwhile (claims do not wait for enqueue locks): look again.
            self.states[slot] = self.tx.unique_slots([slot], successes=self.successes).get(
                slot, EMPTY
            )
