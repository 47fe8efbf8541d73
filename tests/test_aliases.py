"""Renamed job classes: ``@register_job(aliases=[...])`` (issue 21, item 6).

Rows stored under a former class path load the new class; an alias comes only from
code the operator imported and never makes a stored path import anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import alias_jobs
import pytest
from dashboard_rows import enqueue

import errands
from conftest import WorkerRunner
from errands import Job, registry, scheduler
from errands.backends import Backend
from errands.errors import ConfigurationError, JobNotRegistered


@pytest.fixture
def registry_restored() -> Iterator[None]:
    """Registrations a test makes are undone (the registry is process-wide)."""
    jobs, aliases = dict(registry._jobs), dict(registry._aliases)
    try:
        yield
    finally:
        registry._jobs.clear()
        registry._jobs.update(jobs)
        registry._aliases.clear()
        registry._aliases.update(aliases)


def test_an_old_path_loads_the_renamed_class() -> None:
    assert registry.load_job_class("alias_jobs_old.Greet") is alias_jobs.Greet
    assert registry.load_job_class("alias_jobs.OldGreet") is alias_jobs.Greet
    job = registry.build_job("alias_jobs.OldGreet", {"args": ["ann"], "kwargs": {}})
    assert isinstance(job, alias_jobs.Greet) and job.run() == "hello ann!"
    assert registry.registered_aliases()["alias_jobs_old.Greet"] == "alias_jobs.Greet"


def test_an_alias_imports_nothing() -> None:
    # alias_jobs_old raises when imported: resolving its path must not import it.
    registry.load_job_class("alias_jobs_old.Greet")
    assert "alias_jobs_old" not in sys.modules
    # A path in the old module that no alias names stays unknown, and unimported.
    with pytest.raises(JobNotRegistered):
        registry.load_job_class("alias_jobs_old.Other")
    assert "alias_jobs_old" not in sys.modules


def test_an_alias_counts_only_once_its_module_was_imported(registry_restored: None) -> None:
    # The class that claims the alias was never imported: the row's path is unknown
    # (its module is outside the import setting, so it is not imported either).
    with pytest.raises(JobNotRegistered):
        registry.load_job_class("never_imported_old.Job")
    errands.configure(import_modules=["alias_jobs"])
    try:
        # A path inside the import setting imports its module, which may register an
        # alias of that same path: a class renamed within its module.
        assert registry.load_job_class("alias_jobs.OldGreet") is alias_jobs.Greet
    finally:
        errands.configure(import_modules=None)


def test_a_schedule_entry_with_the_old_path_enqueues_the_new_class() -> None:
    (entry,) = scheduler.parse_entries([["alias_jobs_old.Greet", "@daily", {"args": ["bo"]}]])
    job = entry.build_job()
    assert isinstance(job, alias_jobs.Greet)
    assert registry.job_class_path(type(job)) == "alias_jobs.Greet"  # stored anew so


def _define(name: str) -> type[Job]:
    return type(name, (Job,), {"run": lambda self: None, "__module__": "alias_tests"})


def test_two_classes_claiming_one_alias_is_an_error_naming_both(registry_restored: None) -> None:
    first, second = _define("First"), _define("Second")
    errands.register_job(aliases=["alias_tests.Old"])(first)
    with pytest.raises(ConfigurationError) as caught:
        errands.register_job(aliases=["alias_tests.Old"])(second)
    message = str(caught.value)
    assert "alias_tests.Second" in message and "alias_tests.First" in message
    assert registry.load_job_class("alias_tests.Old") is first


def test_an_alias_equal_to_a_registered_path_is_an_error(registry_restored: None) -> None:
    current, other = _define("Current"), _define("Other")
    errands.register_job(current)
    with pytest.raises(ConfigurationError, match=r"alias_tests\.Other.*alias_tests\.Current"):
        errands.register_job(aliases=["alias_tests.Current"])(other)
    # And the other way: a class registered at a path another class holds as an alias.
    errands.register_job(aliases=["alias_tests.Later"])(other)
    with pytest.raises(ConfigurationError, match=r"alias_tests\.Later.*alias_tests\.Other"):
        errands.register_job(_define("Later"))


def test_bad_aliases_are_refused(registry_restored: None) -> None:
    cls = _define("Bad")
    for alias in ("NoModule", "os.system; rm", "alias_tests.Bad", ""):
        with pytest.raises(ConfigurationError, match="alias"):
            errands.register_job(aliases=[alias])(cls)


def test_registering_a_class_again_keeps_or_drops_its_aliases(registry_restored: None) -> None:
    # A module imported again (reload) registers a new class object at the same path.
    errands.register_job(aliases=["alias_tests.Was"])(_define("Again"))
    again = errands.register_job(aliases=["alias_tests.Was"])(_define("Again"))
    assert registry.load_job_class("alias_tests.Was") is again
    errands.register_job(_define("Again"))
    with pytest.raises(JobNotRegistered):
        registry.load_job_class("alias_tests.Was")


@pytest.mark.slow
def test_a_worker_runs_a_request_stored_under_the_old_path(
    backend: Backend, run_worker: WorkerRunner
) -> None:
    # The worker's children import alias_jobs (its import setting), never alias_jobs_old.
    enqueue(backend, job_class="alias_jobs_old.Greet", parameters={"args": ["cy"], "kwargs": {}})
    run_worker(lambda: len(errands.results()) >= 1, import_modules=("alias_jobs",))
    (result,) = errands.results()
    assert result.status == errands.Status.SUCCESSFUL, result.error
    assert result.job_class == "alias_jobs_old.Greet" and result.return_value == "hello cy!"
