"""Every backend operation that is the same named statement in both SQL dialects, once.

A dialect supplies three ways to get a :class:`~errands.backends.sql.codec.Session`
and a :class:`~errands.backends.sql.codec.Codec`:

* ``_reading()``: reads (PostgreSQL: autocommit; SQLite: a deferred transaction,
  so several reads see one snapshot);
* ``_writing()``: one write statement (PostgreSQL: autocommit, so no BEGIN/COMMIT
  round trips; SQLite: ``BEGIN IMMEDIATE``);
* ``_transaction()``: several statements that commit together.

What stays in each dialect is what is written differently there: claiming,
completing, releasing, cancelling and losing jobs (PostgreSQL moves rows with
data-modifying CTEs, SQLite with several statements under its write lock),
enqueueing, connections, migrations and wake-ups.
"""

from __future__ import annotations

import abc
import datetime
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from errands.backends.base import Backend
from errands.backends.reader import prefix_range
from errands.backends.sql.codec import Codec, Row, Session
from errands.backends.sql.workflows import WorkflowReading
from errands.limiting import LimitUsage, summarize
from errands.models import (
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    Occurrence,
    Outcome,
    PageSpec,
    QueueStats,
    Selection,
    Stats,
    Status,
    Throughput,
    WorkerInfo,
)

#: The dashboard's count and delete statements, by table.
COUNT_QUERIES = {
    Kind.REQUEST: "count_requests",
    Kind.PROCESS: "count_processes",
    Kind.RESULT: "count_results",
}
DELETE_QUERIES = {Kind.REQUEST: "delete_requests", Kind.RESULT: "delete_results"}


#: Starts the note a late outcome adds to a LOST result's error (once per result).
LATE_MARK = "late outcome:"


def late_outcome_note(outcome: Outcome, *, retry: Any, withdrawn: bool, unowed: bool) -> str:
    """What a LOST result's error says once its job's own outcome arrived after all."""
    ended = outcome.ended_at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    note = f"{LATE_MARK} {outcome.status} at {ended}, after this result was written"
    if outcome.status != Status.SUCCESSFUL:
        detail = f"{outcome.error_type}: {outcome.error}" if outcome.error_type else outcome.error
        return f"{note} ({detail})" if detail else note
    if withdrawn:
        return f"{note}; its retry {retry} was withdrawn before it started"
    if retry is not None:
        return f"{note}; its retry {retry} had been claimed already and runs anyway"
    if unowed:
        return f"{note}; nothing more is owed (no retry, no on_aborted)"
    return note


def page_query(table: str, page: PageSpec) -> str:
    """The ``page_*`` query of ``table`` in the page's direction."""
    return f"page_{table}_reversed" if page.reverse else f"page_{table}"


class SqlBackend(WorkflowReading, Backend):
    """The operations both SQL backends share, over a dialect's sessions and codec."""

    codec: Codec

    @abc.abstractmethod
    def _reading(self) -> AbstractContextManager[Session]: ...

    @abc.abstractmethod
    def _writing(self) -> AbstractContextManager[Session]: ...

    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[Session]: ...

    def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> Sequence[Row]:
        with self._reading() as session:
            return session.rows(name, params)

    def _run(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        with self._writing() as session:
            return session.run(name, params)

    # -- late outcomes ------------------------------------------------------------------
    def record_late_outcomes(self, outcomes: Sequence[Outcome]) -> int:
        """Keep on their LOST results the outcomes whose process a peer rescued (see
        ``late_outcome_note``); a late SUCCESSFUL withdraws the retry that has not
        started yet, or the retry still owed. One transaction; how many were kept."""
        kept = 0
        with self._transaction() as session:
            for outcome in outcomes:
                process = {"process_uuid": self.codec.uuid(outcome.process_uuid)}
                found = session.rows("lost_result_of_process", process)
                if not found or LATE_MARK in found[0]["error"]:
                    continue  # not rescued (written before, or deleted), or kept already
                result_uuid = found[0]["uuid"]
                succeeded = outcome.status == Status.SUCCESSFUL
                # The follow-up first, then the result: settle_followup's order.
                unowed = succeeded and session.run("settle_followup", {"result_uuid": result_uuid})
                (row,) = session.rows("lock_lost_result", {"uuid": result_uuid})
                retry = row["retry_request_uuid"]
                withdrawn = (
                    succeeded
                    and retry is not None
                    and session.run("withdraw_request", {"uuid": retry}) > 0
                )
                note = late_outcome_note(
                    outcome, retry=retry, withdrawn=withdrawn, unowed=bool(unowed)
                )
                params = {
                    "uuid": result_uuid,
                    "error": f"{row['error']}; {note}" if row["error"] else note,
                    "started_at": self.codec.optional_time(outcome.started_at),
                    "retry_request_uuid": None if withdrawn else retry,
                }
                session.run("annotate_late_outcome", params)
                if succeeded and (withdrawn or unowed):  # no attempt left to end its job
                    late = {"result_uuid": result_uuid, "retry": retry}
                    session.run("late_success_ends_workflow_node", late)
                kept += 1
        return kept

    # -- workers: heartbeat and rescue --------------------------------------------------
    def register_worker(self, *, worker: WorkerInfo) -> None:
        self._run(
            "register_worker",
            {
                "worker_id": self.codec.uuid(worker.worker_id),
                "hostname": worker.hostname,
                "pid": worker.pid,
                "queues": self.codec.texts(list(worker.queues)),
            },
        )

    def heartbeat(self, *, worker_id: uuid.UUID) -> bool:
        return self._run("heartbeat", {"worker_id": self.codec.uuid(worker_id)}) > 0

    def deregister_worker(self, *, worker_id: uuid.UUID) -> None:
        self._run("deregister_worker", {"worker_id": self.codec.uuid(worker_id)})

    def rescue_stale_workers(
        self, *, timeout_seconds: float, rescuer: uuid.UUID | None = None
    ) -> list[JobResult]:
        timeout = {
            "timeout_seconds": float(timeout_seconds),
            "rescuer": self.codec.optional_uuid(rescuer),
        }
        with self._reading() as session:
            stale = [row["worker_id"] for row in session.rows("stale_workers", timeout)]
            vanished = [row["worker_id"] for row in session.rows("orphaned_workers", timeout)]
        lost: list[JobResult] = []
        for worker_id in stale:
            lost += self._rescue_stale_worker(worker_id, timeout_seconds)
        for worker_id in vanished:
            lost += self._rescue_vanished_worker(worker_id, timeout_seconds)
        return lost

    @abc.abstractmethod
    def _rescue_stale_worker(self, worker_id: Any, timeout_seconds: float) -> list[JobResult]:
        """One transaction: take a silent worker's heartbeat row (if no peer did, and it
        did not beat meanwhile), then turn its processes into LOST results."""

    @abc.abstractmethod
    def _rescue_vanished_worker(self, worker_id: Any, timeout_seconds: float) -> list[JobResult]:
        """Turn the processes, claimed over ``timeout_seconds`` ago, of a worker with no
        heartbeat row into LOST results."""

    def processes_of_worker(self, *, worker_id: uuid.UUID) -> list[JobProcess]:
        rows = self._rows("processes_of_worker", {"worker_id": self.codec.uuid(worker_id)})
        return [self.codec.process(row) for row in rows]

    def workers(self, *, timeout_seconds: float) -> list[WorkerInfo]:
        rows = self._rows("list_workers", {"timeout_seconds": float(timeout_seconds)})
        return [self.codec.worker(row) for row in rows]

    # -- stop (running processes) -------------------------------------------------------
    def flag_to_stop(self, *, uuid: uuid.UUID) -> bool:
        return self._run("flag_to_stop", {"uuid": self.codec.uuid(uuid)}) > 0

    def flag_to_stop_selected(self, *, selection: Selection) -> int:
        return self._run("flag_to_stop_selected", self.codec.selection(selection))

    def flagged_to_stop(self, *, worker_id: uuid.UUID) -> list[uuid.UUID]:
        rows = self._rows("flagged_to_stop", {"worker_id": self.codec.uuid(worker_id)})
        return [self.codec.uuid_of(row["uuid"]) for row in rows]

    # -- prune and delete ---------------------------------------------------------------
    def prune_results(
        self,
        *,
        older_than_seconds: float,
        batch_size: int = 1000,
        status: str | None = None,
        job_class: str | None = None,
        except_classes: Sequence[str] = (),
    ) -> int:
        params: dict[str, Any] = {
            "older_than_seconds": float(older_than_seconds),
            "batch_size": batch_size,
        }
        if job_class is not None:
            if status is None:
                raise ValueError("prune_results(job_class=) needs a status")
            params.update(job_class=job_class, status=status)
            pruned = self._run("prune_class_results", params)
        elif status is not None:
            params.update(status=status, except_classes=self.codec.texts(list(except_classes)))
            pruned = self._run("prune_status_results", params)
        else:
            pruned = self._run("prune_results", params)
        if pruned:  # nothing is owed on a result that is gone
            self._run("forget_orphaned_followups")
        return pruned

    def followups(self, *, limit: int) -> list[JobResult]:
        return [self.codec.result(row) for row in self._rows("followups", {"limit": limit})]

    def purge(self, *, older_than_seconds: float | None = None) -> int:
        if older_than_seconds is None:
            return self._run("purge_all_results")
        return self._run("purge_results_before", {"older_than_seconds": float(older_than_seconds)})

    def delete(self, *, kind: Kind, selection: Selection, limit: int) -> int:
        if kind is Kind.PROCESS:
            raise ValueError("processes cannot be deleted: cancel them instead")
        params = {**self.codec.selection(selection), "limit": limit}
        return self._run(DELETE_QUERIES[kind], params)

    # -- schedules and pauses -----------------------------------------------------------
    def last_occurrences(self) -> dict[str, Occurrence]:
        return {
            row["entry_key"]: Occurrence(
                entry_key=row["entry_key"],
                run_at=self.codec.moment(row["run_at"]),
                request_uuid=self.codec.uuid_of(row["request_uuid"])
                if row["request_uuid"]
                else None,
            )
            for row in self._rows("last_occurrences")
        }

    def withdraw_occurrences(self, *, keep: Sequence[str], trim_before: datetime.datetime) -> int:
        keep_param = {"keep": self.codec.texts(list(keep))}
        with self._transaction() as session:
            withdrawn = session.run("withdraw_requests_of_forgotten_entries", keep_param)
            session.run("forget_entries", keep_param)
            session.run("trim_occurrences", {"trim_before": self.codec.time(trim_before)})
        return withdrawn

    def pause_queue(self, *, queue: str) -> bool:
        return self._run("pause_queue", {"queue": queue}) > 0

    def resume_queue(self, *, queue: str) -> bool:
        return self._run("resume_queue", {"queue": queue}) > 0

    def paused_queues(self) -> list[str]:
        return [row["queue"] for row in self._rows("paused_queues")]

    # -- reading ------------------------------------------------------------------------
    def get(self, *, uuid: uuid.UUID) -> JobRequest | JobProcess | JobResult | None:
        params = {"uuid": self.codec.uuid(uuid)}
        with self._reading() as session:
            if rows := session.rows("get_request", params):
                return self.codec.request(rows[0])
            if rows := session.rows("get_process", params):
                return self.codec.process(rows[0])
            if rows := session.rows("get_result", params):
                return self.codec.result(rows[0])
        return None

    def find_prefix(self, *, prefix: str, limit: int) -> list[JobRequest | JobProcess | JobResult]:
        low, high = prefix_range(prefix)
        params = {"low": self.codec.uuid(low), "high": self.codec.uuid(high), "limit": limit}
        found: list[JobRequest | JobProcess | JobResult] = []
        with self._reading() as session:
            found += [self.codec.request(row) for row in session.rows("prefix_requests", params)]
            found += [self.codec.process(row) for row in session.rows("prefix_processes", params)]
            found += [self.codec.result(row) for row in session.rows("prefix_results", params)]
        return found

    def next_requests(self, *, selection: Selection, limit: int) -> list[JobRequest]:
        params = {**self.codec.selection(selection), "limit": limit}
        return [self.codec.request(row) for row in self._rows("next_requests", params)]

    def page_requests(self, *, selection: Selection, page: PageSpec) -> list[JobRequest]:
        rows = self._rows(page_query("requests", page), self.codec.page(selection, page))
        return [self.codec.request(row) for row in rows]

    def page_processes(self, *, selection: Selection, page: PageSpec) -> list[JobProcess]:
        rows = self._rows(page_query("processes", page), self.codec.page(selection, page))
        return [self.codec.process(row) for row in rows]

    def page_results(self, *, selection: Selection, page: PageSpec) -> list[JobResult]:
        rows = self._rows(page_query("results", page), self.codec.page(selection, page))
        return [self.codec.result(row) for row in rows]

    def count(self, *, kind: Kind, selection: Selection) -> int:
        counted: int = self._rows(COUNT_QUERIES[kind], self.codec.selection(selection))[0]["count"]
        return counted

    def retried_by(self, *, request_uuid: uuid.UUID) -> JobResult | None:
        rows = self._rows("retried_by", {"request_uuid": self.codec.uuid(request_uuid)})
        return self.codec.result(rows[0]) if rows else None

    def stats(self, *, heartbeat_timeout_seconds: float) -> Stats:
        timeout = {"timeout_seconds": float(heartbeat_timeout_seconds)}
        with self._reading() as session:
            queues = [QueueStats(**dict(row)) for row in session.rows("queue_stats")]
            by_status = {row["status"]: row["count"] for row in session.rows("results_by_status")}
            workers = session.rows("worker_counts", timeout)[0]
        return Stats(
            queues=queues,
            results_by_status=by_status,
            workers_active=workers["active"],
            workers_stale=workers["stale"],
        )

    def queue_stats(self) -> list[QueueStats]:
        return [QueueStats(**dict(row)) for row in self._rows("queue_stats")]

    def throughput(self, *, since: datetime.datetime, bucket_seconds: int) -> list[Throughput]:
        params = {"since": self.codec.time(since), "bucket_seconds": int(bucket_seconds)}
        return [
            Throughput(
                bucket_start=self.codec.moment(row["bucket_start"]),
                status=Status(row["status"]),
                count=row["count"],
                retried=row["retried"],
            )
            for row in self._rows("throughput", params)
        ]

    def limit_usage(self) -> list[LimitUsage]:
        with self._reading() as session:
            jobs = [(row["limits"], row["state"]) for row in session.rows("limited_jobs")]
            starts = [(row["key"], float(row["age"])) for row in session.rows("limit_start_ages")]
        return summarize(jobs, starts)

    def now(self) -> datetime.datetime:
        return self.codec.moment(self._rows("now")[0]["now"])

    # -- the dashboard's secret and sessions --------------------------------------------
    def shared_secret(self, *, name: str, candidate: str) -> str:
        # One transaction: a second process's insert waits for the first to commit.
        with self._transaction() as session:
            session.run("insert_secret", {"name": name, "value": candidate})
            value: str = session.rows("secret", {"name": name})[0]["value"]
        return value

    def start_dashboard_session(self, *, session_id: str, lifetime_seconds: float) -> None:
        # Expired logins are deleted as new ones start, so the table stays small.
        with self._transaction() as session:
            session.run("prune_dashboard_sessions")
            session.run("start_dashboard_session", {"id": session_id, "lifetime": lifetime_seconds})

    def dashboard_session_active(self, *, session_id: str) -> bool:
        return bool(self._rows("dashboard_session_active", {"id": session_id})[0]["active"])

    def end_dashboard_session(self, *, session_id: str) -> None:
        self._run("end_dashboard_session", {"id": session_id})
