"""Counting sends only once the transaction that inserted them has committed.

Semantic conventions: a message created but not yet sent must not be counted.
errands' own enqueue transactions are seen committing; a caller's transaction
(``connection=``) commits out of errands' sight, since neither psycopg nor sqlite3
has a commit hook. Its sends wait here until a daemon thread sees the caller's
transaction ended and finds the requests in the database (committed: counted) or
not (rolled back: dropped).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from errands.telemetry import conventions
from errands.telemetry.conventions import ENABLED
from errands.telemetry.sends import Sent, collector, record_sent

if TYPE_CHECKING:
    from errands.backends.base import Backend

logger = logging.getLogger("errands")

PENDING_CHECK_INTERVAL = 0.5  # seconds between looks at callers' open transactions
PENDING_MAX_WAIT = 300.0  # seconds after which an unseen commit counts as a rollback
CONNECTION_HOLD = 10.0  # seconds a caller's sqlite3 connection may be held to watch it
FINAL_PASS_LIMIT = 2.0  # seconds the exit may wait for the last settling


@contextlib.contextmanager
def counting_sends(backend: Backend, connection: Any | None = None) -> Iterator[None]:
    """Count the sends made in the block once the transaction they joined has committed.

    Wrap the block that opens the enqueue transaction: errands' own transaction
    (``connection=None``) has committed when the block exits cleanly, and so has a
    caller's connection left outside a transaction (autocommit). A caller's open
    transaction commits later, out of errands' sight (psycopg and sqlite3 have no
    commit hook): its sends wait until a background check sees the transaction
    ended and the requests present (committed: counted) or absent (rolled back:
    dropped). A block that raises counts nothing: its transaction rolled back.
    """
    if not ENABLED:
        yield
        return
    sends: list[Sent] = []
    token = collector.set(sends)
    try:
        yield
    finally:
        collector.reset(token)
    if not sends:
        return
    if connection is None or not _transaction_open(connection):
        now = time.monotonic()
        for sent in sends:
            record_sent(sent, now)
    elif conventions.metrics_configured():
        _pending.add(_Waiting(backend, _watch(connection), sends))


def flush_pending_sends() -> int:
    """Settle now the sends waiting for callers' transactions; return how many still wait.

    For tests and for short scripts; a daemon thread does this every
    ``PENDING_CHECK_INTERVAL`` seconds anyway, and once more at exit.
    """
    return _pending.resolve(force=True)


def waiting() -> int:
    """How many enqueue calls' sends wait for their caller's transaction to end."""
    return _pending.waiting()


def _transaction_open(connection: Any) -> bool:
    """Whether a caller's psycopg or sqlite3 connection is inside a transaction."""
    try:
        if hasattr(connection, "in_transaction"):  # sqlite3
            return bool(connection.in_transaction)
        if connection.closed:
            return False
        return bool(connection.info.transaction_status.name != "IDLE")
    except Exception:  # a closed sqlite3 connection raises: its transaction is over
        return False


class _HeldConnection:
    """Watches a connection that cannot be weakly referenced (sqlite3) by holding it,
    for at most ``CONNECTION_HOLD`` seconds: holding a connection the caller dropped
    keeps its transaction, and its locks, alive (a dropped sqlite3 connection waits
    for the garbage collector anyway: its statement cache refers back to it)."""

    def __init__(self, connection: Any) -> None:
        self._connection: Any = connection
        self._until = time.monotonic() + CONNECTION_HOLD

    def still_open(self) -> bool:
        if self._connection is not None and time.monotonic() > self._until:
            self._connection = None
        if self._connection is None:
            return True  # unknown from now on: the rows decide, up to PENDING_MAX_WAIT
        return _transaction_open(self._connection)


def _watch(connection: Any) -> Callable[[], bool]:
    """Whether the caller's transaction may still be open (False once it has ended)."""
    try:
        ref = weakref.ref(connection)
    except TypeError:
        return _HeldConnection(connection).still_open

    def still_open() -> bool:
        conn = ref()
        return conn is not None and _transaction_open(conn)

    return still_open


@dataclasses.dataclass
class _Waiting:
    """Sends of one enqueue into a caller's transaction, waiting to be counted or dropped."""

    backend: Backend
    still_open: Callable[[], bool]
    sends: list[Sent]
    since: float = dataclasses.field(default_factory=time.monotonic)
    backoff: float = PENDING_CHECK_INTERVAL
    next_lookup: float = 0.0
    errors: int = 0

    def settle(self, now: float, *, force: bool, final: bool) -> bool:
        """True once counted or dropped; False to look again later.

        The connection is looked at before the rows: a transaction seen ended has
        committed or rolled back by then, so the lookup that follows decides. While
        the connection is in a transaction (the same one, or a later one after a
        commit), the rows are looked up less and less often.
        """
        ended = not self.still_open()
        if not ended and not force and now < self.next_lookup:
            return now - self.since > PENDING_MAX_WAIT
        try:
            committed = self.backend.get(uuid=self.sends[0].probe) is not None
        except Exception:
            self.errors += 1
            logger.debug("cannot tell whether enqueued jobs were committed", exc_info=True)
            return final or self.errors >= 3
        if committed:
            for sent in self.sends:
                record_sent(sent, sent.ended)  # the caller's transaction is not errands' time
            return True
        if ended or final or now - self.since > PENDING_MAX_WAIT:
            return True  # rolled back (or never seen committed): nothing was sent
        self.backoff = min(self.backoff * 2, 30.0)
        self.next_lookup = now + self.backoff
        return False


class _PendingSends:
    """Sends waiting for callers' transactions, settled by one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the fields
        self._resolving = threading.Lock()  # one settling round at a time
        self._items: list[_Waiting] = []
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def add(self, item: _Waiting) -> None:
        item.next_lookup = item.since + item.backoff
        with self._lock:
            self._items.append(item)
            if not self._at_exit:
                atexit.register(self._settle_at_exit)
                self._at_exit = True
            self._ensure_thread()

    def resolve(self, *, force: bool = False, final: bool = False) -> int:
        """Settle what can be settled (everything now with ``force``; at exit, ``final``
        drops what is still unseen); return how many still wait."""
        with self._resolving:
            now = time.monotonic()
            with self._lock:
                items, self._items = self._items, []
            kept = self._settle(items, now, force=force, final=final)
            with self._lock:
                self._items += kept
                if self._items:
                    self._ensure_thread()
                return len(self._items)

    def _settle(
        self, items: list[_Waiting], now: float, *, force: bool, final: bool
    ) -> list[_Waiting]:
        """The items still waiting (at exit, a database that failed is not asked again)."""
        kept = []
        failing: set[int] = set()
        for item in items:
            if final and id(item.backend) in failing:
                continue
            errors = item.errors
            if not item.settle(now, force=force, final=final):
                kept.append(item)
            if item.errors > errors:
                failing.add(id(item.backend))
        return kept

    def _settle_at_exit(self) -> None:
        # In a thread, so that an unreachable database delays the exit by
        # FINAL_PASS_LIMIT seconds at most.
        final = threading.Thread(
            target=self.resolve, kwargs={"force": True, "final": True}, daemon=True
        )
        final.start()
        final.join(FINAL_PASS_LIMIT)

    def waiting(self) -> int:
        with self._lock:
            return len(self._items)

    def forget(self) -> None:
        """In a forked child: the parent counts its own pending sends."""
        self._lock = threading.Lock()
        self._resolving = threading.Lock()
        self._items = []
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="errands-telemetry", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(PENDING_CHECK_INTERVAL)
            self.resolve()
            with self._lock:
                if not self._items:
                    self._thread = None
                    return


_pending = _PendingSends()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pending.forget)
