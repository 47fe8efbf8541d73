"""Waiting for a job's final result (``errands.wait_for_result``).

A job's result is *final* when it is SUCCESSFUL, or ERRORED, LOST or CANCELLED
with no retry enqueued. A result that was retried, or DEFERRED and enqueued again,
is not final: the wait follows it to the request that continues the job, and so on
along the chain. A DEFERRED result whose re-enqueue ``should_enqueue`` declined is
final.

Waiting threads of one process share one listener per backend, opened by the
first wait and kept until the backend closes: on PostgreSQL it LISTENs on the
channel ``errands_results``, notified by a trigger whenever results are written
(with their request uuids, so only the concerned waiters look); on SQLite it
watches ``PRAGMA data_version``, which changes on every commit. A waiter also
looks again every ``poll_interval`` seconds (the setting), in case a notification
was lost while the listener reconnected.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid as uuid_module
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from errands import settings
from errands.backends.base import Backend, Listener
from errands.models import JobProcess, JobRequest, JobResult

Attempt = JobRequest | JobProcess | JobResult

#: Longest retry chain followed; a longer one is surely a loop of deferrals.
LONGEST_CHAIN = 10_000


class _Waiter:
    """One waiting thread: woken when a result of a request it watches is written."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.watched: set[uuid_module.UUID] = set()


class _Hub:
    """The shared listener of one backend and the waiters it wakes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: set[_Waiter] = set()
        self.listener: Listener | None = None

    @contextmanager
    def waiting(self, backend: Backend) -> Iterator[_Waiter]:
        waiter = _Waiter()
        with self.lock:
            self.waiters.add(waiter)
        try:
            self._ensure_listener(backend)
            yield waiter
        finally:
            with self.lock:
                self.waiters.discard(waiter)

    def _ensure_listener(self, backend: Backend) -> None:
        with self.lock:
            if self.listener is None:
                self.listener = backend.listen_results(on_results=self.on_results)

    def on_results(self, request_uuids: frozenset[uuid_module.UUID] | None) -> None:
        with self.lock:
            waiters = list(self.waiters)
        for waiter in waiters:
            if request_uuids is None or not request_uuids.isdisjoint(waiter.watched):
                waiter.event.set()


_hubs: weakref.WeakKeyDictionary[Backend, _Hub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def _hub_of(backend: Backend) -> _Hub:
    with _hubs_lock:
        hub = _hubs.get(backend)
        if hub is None:
            hub = _hubs[backend] = _Hub()
        return hub


def wait_for_result(
    backend: Backend,
    uuid: uuid_module.UUID,
    *,
    timeout: float | None,
    follow_retries: bool = True,
) -> JobResult:
    """See :func:`errands.api.wait_for_result`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    recheck = settings.current().poll_interval
    with _hub_of(backend).waiting(backend) as waiter:
        while True:
            waiter.event.clear()  # before looking, so a result written meanwhile wakes us
            latest = _latest_attempt(backend, uuid, waiter.watched, follow_retries)
            if isinstance(latest, JobResult):
                return latest
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"job {uuid} has no final result after {timeout} seconds "
                    f"(latest attempt: {_describe(latest)})"
                )
            waiter.event.wait(recheck if remaining is None else min(recheck, remaining))


async def wait_for_result_async(
    backend: Backend,
    uuid: uuid_module.UUID,
    *,
    timeout: float | None,
    follow_retries: bool = True,
) -> JobResult:
    """:func:`wait_for_result` on a thread, for ``async`` code."""
    return await asyncio.to_thread(
        wait_for_result, backend, uuid, timeout=timeout, follow_retries=follow_retries
    )


def _latest_attempt(
    backend: Backend,
    uuid: uuid_module.UUID,
    watched: set[uuid_module.UUID],
    follow_retries: bool,
) -> JobRequest | JobProcess | JobResult:
    """The newest attempt along the chain starting at ``uuid``; a JobResult only if final.

    Request uuids are added to ``watched`` before they are looked up, so a result
    written just after the lookup still wakes the waiter.
    """
    current = uuid
    previous: JobResult | None = None
    for _ in range(LONGEST_CHAIN):
        watched.add(current)
        found = backend.get(uuid=current)
        if found is None:
            if previous is not None:
                return previous  # the follow-up request was deleted: the chain ends here
            raise LookupError(f"no job has the uuid {uuid}")
        watched.add(found.uuid if isinstance(found, JobRequest) else found.request_uuid)
        if not (isinstance(found, JobResult) and found.retry_request_uuid and follow_retries):
            return found
        previous, current = found, found.retry_request_uuid
    raise RuntimeError(f"job {uuid} was retried or deferred more than {LONGEST_CHAIN} times")


def _describe(attempt: Attempt) -> str:
    if isinstance(attempt, JobRequest):
        return f"pending request {attempt.uuid}, due {attempt.start_at.isoformat()}"
    if isinstance(attempt, JobProcess):
        state = "running" if attempt.started_at else "claimed"
        return f"{state} process {attempt.uuid} on worker {attempt.worker_id}"
    return f"{attempt.status} result {attempt.uuid}"
