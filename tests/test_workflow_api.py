"""Building workflows: what Workflow.add, chain and group refuse, before anything is
written, and how they name jobs."""

from __future__ import annotations

import pytest
from sample_jobs import Echo, Noop

import errands
from errands import testing
from errands.errors import OptionError
from errands.workflows import Workflow, chain, group


def test_a_dependency_from_another_workflow_is_refused() -> None:
    other = Workflow("other").add(Noop())
    wf = Workflow("mine")
    with pytest.raises(ValueError, match="unknown dependency 'Noop': it belongs to another"):
        wf.add(Echo(1), after=[other])


def test_a_dependency_named_before_it_exists_is_refused() -> None:
    wf = Workflow("w")
    with pytest.raises(ValueError, match=r"unknown dependency 'later'.*no cycles"):
        wf.add(Noop(), after=["later"])
    assert len(wf) == 0  # nothing half-added


def test_unknown_options_and_a_delay_after_dependencies_are_refused() -> None:
    wf = Workflow("w")
    first = wf.add(Noop(), name="first", delay=5)  # no dependencies: a delay is fine
    with pytest.raises(TypeError, match=r"unknown option.*priorty"):
        wf.add(Noop(), after=[first], priorty=3)
    with pytest.raises(OptionError, match=r"second: a job with dependencies.*delay"):
        wf.add(Noop(), after=[first], name="second", delay=5)


def test_names_default_to_the_class_and_must_be_unique() -> None:
    wf = Workflow("w")
    assert [wf.add(Noop()).name for _ in range(3)] == ["Noop", "Noop#2", "Noop#3"]
    wf.add(Echo(1), name="echo")
    with pytest.raises(ValueError, match="has a job named 'echo' already"):
        wf.add(Echo(2), name="echo")


def test_a_unique_job_and_an_empty_workflow_are_refused_before_writing() -> None:
    class Once(Noop):
        unique = errands.Unique()

    with testing.capture():
        wf = Workflow("w")
        wf.add(Noop())
        wf.add(Once())
        with pytest.raises(OptionError, match="cannot be unique"):
            wf.enqueue()
        with pytest.raises(ValueError, match="has no jobs"):
            Workflow("empty").enqueue()
        assert testing.enqueued_jobs() == []


def test_chain_and_group_build_the_same_graph_as_add() -> None:
    wf = chain(Noop(), group(Echo(1), Echo(2)), Noop(), name="shape")
    steps = wf._steps
    assert [step.after for step in steps] == [(), (0,), (0,), (1, 2)]
    assert group(Noop(), Noop()).then(Echo(3))._steps[2].after == (0, 1)
    with pytest.raises(ValueError, match="at least one job"):
        group()
