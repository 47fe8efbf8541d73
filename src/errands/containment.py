"""User code never stops the worker.

A job's ``run()``, its hooks and the middleware may raise ``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit`` or any other ``BaseException``. Each is
recorded (or logged) like an ordinary exception where that code is called, and
the worker goes on: ``except Exception`` alone would let one such job end a
child, with every job it held, or the worker itself.

One ``KeyboardInterrupt`` must still pass: the process's own Ctrl-C. It can only
be that when it reaches the main thread while Python's default SIGINT handler is
installed (a script enqueueing, a test driving a worker by hand). A worker's
children ignore SIGINT, ``Worker.run`` handles SIGINT and SIGTERM itself (they
stop it and raise nothing), and signals never raise in other threads: there,
every ``KeyboardInterrupt`` comes from user code.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from errands.errors import ErrandsError
from errands.models import JobResult

logger = logging.getLogger("errands")

T = TypeVar("T")


class UserCodeError(ErrandsError):
    """A hook run while enqueueing raised a ``BaseException`` that is not an ``Exception``
    (``SystemExit``...): the enqueue failed, nothing was written. It is the ``__cause__``."""


def is_own_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` may be this process's own Ctrl-C, which must propagate."""
    return (
        isinstance(exc, KeyboardInterrupt)
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def ask_hook(hook: Callable[[str], T], argument: str) -> T:
    """Call an enqueue-time hook; a ``BaseException`` from it becomes a ``UserCodeError``
    (a ``SystemExit`` from a hook must not end the web server that enqueues)."""
    try:
        return hook(argument)
    except Exception:
        raise
    except BaseException as exc:
        if is_own_interrupt(exc):
            raise
        name = getattr(hook, "__qualname__", repr(hook))
        raise UserCodeError(f"{name}() raised {type(exc).__name__}: {exc}") from exc


def each_result(
    what: str, call: Callable[[list[JobResult]], object], results: Sequence[JobResult]
) -> None:
    """``call([result])`` for each result: hooks that log their ordinary exceptions
    themselves (``on_aborted``, retries of lost jobs); any other is logged here."""
    for result in results:
        try:
            call([result])
        except BaseException as exc:
            if is_own_interrupt(exc):
                raise
            logger.error(
                f"{what} failed",
                exc_info=exc,
                extra={"job_class": result.job_class, "job_uuid": str(result.uuid)},
            )
