"""Enqueue validation: a value that cannot be stored as given is refused before the
database is touched, with an error naming the job class and the option, identically
on PostgreSQL and SQLite and through every enqueue path (one job, a small batch, a
bulk batch that PostgreSQL sends by COPY, the CLI, a schedule).

Rows are counted with raw SQL: a stored bad row may be one errands cannot read back.
"""

from __future__ import annotations

import datetime
import logging
import math
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import errands
from errands import Job, ParameterError, register_job, scheduler, settings
from errands.backends import Backend
from errands.cli import cli
from errands.errors import OptionError
from errands.jobs import EnqueueOptions
from errands.serialization import MAX_DEPTH, MAX_INT_DIGITS
from errands.validation import (
    EARLIEST_START,
    LATEST_START,
    MAX_CONCURRENCY_KEY_LENGTH,
    MAX_QUEUE_LENGTH,
)

CLASS = "test_enqueue_validation.SendWelcome"


@register_job
class SendWelcome(Job):
    def __init__(self, user: Any = 1) -> None:
        self.user = user

    def run(self) -> None:
        pass


@register_job
class Configured(Job):
    """Takes its options from ``DEFAULTS``: the defaults path, rather than a call's."""

    def default_queue(self) -> str:
        return DEFAULTS.get("queue", "default")

    def default_concurrency_key(self) -> str:
        return DEFAULTS.get("concurrency_key", "")

    def default_timeout(self) -> float | None:
        return DEFAULTS.get("timeout")

    def run(self) -> None:
        pass


DEFAULTS: dict[str, Any] = {}

Enqueue = Callable[[list[Job], EnqueueOptions], object]
WAYS: dict[str, Enqueue] = {
    "run_in_worker": lambda jobs, o: jobs[0].run_in_worker(
        queue=o.queue,
        delay=o.delay,
        priority=o.priority,
        retries=o.retries,
        concurrency_key=o.concurrency_key,
        timeout=o.timeout,
    ),
    "enqueue_many": lambda jobs, o: errands.enqueue_many(jobs[:3], options=o),
    # 150 jobs: PostgreSQL sends a batch of 100 or more by COPY (postgres_copy.py).
    "bulk": lambda jobs, o: errands.enqueue_many(jobs, options=o),
}


@pytest.fixture(params=list(WAYS))
def enqueue(request: pytest.FixtureRequest, db_url: str) -> Iterator[Enqueue]:
    yield WAYS[request.param]


@pytest.fixture(autouse=True)
def _no_defaults() -> Iterator[None]:
    yield
    DEFAULTS.clear()


def stored_rows(db_url: str) -> int:
    """Rows in errands_request, counted without decoding them."""
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute("SELECT count(*) FROM errands_request").fetchone()[0])
    with psycopg.connect(db_url) as pg:
        row = pg.execute("SELECT count(*) FROM errands_request").fetchone()
        assert row is not None
        return int(row[0])


def welcomes(user: Any = 1) -> list[Job]:
    return [SendWelcome(user) for _ in range(150)]


def refused(
    db_url: str, enqueue: Enqueue, jobs: list[Job], options: EnqueueOptions, *words: str
) -> str:
    """Enqueue, expect a ParameterError whose message holds ``words``, and no row."""
    with pytest.raises(ParameterError) as info:
        enqueue(jobs, options)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert stored_rows(db_url) == 0
    return message


# -- delay ---------------------------------------------------------------------------


def test_a_delay_past_year_9999_is_refused(db_url: str, enqueue: Enqueue) -> None:
    message = refused(db_url, enqueue, welcomes(), EnqueueOptions(delay=1e12), CLASS, "delay")
    assert "9999" in message


def test_a_delay_before_year_1_is_refused(db_url: str, enqueue: Enqueue) -> None:
    refused(db_url, enqueue, welcomes(), EnqueueOptions(delay=-1e11), CLASS, "delay")


def test_a_timedelta_delay_past_year_9999_is_refused(db_url: str, enqueue: Enqueue) -> None:
    delay = datetime.timedelta(days=999_999_999)
    refused(db_url, enqueue, welcomes(), EnqueueOptions(delay=delay), CLASS, "delay")


def test_an_integer_delay_too_large_for_a_float_is_refused(db_url: str, enqueue: Enqueue) -> None:
    refused(db_url, enqueue, welcomes(), EnqueueOptions(delay=10**400), CLASS, "delay")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_delay_that_is_not_finite_is_refused(db_url: str, enqueue: Enqueue, value: float) -> None:
    message = refused(db_url, enqueue, welcomes(), EnqueueOptions(delay=value), CLASS, "delay")
    assert "finite" in message and repr(value) in message


@pytest.mark.parametrize(
    "start",
    [
        datetime.datetime(9999, 12, 31, 23, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
        datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC),
        datetime.datetime(1, 1, 1, 1, tzinfo=datetime.UTC),
    ],
    ids=["year-10000-in-utc", "last-day", "first-day"],
)
def test_a_start_time_at_the_ends_of_the_calendar_is_refused(
    db_url: str, enqueue: Enqueue, start: datetime.datetime
) -> None:
    refused(db_url, enqueue, welcomes(), EnqueueOptions(delay=start), CLASS, "delay")


def test_a_delay_of_the_wrong_type_is_refused(db_url: str, enqueue: Enqueue) -> None:
    options = EnqueueOptions(delay="60")  # type: ignore[arg-type]
    refused(db_url, enqueue, welcomes(), options, CLASS, "delay")


def test_start_times_at_the_storable_limits_are_stored_exactly(backend: Backend) -> None:
    for start in (EARLIEST_START, LATEST_START):
        request = SendWelcome().run_in_worker(delay=start)
        assert request is not None and request.start_at == start
    assert sorted(r.start_at for r in errands.requests()) == [EARLIEST_START, LATEST_START]


def test_a_delay_of_thousands_of_years_is_stored(backend: Backend) -> None:
    years = 7_000 * 365 * 86_400.0
    request = SendWelcome().run_in_worker(delay=years)
    assert request is not None
    (stored,) = errands.requests()
    assert abs((stored.start_at - backend.now()).total_seconds() - years) < 60


# -- timeout -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, -1.0, 0, 0.0, 10**400, "5", True], ids=repr
)
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused(
    db_url: str, enqueue: Enqueue, value: Any
) -> None:
    refused(db_url, enqueue, welcomes(), EnqueueOptions(timeout=value), CLASS, "timeout")


def test_a_negative_default_timeout_is_refused(db_url: str, enqueue: Enqueue) -> None:
    DEFAULTS["timeout"] = -5
    jobs: list[Job] = [Configured() for _ in range(150)]
    refused(db_url, enqueue, jobs, EnqueueOptions(), "test_enqueue_validation.Configured: timeout")


def test_an_integer_timeout_is_stored_as_seconds(backend: Backend) -> None:
    request = SendWelcome().run_in_worker(timeout=30)
    assert request is not None
    assert [r.timeout for r in errands.requests()] == [30.0]


# -- queue and concurrency key ----------------------------------------------------------


@pytest.mark.parametrize("option", ["queue", "concurrency_key"])
def test_a_nul_character_in_a_text_option_is_refused(
    db_url: str, enqueue: Enqueue, option: str
) -> None:
    options = EnqueueOptions(**{option: "a\x00b"})
    message = refused(db_url, enqueue, welcomes(), options, f"{CLASS}: {option}")
    assert "NUL" in message


@pytest.mark.parametrize("option", ["queue", "concurrency_key"])
def test_a_lone_surrogate_in_a_text_option_is_refused(
    db_url: str, enqueue: Enqueue, option: str
) -> None:
    options = EnqueueOptions(**{option: "a\ud800b"})
    message = refused(db_url, enqueue, welcomes(), options, f"{CLASS}: {option}")
    assert "surrogate" in message


@pytest.mark.parametrize("option", ["queue", "concurrency_key"])
def test_a_nul_character_in_a_default_text_option_is_refused(
    db_url: str, enqueue: Enqueue, option: str
) -> None:
    DEFAULTS[option] = "mail\x00"
    jobs: list[Job] = [Configured() for _ in range(150)]
    refused(
        db_url, enqueue, jobs, EnqueueOptions(), f"test_enqueue_validation.Configured: {option}"
    )


@pytest.mark.parametrize(
    ("option", "limit"),
    [("queue", MAX_QUEUE_LENGTH), ("concurrency_key", MAX_CONCURRENCY_KEY_LENGTH)],
)
def test_a_text_option_over_its_maximum_length_is_refused(
    db_url: str, enqueue: Enqueue, option: str, limit: int
) -> None:
    options = EnqueueOptions(**{option: "k" * (limit + 1)})
    message = refused(db_url, enqueue, welcomes(), options, f"{CLASS}: {option}", str(limit))
    assert len(message) < 500  # the value is shown shortened


def test_a_one_megabyte_concurrency_key_is_refused(db_url: str, enqueue: Enqueue) -> None:
    options = EnqueueOptions(concurrency_key="k" * 2**20)
    refused(db_url, enqueue, welcomes(), options, f"{CLASS}: concurrency_key")


@pytest.mark.parametrize(
    ("option", "limit"),
    [("queue", MAX_QUEUE_LENGTH), ("concurrency_key", MAX_CONCURRENCY_KEY_LENGTH)],
)
def test_text_options_of_the_maximum_length_are_stored_exactly(
    backend: Backend, option: str, limit: int
) -> None:
    value = "\U0001f600" * limit  # four bytes of UTF-8 each: the worst case for the index
    request = SendWelcome().run_in_worker(**{option: value})
    assert request is not None
    (stored,) = errands.requests()
    assert getattr(stored, option) == value


def test_an_empty_default_queue_is_refused(db_url: str, enqueue: Enqueue) -> None:
    DEFAULTS["queue"] = ""
    jobs: list[Job] = [Configured() for _ in range(150)]
    refused(db_url, enqueue, jobs, EnqueueOptions(), "Configured: queue must not be empty")


@pytest.mark.parametrize("option", ["queue", "concurrency_key"])
def test_a_text_option_that_is_not_a_string_is_refused(
    db_url: str, enqueue: Enqueue, option: str
) -> None:
    options = EnqueueOptions(**{option: 42})
    refused(db_url, enqueue, welcomes(), options, f"{CLASS}: {option} must be a string")


# -- parameters ------------------------------------------------------------------------


def test_a_nul_character_in_a_parameter_string_is_refused(db_url: str, enqueue: Enqueue) -> None:
    jobs = welcomes({"name": ["ok", "a\x00b"]})
    message = refused(db_url, enqueue, jobs, EnqueueOptions(), CLASS, "user")
    assert "NUL" in message


def test_a_nul_character_in_a_dict_key_is_refused(db_url: str, enqueue: Enqueue) -> None:
    jobs = welcomes({"na\x00me": 1})
    message = refused(db_url, enqueue, jobs, EnqueueOptions(), CLASS, "user")
    assert "key" in message and "NUL" in message


def test_a_lone_surrogate_in_a_parameter_is_refused(db_url: str, enqueue: Enqueue) -> None:
    jobs = welcomes(("\udcff",))
    message = refused(db_url, enqueue, jobs, EnqueueOptions(), CLASS, "user")
    assert "surrogate" in message


def test_a_parameter_that_contains_itself_is_refused(db_url: str, enqueue: Enqueue) -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    message = refused(db_url, enqueue, welcomes(cycle), EnqueueOptions(), CLASS, "user")
    assert "contains itself" in message


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 5_000])
def test_a_parameter_nested_too_deep_is_refused(db_url: str, enqueue: Enqueue, depth: int) -> None:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    message = refused(db_url, enqueue, welcomes(value), EnqueueOptions(), CLASS, "user")
    assert str(MAX_DEPTH) in message


def test_a_parameter_nested_to_the_limit_is_stored(backend: Backend) -> None:
    value: Any = "bottom"
    for _ in range(MAX_DEPTH):
        value = (value,)
    request = SendWelcome(value).run_in_worker()
    assert request is not None
    (stored,) = errands.requests()
    job = errands.registry.build_job(stored.job_class, stored.parameters)
    assert isinstance(job, SendWelcome) and job.user == value


def test_an_integer_too_long_for_json_is_refused(db_url: str, enqueue: Enqueue) -> None:
    jobs = welcomes([10**MAX_INT_DIGITS])
    message = refused(db_url, enqueue, jobs, EnqueueOptions(), CLASS, "user")
    assert str(MAX_INT_DIGITS) in message


# -- the other paths: the CLI and schedules ----------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["--delay", "inf"], "delay"),
        (["--delay", "nan"], "delay"),
        (["--delay", "1e12"], "delay"),
        (["--queue", "a\x00b"], "queue"),
        (["--concurrency-key", "k" * 2**20], "concurrency_key"),
        (["--param", 'user="a\\u0000b"'], "user"),
    ],
    ids=["delay-inf", "delay-nan", "delay-1e12", "queue-nul", "key-1mb", "param-nul"],
)
def test_errands_run_refuses_without_a_row(db_url: str, arguments: list[str], option: str) -> None:
    logger = logging.getLogger("errands")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        result = CliRunner().invoke(
            cli, ["--database-url", db_url, "run", CLASS, *arguments], catch_exceptions=False
        )
    finally:  # the CLI sets process-wide settings and logging
        settings.reset()
        logger.handlers[:], logger.level, logger.propagate = saved
    assert result.exit_code != 0
    assert CLASS in result.output and option in result.output, result.output
    assert "Traceback" not in result.output
    assert stored_rows(db_url) == 0


def test_a_schedule_whose_job_cannot_be_stored_enqueues_nothing(
    db_url: str, backend: Backend
) -> None:
    entries = scheduler.parse_entries([[CLASS, "* * * * *", {"kwargs": {"user": "a\x00b"}}]])
    with pytest.raises(ParameterError, match=f"{CLASS}: parameter 'user'"):
        scheduler.sync(backend, entries, horizon=datetime.timedelta(minutes=5))
    assert stored_rows(db_url) == 0


@pytest.mark.postgres_only
def test_a_refusal_leaves_the_callers_transaction_usable(db_url: str) -> None:
    with psycopg.connect(db_url) as conn, conn.transaction():
        with pytest.raises(ParameterError, match=f"{CLASS}: delay"):
            SendWelcome().run_in_worker(delay=math.inf, connection=conn)
        # Nothing was sent: the caller's transaction is not aborted.
        assert conn.execute("SELECT 1").fetchone() == (1,)
        SendWelcome().run_in_worker(connection=conn)
    assert stored_rows(db_url) == 1


def test_option_errors_are_both_type_and_value_errors() -> None:
    assert issubclass(OptionError, ParameterError)
    assert issubclass(OptionError, TypeError) and issubclass(OptionError, ValueError)
