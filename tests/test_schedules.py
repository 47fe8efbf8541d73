"""Schedules: cron rules, time zones and DST, validation, planning, exactly-once enqueue."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import sample_jobs  # noqa: F401  (registers the jobs named in entries)

from errands.errors import ConfigurationError
from errands.scheduler import CronSchedule, Entry, Schedule, parse_entries, plan

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
