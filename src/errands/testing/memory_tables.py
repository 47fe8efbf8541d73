"""The in-memory backend's state: errands' tables as Python containers.

:class:`MemoryTables` is what the writing half (``memory_store``) and the
reading half (``memory_reader``) of the backend share. One re-entrant lock
guards every container: holding it is what a transaction is here, so a claim,
a rescue or a bulk cancel is as atomic as its SQL statement.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import uuid
from collections.abc import Callable

from errands.backends.base import Listener
from errands.models import JobProcess, JobRequest, JobResult
from errands.testing.memory_workers import WorkerRows
from errands.testing.memory_workflows import WorkflowRows

OccurrenceKey = tuple[str, datetime.datetime]  # (schedule entry key, run time)


class MemoryTables:
    """Requests, processes, results, workers, schedules, pauses, dashboard state, the
    start log of rate limits and workflows."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: dict[uuid.UUID, JobRequest] = {}
        self.processes: dict[uuid.UUID, JobProcess] = {}
        #: In the order they were written (the testing helpers' ``results``).
        self.results: list[JobResult] = []
        #: Every request enqueued (not retries), in order, even after it ran.
        self.history: list[JobRequest] = []
        self.heartbeats = WorkerRows()
        self.occurrences: dict[OccurrenceKey, uuid.UUID | None] = {}
        self.paused: set[str] = set()
        #: LOST results still owed their hooks and retry (uuid -> when owed), in order.
        self.owed: dict[uuid.UUID, datetime.datetime] = {}
        self.secrets: dict[str, str] = {}
        self.dashboard_sessions: dict[str, datetime.datetime] = {}  # id -> expires at
        #: Flow control's start log: when jobs of each rate-limited key were claimed.
        self.limit_starts: dict[str, list[datetime.datetime]] = {}
        #: Workflows (errands.workflows), moved by every result written: see memory_workflows.
        self.workflows = WorkflowRows()
        self._listeners: list[MemoryListener] = []

    def _notify(self) -> None:
        """Wake every listener: the contents changed (it may be new work or results)."""
        for listener in list(self._listeners):
            listener.on_wake()

    def _subscribe(self, on_wake: Callable[[], None]) -> MemoryListener:
        listener = MemoryListener(self, on_wake)
        with self.lock:
            self._listeners.append(listener)
        return listener

    def _unsubscribe(self, listener: MemoryListener) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _unsubscribe_all(self) -> None:
        with self.lock:
            self._listeners.clear()


class MemoryListener(Listener):
    """Calls ``on_wake`` synchronously, in the writing thread, after each change:
    there is no other process to hear from, so no background thread is needed."""

    def __init__(self, tables: MemoryTables, on_wake: Callable[[], None]) -> None:
        self.tables = tables
        self.on_wake = on_wake

    def close(self) -> None:
        self.tables._unsubscribe(self)
