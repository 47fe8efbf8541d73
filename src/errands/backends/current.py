"""The backend of this process: opened from the ``database_url`` setting on first use
and reused, reopened when the setting changes; tests and integrations may install
their own (:func:`use_backend`, :func:`set_backend_opener`).

Below the jobs API and ``errands.api`` alike, which both reach the database through
:func:`backend`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from errands import settings
from errands.backends import DEFAULT_URL, Backend, open_backend

_lock = threading.Lock()
_backend: Backend | None = None
#: Backends installed by ``use_backend``, innermost last; they win over the setting.
_overrides: list[Backend] = []
#: Opens the backend of a URL; integrations replace it with ``set_backend_opener``.
_opener: Callable[[str | None], Backend] = open_backend


def backend() -> Backend:
    """The backend of the configured ``database_url`` (reopened when the setting changes),
    or the one installed by :func:`use_backend`."""
    global _backend
    url = settings.current().database_url
    with _lock:
        if _overrides:
            return _overrides[-1]
        if _backend is None or _backend.url != (url or DEFAULT_URL):
            if _backend is not None:
                _backend.close()
            _backend = _opener(url)
        return _backend


def set_backend_opener(opener: Callable[[str | None], Backend] | None) -> None:
    """Open backends with ``opener(database_url)`` from now on (None: the default).

    For integrations that extend a backend (``errands.contrib.django`` makes
    enqueues join Django's transaction). The current backend is closed, and the
    next :func:`backend` call opens one with ``opener``.
    """
    global _backend, _opener
    with _lock:
        _opener = opener or open_backend
        previous, _backend = _backend, None
    if previous is not None:
        previous.close()


@contextlib.contextmanager
def use_backend(replacement: Backend) -> Iterator[Backend]:
    """Make :func:`backend` return ``replacement`` inside the block, in every thread.

    Meant for tests (``errands.testing`` builds on it): the override is process-wide
    so that code running in other threads (a web framework's test client, say) sees
    it too. Blocks may nest; the innermost wins. The replacement is not closed here.
    """
    with _lock:
        _overrides.append(replacement)
    try:
        yield replacement
    finally:
        with _lock:
            _overrides.remove(replacement)


__all__ = ["backend", "set_backend_opener", "use_backend"]
