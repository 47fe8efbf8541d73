"""Progress: what a running job says of how far it got, ``self.report_progress(done,
total=None, message=None)``.

In a worker's child the reports of a job are coalesced: one goes to the worker
parent at once, the next ones at most every :data:`INTERVAL` seconds (the latest
value wins), and the last one when the job ends. The parent writes the latest
value per job with its next batch (``worker.batches.Recorder``) to the process's
``progress_done``, ``progress_total`` and ``progress_message``; the result keeps
the last one. So a loop that reports every item costs about a microsecond per
report, not a database write.

Outside a worker (a job's ``run()`` called directly, or errands.testing's drain and
immediate helpers) a report does nothing: code that reports progress runs
unchanged in unit tests. Invalid values raise ``TypeError``/``ValueError`` wherever
the job runs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from errands.context import ATTRIBUTE
from errands.models import Progress

#: Seconds between two reports of one job that reach the worker parent.
INTERVAL = 0.5
#: A message longer than this is cut (with an ellipsis).
MAX_MESSAGE = 200

#: Where a child's reports go: the process uuid and its progress.
Sink = Callable[[uuid.UUID, Progress], None]

_sink: Sink | None = None
# Per running job (its process uuid): [when a report was last sent, the latest unsent].
_state: dict[uuid.UUID, list[Any]] = {}
_lock = threading.Lock()


def install(sink: Sink | None) -> None:
    """Where this process's reports go (a worker's child installs its pipe); None: nowhere."""
    global _sink
    _sink = sink
    _state.clear()


def checked(done: object, total: object, message: object) -> Progress:
    """The report's values, checked; TypeError or ValueError otherwise."""
    if isinstance(done, bool) or not isinstance(done, int):
        raise TypeError(f"report_progress: done must be an int, got {done!r:.80}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
        raise TypeError(f"report_progress: total must be an int or None, got {total!r:.80}")
    if done < 0 or (total is not None and total < 0):
        raise ValueError(f"report_progress: done and total must be 0 or more, got {done}, {total}")
    if done >= 1 << 63 or (total is not None and total >= 1 << 63):
        raise ValueError("report_progress: done and total must fit in 64 bits")
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"report_progress: message must be a str or None, got {message!r:.80}")
        message = message.replace("\x00", "")
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
    return done, total, message


def report(job: object, done: int, total: int | None = None, message: str | None = None) -> None:
    """``Job.report_progress``: how far this run of the job got, sent on to its worker
    (coalesced), shown by ``errands processes`` and the dashboard, kept on the result.
    Does nothing outside a worker; TypeError or ValueError for values it cannot store."""
    value = checked(done, total, message)
    sink = _sink
    if sink is None:
        return  # not in a worker's child: nowhere to report to
    found = vars(job).get(ATTRIBUTE) if hasattr(job, "__dict__") else None
    if found is None:
        return  # the job was called directly, not run by the worker
    key: uuid.UUID = getattr(job, "context").process_uuid  # noqa: B009 (a descriptor)
    now = time.monotonic()
    state = _state.get(key)
    if state is None:
        with _lock:
            state = _state.setdefault(key, [now - INTERVAL, None])
    if now - state[0] >= INTERVAL:
        state[0], state[1] = now, None
        sink(key, value)
    else:
        state[1] = value


def finish(process_uuid: uuid.UUID) -> None:
    """The job ended: its last unsent report goes now (before its outcome)."""
    with _lock:
        state = _state.pop(process_uuid, None)
    sink = _sink
    if state is not None and state[1] is not None and sink is not None:
        sink(process_uuid, state[1])


def active() -> bool:
    """Whether a job of this process has reported progress that ``finish`` must see."""
    return bool(_state)


def progress_text(done: int | None, total: int | None, message: str | None) -> str:
    """How listings show a progress: ``30/100 message``, ``30``, or ``-`` for none."""
    if done is None:
        return "-"
    text = str(done) if total is None else f"{done}/{total}"
    return f"{text} {message}" if message else text


def percent(done: int | None, total: int | None) -> float | None:
    """The share done, 0 to 100, when a total is known (the dashboard's bar)."""
    if done is None or not total:
        return None
    return max(0.0, min(100.0, 100.0 * done / total))
