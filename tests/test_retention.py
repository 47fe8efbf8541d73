"""Retention per status and per job class (the results_retention setting as a table,
a class's results_retention attribute): parsing, validation and prune passes on
PostgreSQL and SQLite."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import pytest

import errands
from errands import settings
from errands.backends import Backend
from errands.errors import ConfigurationError
from errands.models import NewRequest, Outcome, PageSpec, Selection, Status
from errands.setting_values import RESULT_STATUSES, Retention
from errands.worker.prune import Prune, class_overrides, class_retention

DAY = 24 * 3600.0


class KeepsLong(errands.Job):
    results_retention = {"SUCCESSFUL": 30 * DAY}

    def run(self) -> None:
        pass


class KeepsShort(errands.Job):
    results_retention = 3600

    def run(self) -> None:
        pass


LONG = f"{__name__}.KeepsLong"
SHORT = f"{__name__}.KeepsShort"


def test_statuses_agree_with_the_model() -> None:
    assert tuple(s.value for s in Status) == RESULT_STATUSES


def test_a_number_stays_a_number_and_a_table_is_by_status(tmp_path: Path) -> None:
    assert settings.load(environ={}, cwd=tmp_path).results_retention == 7 * DAY
    environ = {"ERRANDS_RESULTS_RETENTION": "SUCCESSFUL=86400,ERRORED=2592000,default=604800"}
    loaded = settings.load(environ=environ, cwd=tmp_path).results_retention
    assert loaded == Retention(
        default=604800.0, by_status=(("SUCCESSFUL", 86400.0), ("ERRORED", 2592000.0))
    )
    assert isinstance(loaded, Retention)
    assert loaded.seconds("LOST") == 604800.0
    # to_environ reproduces it in a child process
    again = settings.load(environ=settings.to_environ(settings.Settings(results_retention=loaded)))
    assert again.results_retention == loaded
    (tmp_path / "pyproject.toml").write_text(
        "[tool.errands]\nresults_retention = { SUCCESSFUL = 60, default = 120 }\n"
    )
    from_toml = settings.load(environ={}, cwd=tmp_path).results_retention
    assert from_toml == Retention(default=120.0, by_status=(("SUCCESSFUL", 60.0),))
    shown = settings.as_dict(settings.load(environ={}, cwd=tmp_path))
    assert shown["results_retention"] == {"SUCCESSFUL": 60.0, "default": 120.0}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"SUCESSFUL": 60}, "unknown status 'SUCESSFUL': expected SUCCESSFUL, ERRORED"),
        ({"ERRORED": -1}, "ERRORED: must be more than zero"),
        ({"ERRORED": "soon"}, "ERRORED: expected a number"),
        ("ERRORED=0", "ERRORED: must be more than zero"),
        ("often", "expected seconds, or a table of statuses"),
        ([60], "expected seconds, or a table of statuses"),
        (0, "must be more than zero"),
    ],
)
def test_bad_values_name_the_setting_and_the_status(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        errands.configure(results_retention=value)
    assert "setting 'results_retention'" in str(caught.value)
    assert message in str(caught.value)


def test_a_class_retention_is_checked_and_fills_in_from_the_setting() -> None:
    setting = Retention(default=7 * DAY, by_status=(("ERRORED", 30 * DAY),))
    own = class_retention(KeepsLong, setting)
    assert own is not None
    assert own.seconds("SUCCESSFUL") == 30 * DAY
    assert own.seconds("ERRORED") == 30 * DAY  # left out: the setting's
    assert own.seconds("LOST") == 7 * DAY
    assert class_retention(KeepsShort, setting) == Retention(default=3600.0)
    assert class_retention(errands.Job, setting) is None

    class Bad(errands.Job):
        results_retention = {"FINISHED": 1}

    with pytest.raises(ConfigurationError, match=r"results_retention .* of job class .*Bad"):
        class_retention(Bad, setting)
    del Bad


def test_class_overrides_are_the_loaded_classes_that_set_one() -> None:
    overrides = class_overrides(7 * DAY)
    assert overrides[LONG].seconds("SUCCESSFUL") == 30 * DAY
    assert overrides[SHORT] == Retention(default=3600.0)
    assert "sample_jobs.Noop" not in overrides


def finish(backend: Backend, job_class: str, status: Status, age: datetime.timedelta) -> None:
    with backend.enqueue_transaction() as tx:
        tx.insert_requests([NewRequest(job_class=job_class, parameters={})])
    (process,) = backend.claim(worker_id=uuid.uuid4(), queues=[], limit=1)
    ended = backend.now() - age
    backend.complete_many(
        outcomes=[Outcome(process.uuid, status, started_at=ended, ended_at=ended)]
    )


def left(backend: Backend) -> list[tuple[str, str]]:
    results = backend.page_results(selection=Selection(), page=PageSpec(limit=100))
    return sorted((r.job_class, r.status.value) for r in results)


def test_prune_by_status_and_by_class(backend: Backend) -> None:
    hours = datetime.timedelta(hours=1)
    for status in (Status.SUCCESSFUL, Status.ERRORED, Status.CANCELLED):
        finish(backend, "other.Job", status, 3 * hours)
        finish(backend, LONG, status, 3 * hours)
        finish(backend, SHORT, status, 2 * hours)
    finish(backend, SHORT, Status.SUCCESSFUL, datetime.timedelta(minutes=1))
    setting = Retention(default=2.5 * 3600, by_status=(("ERRORED", DAY),))
    prune = Prune(
        backend,
        retention_seconds=setting,
        classes={LONG: class_retention(KeepsLong, setting), SHORT: Retention(default=3600.0)},
    )
    # other: SUCCESSFUL and CANCELLED; LONG: CANCELLED; SHORT: all three of 2 hours
    assert prune.run_once() == 2 + 1 + 3
    assert left(backend) == sorted(
        [
            (LONG, "ERRORED"),
            (LONG, "SUCCESSFUL"),  # 30 days of its own
            (SHORT, "SUCCESSFUL"),  # a minute old
            ("other.Job", "ERRORED"),  # a day by the setting
        ]
    )
    assert prune.run_once() == 0


def test_a_status_table_prunes_in_bounded_batches(backend: Backend) -> None:
    for _ in range(3):
        finish(backend, "other.Job", Status.SUCCESSFUL, datetime.timedelta(hours=2))
    finish(backend, "other.Job", Status.LOST, datetime.timedelta(hours=2))
    setting = Retention(default=DAY, by_status=(("SUCCESSFUL", 3600.0),))
    prune = Prune(backend, retention_seconds=setting, batch_size=2)
    assert [prune.run_once() for _ in range(3)] == [2, 1, 0]
    assert left(backend) == [("other.Job", "LOST")]


def test_a_plain_number_is_one_delete(backend: Backend) -> None:
    finish(backend, "other.Job", Status.ERRORED, datetime.timedelta(hours=2))
    assert Prune(backend, retention_seconds=Retention(default=3600.0)).run_once() == 1
