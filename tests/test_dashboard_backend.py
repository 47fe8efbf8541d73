"""What the dashboard asks of the backends and of ``errands.api``: keyset pages,
selections, counts, throughput, the retry chain and bulk operations, on each backend."""

from __future__ import annotations

import datetime
import uuid

import pytest
from dashboard_rows import claim, enqueue, failed, finish, results

from conftest import wait_for
from errands import api
from errands.backends import Backend
from errands.dashboard.chart import ThroughputCache, outcome_counts
from errands.models import (
    Cursor,
    JobProcess,
    JobRequest,
    JobResult,
    Kind,
    PageSpec,
    Requeue,
    Selection,
    Status,
)

EVERYTHING = Selection()


def all_pages(backend: Backend, kind: Kind, selection: Selection, *, reverse: bool = False) -> list:
    """Every row, fetched 7 at a time by keyset."""
    rows: list = []
    cursor = None
    while True:
        page = PageSpec(after=cursor, reverse=reverse, limit=7)
        if kind is Kind.RESULT:
            batch: list = backend.page_results(selection=selection, page=page)
        elif kind is Kind.PROCESS:
            batch = backend.page_processes(selection=selection, page=page)
        else:
            batch = backend.page_requests(selection=selection, page=page)
        rows += batch
        if len(batch) < 7:
            return rows
        last = batch[-1]
        at = {Kind.RESULT: "ended_at", Kind.PROCESS: "created_at", Kind.REQUEST: "start_at"}[kind]
        cursor = Cursor(at=getattr(last, at), uuid=last.uuid)


def test_result_pages_cover_every_row_once_newest_first_even_with_equal_times(
    backend: Backend,
) -> None:
    # One completion writes every result with the same ended_at: only the uuid orders them.
    written = results(backend, 30)
    older = results(backend, 5, queue="other")
    rows = all_pages(backend, Kind.RESULT, EVERYTHING)
    assert sorted(r.uuid for r in rows) == sorted(r.uuid for r in written + older)
    assert len(rows) == 35
    keys = [(r.ended_at, r.uuid) for r in rows]
    assert keys == sorted(keys, reverse=True)
    reversed_rows = all_pages(backend, Kind.RESULT, EVERYTHING, reverse=True)
    assert [r.uuid for r in reversed_rows] == [r.uuid for r in reversed(rows)]


def test_request_and_process_pages_follow_due_time_and_claim_time(backend: Backend) -> None:
    later = enqueue(backend, 9, queue="mail", delay=3600)
    due = enqueue(backend, 9, queue="mail")
    requests = all_pages(backend, Kind.REQUEST, EVERYTHING)
    assert [r.uuid for r in requests[:9]] == [r.uuid for r in sorted(due, key=lambda r: r.uuid)]
    assert {r.uuid for r in requests[9:]} == {r.uuid for r in later}
    claimed = claim(backend, "mail")
    processes = all_pages(backend, Kind.PROCESS, EVERYTHING)
    assert sorted(p.uuid for p in processes) == sorted(p.uuid for p in claimed)


def test_selection_filters_each_narrow_the_results(backend: Backend) -> None:
    ok = results(backend, 3, queue="a")
    bad = failed(backend)
    deferred = results(backend, 2, Status.DEFERRED, queue="c", requeue=Requeue(3600, 1))

    def uuids(**filters: object) -> set[uuid.UUID]:
        selection = Selection(**filters)  # type: ignore[arg-type]
        return {r.uuid for r in all_pages(backend, Kind.RESULT, selection)}

    assert uuids(queue="a") == {r.uuid for r in ok}
    assert uuids(status=Status.ERRORED) == {bad.uuid}
    assert uuids(job_class="sample_jobs.Fail") == {bad.uuid}
    assert uuids(retried=True) == {r.uuid for r in deferred}
    assert uuids(uuid=bad.uuid) == {bad.uuid}
    assert uuids(uuid=bad.request_uuid) == {bad.uuid}
    assert uuids(uuid=bad.process_uuid) == {bad.uuid}
    now = backend.now()
    assert len(uuids(since=now - datetime.timedelta(minutes=5))) == 6
    assert uuids(until=now - datetime.timedelta(minutes=5)) == set()
    assert backend.count(kind=Kind.RESULT, selection=Selection(queue="a")) == 3


def test_requests_select_pending_or_scheduled_and_processes_by_request(backend: Backend) -> None:
    due = enqueue(backend, 2, queue="q")
    later = enqueue(backend, 3, queue="q", delay=3600)
    pending = Selection(due=True)
    scheduled = Selection(due=False)
    assert {r.uuid for r in all_pages(backend, Kind.REQUEST, pending)} == {r.uuid for r in due}
    assert {r.uuid for r in all_pages(backend, Kind.REQUEST, scheduled)} == {r.uuid for r in later}
    assert backend.count(kind=Kind.REQUEST, selection=scheduled) == 3
    (process, _) = claim(backend, "q")
    by_request = Selection(uuid=process.request_uuid)
    assert [p.uuid for p in all_pages(backend, Kind.PROCESS, by_request)] == [process.uuid]
    assert backend.count(kind=Kind.PROCESS, selection=EVERYTHING) == 2


def test_throughput_counts_results_per_status_and_bucket(backend: Backend) -> None:
    results(backend, 4)
    failed(backend)
    retried = failed(backend, "again")
    api.retry_result(retried, delay=3600)
    now = backend.now()
    rows = backend.throughput(since=now - datetime.timedelta(hours=1), bucket_seconds=60)
    by_status = {row.status: row.count for row in rows}
    assert by_status == {Status.SUCCESSFUL: 4, Status.ERRORED: 2}
    assert sum(row.retried for row in rows) == 1
    assert all(int(row.bucket_start.timestamp()) % 60 == 0 for row in rows)
    assert backend.throughput(since=now + datetime.timedelta(seconds=5), bucket_seconds=60) == []


def test_retry_chain_links_attempts_both_ways(backend: Backend) -> None:
    first = failed(backend)
    second_request = api.retry_result(first, delay=0)
    assert second_request is not None
    assert backend.retried_by(request_uuid=second_request.uuid) == api.get(first.uuid)
    (second,) = finish(backend, claim(backend, "default"), Status.SUCCESSFUL)
    chain = api.retry_chain(second.uuid)
    assert [a.uuid for a in chain] == [first.uuid, second.uuid]
    assert [a.uuid for a in api.retry_chain(first.uuid)] == [first.uuid, second.uuid]
    assert backend.retried_by(request_uuid=first.request_uuid) is None


def test_retry_chain_ends_at_a_pending_attempt(backend: Backend) -> None:
    first = failed(backend)
    pending = api.retry_result(first, delay=3600)
    assert pending is not None
    chain = api.retry_chain(first.uuid)
    assert [type(a) for a in chain] == [JobResult, JobRequest]
    assert chain[-1].uuid == pending.uuid


def test_cancel_requests_turns_selected_pending_requests_into_cancelled_results(
    backend: Backend,
) -> None:
    enqueue(backend, 5, queue="x")
    kept = enqueue(backend, 2, queue="y")
    cancelled = backend.cancel_pending_selected(selection=Selection(queue="x"), limit=3)
    assert len(cancelled) == 3
    assert {r.status for r in cancelled} == {Status.CANCELLED}
    assert backend.count(kind=Kind.REQUEST, selection=Selection(queue="x")) == 2
    assert backend.count(kind=Kind.REQUEST, selection=Selection(queue="y")) == len(kept)


def test_request_cancel_processes_flags_only_selected_processes(backend: Backend) -> None:
    enqueue(backend, 2, queue="x")
    enqueue(backend, 1, queue="y")
    claim(backend, "x")
    (other,) = claim(backend, "y")
    assert backend.flag_to_stop_selected(selection=Selection(queue="x")) == 2
    flagged = {p.uuid: p.cancel_requested for p in all_pages(backend, Kind.PROCESS, EVERYTHING)}
    assert flagged[other.uuid] is False
    assert sum(flagged.values()) == 2


def test_delete_removes_selected_requests_and_results_but_never_processes(
    backend: Backend,
) -> None:
    enqueue(backend, 3, queue="x")
    results(backend, 4, queue="y")
    assert backend.delete(kind=Kind.REQUEST, selection=Selection(queue="x"), limit=2) == 2
    assert backend.delete(kind=Kind.RESULT, selection=EVERYTHING, limit=100) == 4
    assert backend.count(kind=Kind.REQUEST, selection=EVERYTHING) == 1
    with pytest.raises(ValueError, match="cancel"):
        backend.delete(kind=Kind.PROCESS, selection=EVERYTHING, limit=1)


def test_api_bulk_operations_act_on_the_whole_selection(backend: Backend) -> None:
    for _ in range(3):
        failed(backend)
    results(backend, 2)
    outcome = api.retry_selected(Selection(status=Status.ERRORED))
    assert (outcome.done, outcome.skipped) == (3, 0)
    # Retried results are not retried twice.
    assert api.retry_selected(Selection(status=Status.ERRORED)).done == 0
    assert api.count(Kind.REQUEST, EVERYTHING) == 3
    assert api.cancel_selected(Kind.REQUEST, EVERYTHING).done == 3
    assert api.count("result", Selection(status=Status.CANCELLED)) == 3
    assert api.delete_selected(Kind.RESULT, Selection(status=Status.SUCCESSFUL)).done == 2


def test_api_delete_finds_a_request_or_a_result_but_not_a_process(backend: Backend) -> None:
    (request,) = enqueue(backend, 1, queue="x")
    result = failed(backend)
    enqueue(backend, 1, queue="y")
    (process,) = claim(backend, "y")
    assert api.delete(request.uuid) is True
    assert api.delete(result.uuid) is True
    assert api.delete(process.uuid) is False
    assert api.get(request.uuid) is None
    assert api.get(result.uuid) is None
    assert isinstance(api.get(process.uuid), JobProcess)


def test_the_overview_recounts_settled_buckets_only_after_their_ttl(backend: Backend) -> None:
    now = backend.now()
    ten_minutes_ago = now - datetime.timedelta(minutes=10)
    enqueue(backend, 3, queue="old")
    finish(backend, claim(backend, "old"), ended_at=ten_minutes_ago)
    cache = ThroughputCache(ttl_seconds=3600, settle_seconds=120)

    def successful(cache: ThroughputCache) -> int:
        rows = cache.rows(
            backend, since=now - datetime.timedelta(hours=1), now=backend.now(), bucket_seconds=60
        )
        return outcome_counts(rows)["SUCCESSFUL"]

    assert successful(cache) == 3
    results(backend, 2)  # recent buckets are counted at every request
    assert successful(cache) == 5
    backend.delete(kind=Kind.RESULT, selection=Selection(queue="old"), limit=10)
    assert successful(cache) == 5  # the settled bucket is not recounted within its ttl

    expiring = ThroughputCache(ttl_seconds=0, settle_seconds=120)
    assert successful(expiring) == 2  # counted whole at its first view
    enqueue(backend, 4, queue="late")  # written late into a settled bucket
    finish(backend, claim(backend, "late"), ended_at=ten_minutes_ago)
    wait_for(lambda: successful(expiring) == 6)  # recounted in the background


def test_a_long_first_count_does_not_hold_the_page(backend: Backend) -> None:
    results(backend, 2)
    cache = ThroughputCache(wait_seconds=0)  # as if counting took longer than a page may wait
    now = backend.now()

    def rows() -> list | None:
        return cache.rows(
            backend, since=now - datetime.timedelta(hours=1), now=now, bucket_seconds=60
        )

    first = rows()
    assert first is None or sum(row.count for row in first) == 2
    wait_for(lambda: (found := rows()) is not None and sum(row.count for row in found) == 2)
