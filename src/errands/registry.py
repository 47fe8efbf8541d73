"""Which job classes this process knows, by dotted path.

Job class paths come from database rows, so loading one must never run code the
operator did not choose. The rule (:func:`load_job_class`): a path resolves to a
class registered with ``@register_job`` in this process; if none is, the path
may import its module only when that module is one of, or inside, the modules
named by the ``import`` setting (or allowed by an integration, such as each
Django app's ``jobs`` package). Anything else is ``JobNotRegistered``, and
nothing is imported.

A renamed class keeps its stored jobs with ``@register_job(aliases=["old.path"])``:
an alias is registered by the code that defines the class, so it resolves only once
that code was imported the usual way; it never lets a row import anything more.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from errands import serialization
from errands.errors import ConfigurationError, JobNotRegistered

if TYPE_CHECKING:
    from errands.jobs import Job

J = TypeVar("J", bound="type[Job]")

_jobs: dict[str, type[Job]] = {}
_aliases: dict[str, type[Job]] = {}  # an old path -> the class that took it over
# Modules (and packages) a stored path may import from. errands.scheduler is errands'
# own: it defines ShellCommand, which runs only commands of the worker's own schedule
# setting, and it is imported on first use (croniter weighs on every process).
_allowed: set[str] = {"errands.scheduler"}


def job_class_path(cls: type[Any]) -> str:
    """The dotted path stored with a request, e.g. ``myapp.jobs.SendWelcome``."""
    return f"{cls.__module__}.{cls.__qualname__}"


@overload
def register_job(cls: J, /) -> J: ...


@overload
def register_job(*, aliases: Iterable[str] = ()) -> Callable[[J], J]: ...


def register_job(cls: J | None = None, /, *, aliases: Iterable[str] = ()) -> J | Callable[[J], J]:
    """Class decorator: make a ``Job`` subclass loadable by workers from its dotted path.

    ``@register_job(aliases=["old.module.OldName"])`` also loads the jobs stored under
    the class's former paths (requests, retries and schedule entries written before a
    rename). Two classes claiming one path is a ``ConfigurationError`` naming both.
    """
    names = [aliases] if isinstance(aliases, str) else list(aliases)

    def register(job_class: J) -> J:
        _register(job_class, names)
        return job_class

    return register if cls is None else register(cls)


def _register(cls: type[Job], aliases: list[str]) -> None:
    path = job_class_path(cls)
    for alias in aliases:
        if not isinstance(alias, str) or not _is_dotted(alias) or alias == path:
            raise ConfigurationError(
                f"@register_job on {path}: alias {alias!r} is not a former dotted class "
                "path (module.ClassName) of this class"
            )
        _check_claim(alias, path, as_alias=True)
    _check_claim(path, path, as_alias=False)
    # A module imported again (a reload, a test) registers its class anew: the same
    # path may take its own aliases back, so claims are compared by path.
    for old, owner in list(_aliases.items()):
        if job_class_path(owner) == path and old not in aliases:
            del _aliases[old]
    _jobs[path] = cls
    _aliases.update(dict.fromkeys(aliases, cls))


def _check_claim(name: str, path: str, *, as_alias: bool) -> None:
    """Refuse ``name`` when another class (not ``path``) holds it, as path or alias."""
    holder = _jobs.get(name) if as_alias else None
    if holder is not None:
        raise ConfigurationError(
            f"@register_job on {path}: alias {name!r} is the path of the registered "
            f"class {job_class_path(holder)}; two classes cannot share a stored path"
        )
    owner = _aliases.get(name)
    if owner is not None and job_class_path(owner) != path:
        what = f"alias {name!r}" if as_alias else "its path"
        raise ConfigurationError(
            f"@register_job on {path}: {what} is already an alias of "
            f"{job_class_path(owner)}; two classes cannot share a stored path"
        )


def _is_dotted(path: str) -> bool:
    return "." in path and all(part.isidentifier() for part in path.split("."))


def registered_jobs() -> dict[str, type[Job]]:
    return dict(sorted(_jobs.items()))


def registered_aliases() -> dict[str, str]:
    """Each alias and the path of the class it loads, for ``errands check`` and listings."""
    return {alias: job_class_path(cls) for alias, cls in sorted(_aliases.items())}


def import_job_modules(modules: Iterable[str]) -> None:
    """Import the modules of the ``import`` setting, so their jobs register, and let
    stored paths import modules inside them later (a package's submodules)."""
    for module in modules:
        importlib.import_module(module)
        _allowed.add(module)


def describe_import_failure(module: str, exc: BaseException) -> tuple[str, str]:
    """Why importing ``module`` failed, short: where (``path:line: source line``, or ""
    when the module itself does not exist) and what (``SyntaxError: invalid syntax``).

    The place is the innermost line of the application's own code: not a line of
    Python's import machinery, of the standard library, of installed packages or of
    errands (an ``errands.configure(...)`` that refuses a value points at its call).
    """
    if (
        isinstance(exc, ModuleNotFoundError)
        and exc.name
        and f"{module}.".startswith(f"{exc.name}.")
    ):
        return "", (
            f"{exc} (not in the working directory {os.getcwd()}, on PYTHONPATH or "
            "in the installed packages)"
        )
    message = " ".join(str(exc).split())
    if isinstance(exc, SyntaxError):
        message = " ".join(str(exc.msg).split())
        where = f"{_shown_path(exc.filename)}:{exc.lineno}" if exc.filename else ""
        source = (exc.text or "").strip()
        return (f"{where}: {source}" if where and source else where), (
            f"{type(exc).__name__}: {message}"
        )
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frame = _application_frame(traceback.extract_tb(exc.__traceback__))
    if frame is None:
        return "", what
    where = f"{_shown_path(frame.filename)}:{frame.lineno}"
    source = (frame.line or "").strip()
    return (f"{where}: {source}" if source else where), what


def _application_frame(frames: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame in the application's code, else the innermost real file's."""
    files = [f for f in frames if not f.filename.startswith("<")]
    libraries = {
        os.path.normcase(os.path.realpath(path)) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(key))
    }
    libraries.add(os.path.normcase(str(Path(__file__).resolve().parent)) + os.sep)
    for frame in reversed(files):
        path = os.path.normcase(os.path.realpath(frame.filename))
        if not any(path.startswith(library) for library in libraries):
            return frame
    return files[-1] if files else None


def _shown_path(filename: str) -> str:
    """``filename`` relative to the working directory when inside it, else absolute."""
    path = os.path.abspath(filename)
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def allow_imports_from(modules: Iterable[str]) -> None:
    """Let stored paths import these modules and modules inside them, without importing
    anything now (for integrations that find job modules their own way)."""
    _allowed.update(modules)


def may_import(module: str, *, also: Iterable[str] = ()) -> bool:
    """Whether a stored path may import ``module``: it is a plain dotted name, and one
    of, or inside, the allowed modules, the ``import`` setting of this process, or
    ``also`` (a caller's own roots, such as Django's installed apps for task paths)."""
    if not all(part.isidentifier() for part in module.split(".")):
        return False
    from errands import settings  # settings imports nothing of errands' jobs

    roots = _allowed.union(settings.current().import_modules, also)
    return any(module == root or module.startswith(f"{root}.") for root in roots)


def load_job_class(path: str) -> type[Job]:
    """The registered class for ``path`` (or the class that has it as an alias); its
    module is imported first only if :func:`may_import` allows it. Every loading of a
    stored path comes here."""
    if path not in _jobs and path not in _aliases:
        module, _, _ = path.rpartition(".")
        if module and may_import(module):
            _import_if_present(module)  # may register the path, or an alias of it
    try:
        return _jobs.get(path) or _aliases[path]
    except KeyError:
        raise JobNotRegistered(
            f"job class {path!r} is not registered in this worker; register it with "
            "@register_job in a module of the 'import' setting (--import), or inside one"
        ) from None


def _import_if_present(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # A missing job module means "not registered"; a module that exists but
        # fails to import is a bug the user must see, so it propagates.
        if exc.name is None or not f"{module}.".startswith(f"{exc.name}."):
            raise


def build_job(path: str, parameters: dict[str, Any]) -> Job:
    """Rebuild a job from its stored path and parameters (the worker's side of run_in_worker)."""
    cls = load_job_class(path)
    try:
        args, kwargs = serialization.decode_arguments(parameters)
    except Exception as exc:
        # Parameters a row got by raw SQL, not by enqueueing: say so, not AttributeError.
        error = serialization.invalid_arguments(parameters)
        if error is None:
            raise
        raise error from exc
    return cls(*args, **kwargs)


_class_facts_cache: dict[type[Any], tuple[str, tuple[str, ...]]] = {}


def class_facts(cls: type[Any]) -> tuple[str, tuple[str, ...]]:
    """A job class's dotted path and its constructor's positional parameter names.

    Worked out once per class, not once per enqueued job (inspect.signature
    alone costs about 0.2 ms).
    """
    facts = _class_facts_cache.get(cls)
    if facts is None:
        facts = _class_facts_cache[cls] = (job_class_path(cls), _positional_names(cls))
    return facts


def _positional_names(cls: type[Any]) -> tuple[str, ...]:
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
