"""Job output in whole lines: what jobs print or log reaches the worker's output line by line.

A worker's children share its stdout and stderr. Left alone, two children's
lines merge: Python buffers a redirected stdout in blocks of 8 KiB, written out
wherever a block ends, mid-line; and ``print()`` writes its text and its newline
in two calls, so two threads of one child interleave ("ab" then two newlines,
a merged line and a blank one).

In a child, ``install`` replaces ``sys.stdout`` and ``sys.stderr`` with streams
that keep each thread's text (each job's, for async jobs sharing the event loop's
thread) until its newline, then write the whole line, or all the whole lines one
``write()`` call brought, with one ``os.write``. The kernel does not split such a
write on a terminal or a regular file, nor on a pipe up to ``PIPE_BUF`` (4096
bytes on Linux): only a longer line sent to a pipe may still meet another
process's output midway. Text left without a newline is written, ended by one,
when its job ends (or past ``MAX_PENDING`` bytes); a ``flush()`` does not write
it, so that no partial line can meet another. Only what goes through
``sys.stdout``/``sys.stderr`` is covered (``print``, logging handlers, warnings,
tracebacks); a subprocess or C code writing to the file descriptors directly is not.

With ``label=True`` each line starts with its job's class and short id:
``[myapp.jobs.SendWelcome 1a2b3c4d] welcome, user 1193``.
"""

from __future__ import annotations

import atexit
import contextvars
import io
import os
import select
import sys
import threading
import uuid
from typing import Any

#: Bytes of one unfinished line held at most; past it the text is written, ended.
MAX_PENDING = 1 << 16

Job = tuple[str, uuid.UUID]  # (job class, process uuid)

_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar("errands_job", default=None)
_installed: list[WholeLines] = []


def label_of(job: Job) -> bytes:
    """``[app.Send 1a2b3c4d] ``: the prefix of a job's lines."""
    job_class, job_uuid = job
    return f"[{job_class} {str(job_uuid)[:8]}] ".encode()


class WholeLines(io.RawIOBase):
    """A binary stream on ``fd`` that writes only whole lines (see the module)."""

    def __init__(self, fd: int, *, label: bool = False) -> None:
        super().__init__()
        self._fd = fd
        self._label = label
        self._pending: dict[tuple[int, Job | None], bytes] = {}  # (thread, job): unended text
        self._lock = threading.Lock()  # one line at a time from this process

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        job = _job.get()
        key = (threading.get_ident(), job)
        text = self._pending.pop(key, b"") + chunk if self._pending else chunk
        end = text.rfind(b"\n") + 1
        if end:
            self._emit(text[:end], job)
        if end < len(text):
            rest = text[end:]
            if len(rest) > MAX_PENDING:
                self._emit(rest + b"\n", job)
            else:
                self._pending[key] = rest
        return len(chunk)

    def end_job(self, job: Job) -> None:
        """The job ended: write what it left without a newline, ended by one."""
        if self._pending:
            for key in [key for key in self._pending if key[1] == job]:
                self._emit(self._pending.pop(key) + b"\n", job)

    def end_all(self) -> None:
        """Write every unended text (the child exits)."""
        for key in list(self._pending):
            text = self._pending.pop(key, None)
            if text:
                self._emit(text + b"\n", key[1])

    def _emit(self, lines: bytes, job: Job | None) -> None:
        if self._label and job is not None:
            label = label_of(job)
            lines = b"".join(label + line for line in lines.splitlines(keepends=True))
        view = memoryview(lines)
        with self._lock:
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except BlockingIOError:  # someone made the descriptor non-blocking
                    select.select([], [self._fd], [])


def install(*, label: bool = False) -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` write whole lines (in a child, first thing)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            continue
        try:
            fd = stream.fileno()
            stream.flush()
        except (AttributeError, OSError, ValueError):
            continue  # not a real file: leave it
        raw = WholeLines(fd, label=label)
        # A raw stream suffices under a TextIOWrapper that writes through.
        wrapper = io.TextIOWrapper(  # type: ignore[type-var]
            raw, encoding=stream.encoding, errors=stream.errors, write_through=True
        )
        setattr(sys, name, wrapper)
        if not _installed:
            atexit.register(end_all)
        _installed.append(raw)


def begin_job(job_class: str, job_uuid: uuid.UUID) -> contextvars.Token[Job | None]:
    """The lines written from here on (on this thread) are the job's."""
    return _job.set((job_class, job_uuid))


def end_job(token: contextvars.Token[Job | None]) -> None:
    """The job of ``begin_job`` ended: its unended text is written."""
    job = _job.get()
    _job.reset(token)
    if job is not None:
        for raw in _installed:
            raw.end_job(job)


def end_all() -> None:
    """The child exits: every unended text is written."""
    for raw in _installed:
        raw.end_all()
