"""Model instances as job parameters, stored by reference and fetched again in the worker.

An instance is stored as its model's label and primary key, never as its fields:
the worker loads the row as it is when the job runs. An unsaved instance cannot
be stored; a row deleted before the job runs makes the job fail to load
(ERRORED with ``DoesNotExist``, and not retried, since it would fail again).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import models

from errands import serialization

#: The tag stored in the database; keep it stable (stored jobs refer to it).
TAG = "django.model"


def encode_instance(instance: models.Model) -> list[Any]:
    if instance.pk is None:
        raise ValueError(f"{instance._meta.label} instance has no primary key yet: save it first")
    return [instance._meta.label, instance.pk]


def decode_instance(reference: list[Any]) -> models.Model:
    label, pk = reference
    model = apps.get_model(label)
    instance: models.Model = model._default_manager.get(pk=pk)
    return instance


def register() -> None:
    """Teach errands to store model instances by reference (done by the app's ready())."""
    serialization.register_type(
        models.Model, encode=encode_instance, decode=decode_instance, name=TAG
    )
