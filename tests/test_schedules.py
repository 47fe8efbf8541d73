"""Schedules: cron rules, time zones and DST, validation, planning, exactly-once enqueue."""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sample_jobs  # noqa: F401  (registers the jobs named in entries)

import errands
from conftest import WorkerRunner, wait_for, worker_config
from errands import Status, scheduler
from errands.backends import Backend, open_backend
from errands.errors import ConfigurationError
from errands.scheduler import CronSchedule, Entry, Schedule, parse_entries, plan
from errands.worker import Worker

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).astimezone(UTC)


def occurrences(schedule: Schedule, start: str, count: int) -> list[str]:
    moment = at(start)
    found = []
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(moment.isoformat())
    return found


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        ("0 9 * * *", "2026-05-01T09:00:00+00:00", "2026-05-02T09:00:00+00:00"),
        ("*/15 * * * *", "2026-05-01T09:07:00+00:00", "2026-05-01T09:15:00+00:00"),
        ("0 0 * * 0", "2026-05-01T00:00:00+00:00", "2026-05-03T00:00:00+00:00"),  # Sunday
        ("0 0 * * 7", "2026-05-01T00:00:00+00:00", "2026-05-03T00:00:00+00:00"),  # Sunday too
        ("30 8 * * mon-fri", "2026-05-01T09:00:00+00:00", "2026-05-04T08:30:00+00:00"),
        ("0 12 1 jan,jul *", "2026-05-01T00:00:00+00:00", "2026-07-01T12:00:00+00:00"),
        ("@hourly", "2026-05-01T09:59:59+00:00", "2026-05-01T10:00:00+00:00"),
        ("@daily", "2026-05-01T09:00:00+00:00", "2026-05-02T00:00:00+00:00"),
        ("@weekly", "2026-05-01T09:00:00+00:00", "2026-05-03T00:00:00+00:00"),
        ("@monthly", "2026-05-01T09:00:00+00:00", "2026-06-01T00:00:00+00:00"),
        ("@yearly", "2026-05-01T09:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    ],
)
def test_cron_expressions_and_aliases(expression: str, start: str, expected: str) -> None:
    assert occurrences(CronSchedule(expression), start, 1) == [expected]


def test_timezone_decides_what_nine_am_means() -> None:
    berlin = CronSchedule("0 9 * * *", "Europe/Berlin")
    assert occurrences(berlin, "2026-05-01T12:00:00+00:00", 1) == ["2026-05-02T07:00:00+00:00"]


def test_a_daily_job_runs_once_per_day_across_both_dst_changes() -> None:
    daily = CronSchedule("30 2 * * *", "Europe/Berlin")
    # Spring: 02:30 does not exist on 29 March; the run happens right after the gap.
    spring = occurrences(daily, "2026-03-28T12:00:00+00:00", 3)
    assert spring == [
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
        "2026-03-31T00:30:00+00:00",
    ]
    # Autumn: 02:30 happens twice on 25 October; the run happens once.
    autumn = occurrences(daily, "2026-10-24T12:00:00+00:00", 2)
    assert autumn == ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]


def test_an_every_hour_rule_keeps_running_through_the_repeated_hour() -> None:
    hourly = CronSchedule("0 * * * *", "Europe/Berlin")
    found = occurrences(hourly, "2026-10-24T23:30:00+00:00", 3)
    assert found == [
        "2026-10-25T00:00:00+00:00",
        "2026-10-25T01:00:00+00:00",  # 02:00 CET, the second pass through 02:00
        "2026-10-25T02:00:00+00:00",
    ]


def test_custom_schedule_objects_are_accepted() -> None:
    class EveryTenSeconds(Schedule):
        def next_after(self, moment: datetime.datetime) -> datetime.datetime:
            return moment.replace(microsecond=0) + datetime.timedelta(
                seconds=10 - moment.second % 10
            )

        def describe(self) -> str:
            return "every ten seconds"

    (entry,) = parse_entries([["sample_jobs.Noop", EveryTenSeconds()]])
    assert entry.schedule.next_after(at("2026-05-01T00:00:03+00:00")) == at(
        "2026-05-01T00:00:10+00:00"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["sample_jobs.Noop", "61 * * * *"], "not a 5-field cron expression"),
        (["sample_jobs.Noop", "* * *"], "not a 5-field cron expression"),
        (["nowhere.Missing", "@daily"], "not registered"),
        (["sample_jobs.Echo", "@daily", {"kwargs": {"wrong": 1}}], "bad parameters"),
        (["sample_jobs.Noop", "@daily", {"when": "now"}], "unknown options"),
        (["cmd:", "@daily"], "needs a shell command"),
        ("sample_jobs.Noop @daily", "expected [job, schedule]"),
    ],
)
def test_bad_entries_fail_naming_the_entry(raw: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_entries([["sample_jobs.Noop", "@hourly"], raw])
    assert "schedule entry 1" in str(info.value)
    assert message in str(info.value)


def test_entry_key_changes_with_job_parameters_and_rule() -> None:
    base = parse_entries([["sample_jobs.Echo", "@daily", {"args": [1]}]])[0].key
    assert parse_entries([["sample_jobs.Echo", "@daily", {"args": [1]}]])[0].key == base
    assert parse_entries([["sample_jobs.Echo", "@daily", {"args": [2]}]])[0].key != base
    assert parse_entries([["sample_jobs.Echo", "@hourly", {"args": [1]}]])[0].key != base


def test_repeated_entries_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="repeats entry 0"):
        parse_entries([["sample_jobs.Noop", "@daily"], ["sample_jobs.Noop", "0 0 * * *"]])


def planned_times(entry: Entry, **kwargs: Any) -> list[str]:
    defaults: dict[str, Any] = {
        "now": at("2026-05-01T09:00:30+00:00"),
        "horizon": datetime.timedelta(minutes=2),
        "last_run_at": {},
        "starting": False,
    }
    defaults.update(kwargs)
    return [p.run_at.isoformat() for p in plan([entry], **defaults)]


def test_plan_covers_the_horizon_and_at_least_the_next_occurrence() -> None:
    (minutely,) = parse_entries([["sample_jobs.Noop", "* * * * *"]])
    assert planned_times(minutely) == ["2026-05-01T09:01:00+00:00", "2026-05-01T09:02:00+00:00"]
    (daily,) = parse_entries([["sample_jobs.Noop", "@daily"]])
    assert planned_times(daily) == ["2026-05-02T00:00:00+00:00"]


def test_missed_runs_are_skipped_by_default() -> None:
    (daily,) = parse_entries([["sample_jobs.Noop", "0 9 * * *"]])
    last = {daily.key: at("2026-04-28T09:00:00+00:00")}
    assert planned_times(daily, last_run_at=last, starting=True) == ["2026-05-02T09:00:00+00:00"]


def test_catch_up_runs_the_most_recent_missed_occurrence_once_on_start() -> None:
    (daily,) = parse_entries([["sample_jobs.Noop", "0 9 * * *", {"catch_up": True}]])
    last = {daily.key: at("2026-04-28T09:00:00+00:00")}
    assert planned_times(daily, last_run_at=last, starting=True) == [
        "2026-05-01T09:00:00+00:00",
        "2026-05-02T09:00:00+00:00",
    ]
    assert planned_times(daily, last_run_at=last, starting=False) == ["2026-05-02T09:00:00+00:00"]
    # Nothing was missed when the last occurrence is the most recent one, or unknown.
    current = {daily.key: at("2026-05-01T09:00:00+00:00")}
    assert planned_times(daily, last_run_at=current, starting=True) == ["2026-05-02T09:00:00+00:00"]
    assert planned_times(daily, starting=True) == ["2026-05-02T09:00:00+00:00"]


# -- against the database -------------------------------------------------------------------

HORIZON = datetime.timedelta(minutes=5)


def test_concurrent_syncs_enqueue_each_occurrence_once(db_url: str) -> None:
    entries = parse_entries(
        [["sample_jobs.Noop", "* * * * *"], ["sample_jobs.Echo", "@hourly", {"args": [1]}]]
    )
    now = at("2026-05-01T09:00:30+00:00")
    created: list[int] = []

    def one_worker() -> None:
        backend = open_backend(db_url)
        try:
            created.append(
                scheduler.sync(backend, entries, horizon=HORIZON, now=now, starting=True)
            )
        finally:
            backend.close()

    threads = [threading.Thread(target=one_worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests = errands.requests(limit=1000)
    starts = sorted((r.job_class, r.start_at.isoformat()) for r in requests)
    assert len(starts) == len(set(starts)) == sum(created) == 6  # 5 minutes + 1 hour
    assert starts[0] == ("sample_jobs.Echo", "2026-05-01T10:00:00+00:00")


def test_sync_again_adds_only_new_occurrences(backend: Backend) -> None:
    entries = parse_entries([["sample_jobs.Noop", "* * * * *"]])
    first = scheduler.sync(backend, entries, horizon=HORIZON, now=at("2026-05-01T09:00:30+00:00"))
    later = scheduler.sync(backend, entries, horizon=HORIZON, now=at("2026-05-01T09:02:30+00:00"))
    assert (first, later) == (5, 2)
    assert len(errands.requests()) == 7


def test_removed_or_changed_entries_are_withdrawn_at_start(backend: Backend) -> None:
    now = at("2026-05-01T09:00:30+00:00")
    old = parse_entries(
        [["sample_jobs.Noop", "@daily"], ["sample_jobs.Echo", "@daily", {"args": [1]}]]
    )
    scheduler.sync(backend, old, horizon=HORIZON, now=now, starting=True)
    assert len(errands.requests()) == 2

    changed = parse_entries([["sample_jobs.Noop", "@hourly"]])  # Echo removed, Noop changed
    scheduler.sync(backend, changed, horizon=HORIZON, now=now, starting=True)
    (request,) = errands.requests()
    assert (request.job_class, request.start_at) == (
        "sample_jobs.Noop",
        at("2026-05-01T10:00:00+00:00"),
    )
    assert set(backend.last_occurrences()) == {changed[0].key}


def test_catch_up_enqueues_the_missed_occurrence_once(backend: Backend) -> None:
    entries = parse_entries([["sample_jobs.Noop", "0 9 * * *", {"catch_up": True}]])
    first = at("2026-04-28T08:00:00+00:00")
    scheduler.sync(backend, entries, horizon=HORIZON, now=first, starting=True)
    for request in errands.requests():
        errands.cancel(request.uuid)  # no worker ran on 28 April or since
    now = at("2026-05-01T10:00:00+00:00")
    created = scheduler.sync(backend, entries, horizon=HORIZON, now=now, starting=True)
    again = scheduler.sync(backend, entries, horizon=HORIZON, now=now, starting=True)
    starts = sorted(r.start_at for r in errands.requests())
    assert (created, again) == (2, 0)
    assert starts == [now, at("2026-05-02T09:00:00+00:00")]  # the missed one runs now


@pytest.mark.slow
def test_shell_commands_record_exit_code_and_output(
    run_worker: WorkerRunner, backend: Backend, tmp_path: Path
) -> None:
    raw = (
        ["cmd:echo hello from $0", "@daily"],
        ["cmd:echo partial; echo oops >&2; exit 3", "@daily"],
    )
    ok, failing = parse_entries(raw)
    for entry in (ok, failing):
        entry.build_job().run_in_worker()  # as the dashboard's "run now" does
    # The worker runs the commands its own schedule setting holds.
    run_worker(lambda: len(errands.results()) == 2, schedule=raw)
    by_key = {r.parameters["args"][0]: r for r in errands.results()}
    good = by_key[scheduler.command_key("echo hello from $0")]
    assert good.status == Status.SUCCESSFUL
    assert good.return_value == {"exit_code": 0, "output": good.return_value["output"]}
    assert "hello from" in good.return_value["output"]
    bad = by_key[scheduler.command_key("echo partial; echo oops >&2; exit 3")]
    assert bad.status == Status.ERRORED
    assert bad.error_type == "errands.scheduler.CommandFailed"
    assert "exit code 3" in bad.error and "partial" in bad.error and "oops" in bad.error


class EverySecond(Schedule):
    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        return moment.replace(microsecond=0) + datetime.timedelta(seconds=1)

    def describe(self) -> str:
        return "every second"


@pytest.mark.slow
def test_two_workers_run_each_occurrence_once(db_url: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    entry = ["sample_jobs.Record", EverySecond(), {"args": [str(marks), "tick"]}]
    workers = [
        Worker(config=worker_config(db_url, schedule=(entry,), heartbeat_interval=0.5))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 4
    try:
        while time.monotonic() < deadline:
            for worker in workers:
                worker.turn()
    finally:
        for worker in workers:
            worker.stop()
            worker.stop()  # abort: do not wait for the requests scheduled ahead
        while not all(worker.finished() for worker in workers):
            for worker in workers:
                worker.turn()
        for worker in workers:
            worker.shut_down()
    successful = [r for r in errands.results(limit=1000) if r.status == Status.SUCCESSFUL]
    assert len(successful) >= 3
    assert len(marks.read_text().splitlines()) == len(successful)
    # Every occurrence became exactly one job, whichever worker got there first.
    jobs = errands.requests(limit=1000) + errands.processes(limit=1000)
    assert count_occurrences(db_url) == len(jobs) + len(errands.results(limit=1000))


def count_occurrences(url: str) -> int:
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return int(conn.execute("SELECT count(*) FROM errands_occurrence").fetchone()[0])
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM errands_occurrence").fetchone()
        assert row is not None
        return int(row[0])


def test_bad_schedule_stops_the_worker_before_it_starts(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match="schedule entry 0"):
        Worker(config=worker_config(db_url, schedule=(("sample_jobs.Noop", "every day"),)))


def test_upcoming_times_lists_every_occurrence_in_the_horizon() -> None:
    entries = parse_entries(
        [["sample_jobs.Noop", "*/2 * * * *"], ["sample_jobs.Echo", "@hourly", {"args": [1]}]]
    )
    times = scheduler.upcoming_times(entries, now=at("2026-05-01T09:57:30+00:00"), horizon=HORIZON)
    assert [t.isoformat() for t in times] == [
        "2026-05-01T09:58:00+00:00",
        "2026-05-01T10:00:00+00:00",
        "2026-05-01T10:00:00+00:00",
        "2026-05-01T10:02:00+00:00",
    ]


@pytest.mark.slow
def test_worker_wakes_for_an_occurrence_instead_of_waiting_for_the_poll(db_url: str) -> None:
    # With a 30 s poll, only the schedule wake-up can start the job within seconds.
    entry = ["sample_jobs.Noop", EverySecond()]
    worker = Worker(config=worker_config(db_url, schedule=(entry,), poll_interval=30))
    worker.start()
    try:
        wait_for(lambda: bool(errands.results()), timeout=10, step=worker.turn)
    finally:
        worker.stop()
        worker.stop()
        while not worker.finished():
            worker.turn()
        worker.shut_down()
    (first, *_) = sorted(errands.results(limit=100), key=lambda r: r.ended_at)
    assert first.started_at is not None
    # Its due second is the whole second before its start; the 30 s poll could not have
    # started it within seconds. (Half a second proved too tight for a child starting
    # up under full-suite load: 0.57 s was seen once.)
    assert first.started_at.microsecond < 900_000
