"""Which job classes this process knows, by dotted path."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from errands import serialization
from errands.errors import JobNotRegistered

if TYPE_CHECKING:
    from errands.jobs import Job

J = TypeVar("J", bound="type[Job]")

_jobs: dict[str, type[Job]] = {}


def job_class_path(cls: type[Any]) -> str:
    """The dotted path stored with a request, e.g. ``myapp.jobs.SendWelcome``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_job(cls: J) -> J:
    """Class decorator: make a ``Job`` subclass loadable by workers from its dotted path."""
    _jobs[job_class_path(cls)] = cls
    return cls


def registered_jobs() -> dict[str, type[Job]]:
    return dict(sorted(_jobs.items()))


def load_job_class(path: str) -> type[Job]:
    """The registered class for ``path``, importing its module once if needed.

    Only classes that registered themselves are returned: a stored path can make
    errands import a module, never instantiate an arbitrary class.
    """
    if path not in _jobs:
        module, _, _ = path.rpartition(".")
        if module:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                # A missing job module means "not registered"; a module that exists
                # but fails to import is a bug the user must see, so it propagates.
                if exc.name is None or not f"{module}.".startswith(f"{exc.name}."):
                    raise
    try:
        return _jobs[path]
    except KeyError:
        raise JobNotRegistered(
            f"job class {path!r} is not registered in this worker; "
            "import its module (--import / setting 'import') and decorate it with @register_job"
        ) from None


def build_job(path: str, parameters: dict[str, Any]) -> Job:
    """Rebuild a job from its stored path and parameters (the worker's side of run_in_worker)."""
    cls = load_job_class(path)
    try:
        args, kwargs = serialization.decode_arguments(parameters)
    except Exception as exc:
        # Parameters a row got by raw SQL, not by enqueueing: say so, not AttributeError.
        from errands.backends.rows import invalid_arguments

        error = invalid_arguments(parameters)
        if error is None:
            raise
        raise error from exc
    return cls(*args, **kwargs)
