"""Pausing the cyclic garbage collector while a large enqueue batch is built."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

LARGE_BATCH = 1_000  # jobs: enqueue_many pauses the cyclic garbage collector from here on


@contextlib.contextmanager
def without_cyclic_gc(wanted: bool) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large batch is built.

    A batch allocates several objects per job, none of them in reference cycles,
    and every few hundred allocations the collector walks the young objects: a
    fifth of a bulk enqueue's time, for nothing to collect. It is switched back
    on afterwards, unless it was already off (then it is the caller's choice).
    """
    if not wanted or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
