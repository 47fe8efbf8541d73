"""Testing helpers: capture enqueued jobs, or run them in-process as they are enqueued.

Two modes replace errands' database for the duration of a ``with`` block (in every
thread of the process, so a web framework's test client sees them too)::

    from errands import testing

    with testing.capture() as jobs:         # record, do not run
        signup("ada@example.com")
        jobs.assert_enqueued(SendWelcome, email="ada@example.com")
        results = jobs.drain()               # now run them (and what they enqueue)

    with testing.immediate() as jobs:        # run each job when it is enqueued
        request = SendWelcome("ada@example.com").run_in_worker()
        assert errands.get(request.uuid).status == errands.Status.SUCCESSFUL

In both modes a job's parameters and return value make the same JSON round trip
as with a real worker, so a parameter a worker could not receive fails here too,
and jobs run through the worker's own execution path (middleware, ERRORED and
DEFERRED outcomes, retries). Delays are not waited for: ``drain()`` and immediate
mode run delayed jobs and retries at once. Timeouts are not enforced.

For tests that need a real database and worker, the pytest plugin (installed with
errands) provides the ``errands_database`` and ``errands_worker`` fixtures; see
:mod:`errands.pytest_plugin`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

from errands import api, serialization
from errands.jobs import Job
from errands.models import FAILED_STATUSES, JobRequest, JobResult
from errands.registry import job_class_path, load_job_class
from errands.testing.memory import MemoryBackend, RunawayJobs

__all__ = [
    "JobFailed",
    "Recorder",
    "RunawayJobs",
    "assert_enqueued",
    "assert_not_enqueued",
    "capture",
    "drain",
    "enqueued_jobs",
    "immediate",
]

#: Upper bound of jobs one ``drain()`` (or one immediate enqueue) runs.
DEFAULT_MAX_JOBS = 1000

JobClass = type[Job] | str


class JobFailed(AssertionError):
    """A job run by ``immediate(raise_errors=True)`` ended failed; carries its result."""

    def __init__(self, result: JobResult) -> None:
        self.result = result
        super().__init__(
            f"{result.job_class} ended {result.status}: {result.error_type}: {result.error}\n"
            f"{result.traceback}"
        )


class Recorder:
    """What one ``capture()`` or ``immediate()`` block saw; its methods query it."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    @property
    def results(self) -> list[JobResult]:
        """Every result written in this block, oldest first."""
        with self.backend.lock:
            return list(self.backend.results)

    def pending(self) -> list[JobRequest]:
        """Requests not run yet, in claim order."""
        with self.backend.lock:
            return list(self.backend.requests.values())

    def enqueued_jobs(self, job_class: JobClass | None = None, **params: Any) -> list[JobRequest]:
        """Requests enqueued in this block (including those already run), oldest first.

        With ``job_class`` only jobs of that class; with ``params`` only jobs whose
        constructor arguments (by name, defaults included) equal the given values.
        Retries and deferrals are not listed: they are not new enqueues.
        """
        with self.backend.lock:
            history = list(self.backend.history)
        path = _path(job_class) if job_class is not None else None
        return [
            r
            for r in history
            if (path is None or r.job_class == path) and _parameters_match(r, params)
        ]

    def assert_enqueued(self, job_class: JobClass, **params: Any) -> list[JobRequest]:
        """Fail unless a job of ``job_class`` with these parameters was enqueued.

        Returns the matching requests (check ``len()`` to assert a count).
        """
        found = self.enqueued_jobs(job_class, **params)
        if not found:
            raise AssertionError(
                f"no {_path(job_class)} job enqueued{_with(params)}; enqueued: "
                f"{self._describe_history()}"
            )
        return found

    def assert_not_enqueued(self, job_class: JobClass, **params: Any) -> None:
        """Fail if a job of ``job_class`` (with these parameters, if given) was enqueued."""
        found = self.enqueued_jobs(job_class, **params)
        if found:
            raise AssertionError(
                f"{len(found)} {_path(job_class)} job(s) enqueued{_with(params)}, expected "
                f"none: {[_describe(r) for r in found]}"
            )

    def drain(
        self, *, include_delayed: bool = True, max_jobs: int = DEFAULT_MAX_JOBS
    ) -> list[JobResult]:
        """Run every pending job in-process, with the jobs they enqueue and their retries,
        until nothing is left; return the results in the order they were written.

        ``include_delayed=False`` runs only jobs already due. Raises ``RunawayJobs``
        after ``max_jobs`` jobs when the queue is still not empty.
        """
        return self.backend.run_all(include_delayed=include_delayed, max_jobs=max_jobs)

    def _describe_history(self) -> str:
        with self.backend.lock:
            history = [_describe(r) for r in self.backend.history]
        return ", ".join(history) if history else "nothing"


_active: list[Recorder] = []


@contextlib.contextmanager
def capture() -> Iterator[Recorder]:
    """Record enqueued jobs without running them; run them later with ``drain()``."""
    backend = MemoryBackend(mode="capture")
    with _activate(backend) as recorder:
        yield recorder


@contextlib.contextmanager
def immediate(
    *, raise_errors: bool = False, max_jobs: int = DEFAULT_MAX_JOBS
) -> Iterator[Recorder]:
    """Run each job in-process as soon as its enqueue commits, and record its result.

    ``run_in_worker()`` returns once the job (and what it enqueued, and its retries)
    has run. A failing job writes an ERRORED result as in a worker; with
    ``raise_errors=True`` its enqueue raises :class:`JobFailed` instead, so a test
    fails at the line that enqueued it.
    """
    backend = MemoryBackend(mode="immediate")

    def run_enqueued(requests: list[JobRequest]) -> None:
        results = backend.run_all(include_delayed=True, max_jobs=max_jobs)
        failed = [r for r in results if _failed_for_good(r)]
        if raise_errors and failed:
            raise JobFailed(failed[0])

    backend.on_enqueued = run_enqueued
    with _activate(backend) as recorder:
        yield recorder


@contextlib.contextmanager
def _activate(backend: MemoryBackend) -> Iterator[Recorder]:
    recorder = Recorder(backend)
    _active.append(recorder)
    try:
        with api.use_backend(backend):
            yield recorder
    finally:
        _active.remove(recorder)
        backend.close()


def _current() -> Recorder:
    if not _active:
        raise RuntimeError(
            "no errands.testing.capture() or immediate() block is active (use it as a "
            "context manager, or the errands_capture / errands_immediate fixtures)"
        )
    return _active[-1]


def enqueued_jobs(job_class: JobClass | None = None, **params: Any) -> list[JobRequest]:
    """:meth:`Recorder.enqueued_jobs` of the innermost active block."""
    return _current().enqueued_jobs(job_class, **params)


def assert_enqueued(job_class: JobClass, **params: Any) -> list[JobRequest]:
    """:meth:`Recorder.assert_enqueued` of the innermost active block."""
    return _current().assert_enqueued(job_class, **params)


def assert_not_enqueued(job_class: JobClass, **params: Any) -> None:
    """:meth:`Recorder.assert_not_enqueued` of the innermost active block."""
    _current().assert_not_enqueued(job_class, **params)


def drain(*, include_delayed: bool = True, max_jobs: int = DEFAULT_MAX_JOBS) -> list[JobResult]:
    """:meth:`Recorder.drain` of the innermost active block."""
    return _current().drain(include_delayed=include_delayed, max_jobs=max_jobs)


# -- matching parameters -------------------------------------------------------------


def _path(job_class: JobClass) -> str:
    return job_class if isinstance(job_class, str) else job_class_path(job_class)


def _failed_for_good(result: JobResult) -> bool:
    return result.status in FAILED_STATUSES and result.retry_request_uuid is None


def arguments(request: JobRequest) -> dict[str, Any]:
    """A request's decoded constructor arguments by parameter name, defaults included.

    Arguments that the signature cannot name (``*args``) appear as ``args``.
    """
    args, kwargs = serialization.decode_arguments(request.parameters)
    try:
        signature = inspect.signature(load_job_class(request.job_class).__init__)
        bound = signature.bind(None, *args, **kwargs)
    except (TypeError, ValueError, LookupError):
        return {**kwargs, "args": args}
    bound.apply_defaults()
    named = dict(list(bound.arguments.items())[1:])  # drop `self`
    for name, parameter in signature.parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
    return named


def _parameters_match(request: JobRequest, params: dict[str, Any]) -> bool:
    if not params:
        return True
    named = arguments(request)
    return all(name in named and named[name] == value for name, value in params.items())


def _with(params: dict[str, Any]) -> str:
    if not params:
        return ""
    return " with " + ", ".join(f"{k}={v!r}" for k, v in params.items())


def _describe(request: JobRequest) -> str:
    try:
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments(request).items())
    except Exception:  # an undecodable value: show the stored form
        shown = repr(request.parameters)
    return f"{request.job_class}({shown})"
