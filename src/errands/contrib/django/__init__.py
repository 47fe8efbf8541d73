"""errands in a Django project.

Add ``"errands.contrib.django"`` to ``INSTALLED_APPS``; then errands reads its
settings from ``settings.ERRANDS``, uses Django's database, joins its
transactions, stores model instances by reference, finds ``<app>/jobs.py``
modules and adds ``manage.py errands ...``. For Django's tasks framework::

    TASKS = {"default": {"BACKEND": "errands.contrib.django.ErrandsBackend"}}
"""

from __future__ import annotations

from typing import Any

__all__ = ["ErrandsBackend", "ErrandsTask"]


def __getattr__(name: str) -> Any:
    # Imported on first use: projects that only use Job classes need no tasks framework.
    if name in ("ErrandsBackend", "ErrandsTask"):
        from errands.contrib.django import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
