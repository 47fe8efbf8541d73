"""The models' fast builders (models.positional_builder) against their dataclasses."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

import pytest

from errands import models
from errands.worker.execution import Assignment, build_assignment

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
BUILT = [
    (models.NewRequest, models.build_new_request),
    (models.JobRequest, models.build_job_request),
    (models.JobProcess, models.build_job_process),
    (models.JobResult, models.build_job_result),
    (models.Outcome, models.build_outcome),
    (Assignment, build_assignment),
]


def sample_values(cls: type[Any]) -> dict[str, Any]:
    """A distinct value for every field, so that a field set in another's slot shows."""
    values: dict[str, Any] = {}
    for n, field in enumerate(dataclasses.fields(cls)):
        annotation = str(field.type)
        if "UUID" in annotation:
            values[field.name] = uuid.UUID(int=n + 1)
        elif "datetime" in annotation:
            values[field.name] = NOW + datetime.timedelta(seconds=n)
        elif "Status" in annotation:
            values[field.name] = models.Status.ERRORED
        elif annotation.startswith("int") or annotation.startswith("float"):
            values[field.name] = n
        elif annotation.startswith("bool"):
            values[field.name] = True
        else:
            values[field.name] = f"{field.name}-{n}"
    return values


@pytest.mark.parametrize(("cls", "build"), BUILT, ids=[cls.__name__ for cls, _ in BUILT])
def test_a_built_model_equals_the_dataclass_built_one(cls: type[Any], build: Any) -> None:
    values = sample_values(cls)
    expected = cls(**values)
    assert build(**values) == expected
    assert build(*values.values()) == expected  # positionally, in field order
    assert type(build(**values)) is cls


@pytest.mark.parametrize(("cls", "build"), BUILT, ids=[cls.__name__ for cls, _ in BUILT])
def test_a_built_model_is_still_frozen(cls: type[Any], build: Any) -> None:
    built = build(**sample_values(cls))
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, first, None)


def test_a_builder_takes_every_field_and_fills_in_no_default() -> None:
    values = sample_values(models.Outcome)
    del values["requeue"]
    with pytest.raises(TypeError, match="requeue"):
        models.build_outcome(**values)


def test_a_builder_refuses_fields_named_like_its_own_variables() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Odd:
        cls: int

    with pytest.raises(TypeError, match="cls"):
        models.positional_builder(Odd)


def test_a_uuid_from_its_bytes_equals_the_standard_one() -> None:
    for key in (uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), models.uuid7()):
        rebuilt = models.uuid_from_bytes(key.bytes)
        assert rebuilt == key and rebuilt.is_safe == key.is_safe
        assert (str(rebuilt), hash(rebuilt)) == (str(key), hash(key))
