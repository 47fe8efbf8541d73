"""Django's tasks framework: ``django.tasks`` (Django 6+), else the ``django-tasks`` backport.

Names are looked up at run time (typed ``Any``), since the two packages differ
slightly (``InvalidTask`` is ``InvalidTaskError`` in the backport).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def _module(builtin: str, backport: str) -> ModuleType:
    try:
        return importlib.import_module(builtin)
    except ImportError:
        try:
            return importlib.import_module(backport)
        except ImportError as exc:
            raise ImportError(
                "errands.contrib.django.ErrandsBackend needs Django's tasks framework: "
                "Django 6 or later, or `pip install django-tasks` (errands[django])"
            ) from exc


_base = _module("django.tasks.base", "django_tasks.base")
_backends = _module("django.tasks.backends.base", "django_tasks.backends.base")
_exceptions = _module("django.tasks.exceptions", "django_tasks.exceptions")
_signals = _module("django.tasks.signals", "django_tasks.signals")

BaseTaskBackend: Any = _backends.BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
task_enqueued: Any = _signals.task_enqueued
task_started: Any = _signals.task_started
task_finished: Any = _signals.task_finished
