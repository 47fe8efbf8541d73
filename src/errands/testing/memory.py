"""An in-memory backend for tests: errands' tables in dictionaries of this process.

It implements all of :class:`~errands.backends.base.Backend` with the semantics
of the SQL backends,
split by concern as the seam is:

* ``memory_store`` -- every write of a job's life (enqueue ... rescue, prune);
* ``memory_reader`` -- look-ups, pages, counts, stats and throughput;
* ``memory_tables``, ``memory_rows``, ``memory_selection``, ``memory_workers``,
  ``memory_enqueue`` -- the state, the rows, the selections, the heartbeat rows
  and the enqueue transaction they share;
* this module -- the backend itself: schema, wake-ups, the dashboard's state,
  and running jobs in-process for :mod:`errands.testing`'s helpers.

Jobs run through :func:`errands.worker.execution.execute`, exactly as in a
worker's child, so ERRORED, DEFERRED and retries behave the same; timeouts are
not enforced (there is no child process to kill).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable

from errands import settings
from errands.backends.base import Backend, Listener
from errands.models import JobProcess, JobRequest, JobResult
from errands.testing.memory_reader import MemoryReader
from errands.testing.memory_rows import claim_order, utcnow
from errands.testing.memory_store import MemoryStore
from errands.worker import execution
from errands.workflow_models import is_held

__all__ = ["TEST_WORKER_ID", "MemoryBackend", "RunawayJobs"]

#: The worker id stamped on processes run in-process by the test helpers.
TEST_WORKER_ID = uuid.UUID(int=0)

#: What ``migration_sql`` gives: valid SQL that creates nothing.
NO_MIGRATION = "-- errands' in-memory backend keeps no tables: there is nothing to migrate.\n"


class RunawayJobs(RuntimeError):
    """Running captured jobs never emptied the queue (a job keeps enqueueing itself)."""


class MemoryBackend(MemoryStore, MemoryReader, Backend):
    """errands' tables as dictionaries in this process (see the module docstring).

    ``mode`` names the helper that owns it ("capture" or "immediate") for messages.
    After each committed enqueue, ``on_enqueued`` is called with the new requests
    (immediate mode runs them there).
    """

    name = "memory"

    def __init__(
        self,
        *,
        mode: str,
        on_enqueued: Callable[[list[JobRequest]], None] | None = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.url = f"memory://{mode}"
        self.on_enqueued = on_enqueued

    def _enqueued(self, requests: list[JobRequest]) -> None:
        if self.on_enqueued is not None:
            self.on_enqueued(requests)

    # -- schema: nothing to create -------------------------------------------------------
    def migrate(self) -> list[int]:
        return []

    def migration_sql(self) -> str:
        """An SQL comment: there are no tables, so an external tool has nothing to run."""
        return NO_MIGRATION

    def schema_version(self) -> int | None:
        """Always current: the containers exist as soon as the backend does."""
        return self.latest_schema_version()

    def latest_schema_version(self) -> int:
        return 0

    # -- running jobs in-process ---------------------------------------------------------
    def run_next(self, *, include_delayed: bool) -> JobResult | None:
        """Claim the first request in claim order, run it here, store its result.

        None when nothing is pending (or, without ``include_delayed``, nothing is due).
        """
        process = self._claim_one(include_delayed=include_delayed)
        if process is None:
            return None
        assignment = execution.Assignment.of(process)  # the context a worker would give
        handler = execution.build_handler(settings.current().middleware)
        outcome = execution.execute(assignment, handler)
        results = self.complete_many(outcomes=[outcome])
        return results[0] if results else None

    def run_all(self, *, include_delayed: bool, max_jobs: int) -> list[JobResult]:
        """Run pending requests (and those they enqueue, and retries) until none is left."""
        results: list[JobResult] = []
        while (result := self.run_next(include_delayed=include_delayed)) is not None:
            results.append(result)
            if len(results) >= max_jobs and self.requests:
                raise RunawayJobs(
                    f"ran {len(results)} jobs and {len(self.requests)} are still pending "
                    f"(next: {next(iter(self.requests.values())).job_class}); does a job "
                    "enqueue itself, or defer forever? Raise max_jobs if this is expected"
                )
        return results

    def _claim_one(self, *, include_delayed: bool) -> JobProcess | None:
        """Unlike ``claim``, delayed requests may be taken: the helpers do not wait
        (but held workflow jobs may not)."""
        with self.lock:
            now = utcnow()
            candidates = [
                r
                for r in self.requests.values()
                if r.queue not in self.paused
                and (include_delayed or r.start_at <= now)
                # A workflow's job waiting for its dependencies is not delayed: it runs
                # once they end (they release it, due now), or never.
                and not is_held(r.start_at)
            ]
            if not candidates:
                return None
            request = min(candidates, key=claim_order)
            return self._to_process(request, TEST_WORKER_ID, now=now, started_at=now)

    # -- wake-ups ------------------------------------------------------------------------
    def listen(self, *, on_wake: Callable[[], None]) -> Listener:
        """``on_wake`` runs in the writing thread after every change (see ``MemoryListener``)."""
        return self._subscribe(on_wake)

    # -- the dashboard's secret and sessions ---------------------------------------------
    def shared_secret(self, *, name: str, candidate: str) -> str:
        with self.lock:
            return self.secrets.setdefault(name, candidate)

    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        now = utcnow()
        with self.lock:
            live = {k: at for k, at in self.dashboard_sessions.items() if at > now}
            live[session_id] = now + datetime.timedelta(seconds=lifetime_seconds)
            self.dashboard_sessions = live

    def dashboard_session_active(self, *, session_id: str) -> bool:
        with self.lock:
            expires = self.dashboard_sessions.get(session_id)
        return expires is not None and expires > utcnow()

    def end_dashboard_session(self, *, session_id: str) -> None:
        with self.lock:
            self.dashboard_sessions.pop(session_id, None)

    def close(self) -> None:
        self._unsubscribe_all()
