"""The protocol between a worker's parent process and its children.

A child holds up to ``PREFETCH`` jobs more than it has runners, queued in
order: the next job is at hand when one ends, and messages carry many jobs, so
short jobs cost a fraction of a pipe round trip each (every message can wake a
sleeping process, which costs far more than running a no-op job).

Messages are plain tuples (they pickle in about a microsecond, dataclasses in
tens), each one length-prefixed pickle on a pipe:

* parent -> child: ``("assign", [(slot, assignment fields), ...])``;
  ``("recall",)``: give back every job not begun; ``None``: finish, then exit;
* child -> parent, on the outbox pipe: ``([(slot, outcome fields)], None)`` as
  each job ends, before its runner takes the next one (a job that then kills the
  process loses no outcome of the jobs before it); ``([], recalled slots)``;
  ``([], None, [(process uuid bytes, done, total, message)])``: a job's progress
  (errands.progress: at most one every ``progress.INTERVAL`` per job, and its last
  one just before its outcome), rung for at once; the parent's Recorder writes the
  latest per job with its next batch;
* the bell pipe: one byte asks the parent to read the outbox now. The parent
  wakes on the bell, not on each outcome: the child rings once more have ended
  than wait in its queue (so that its slots are refilled while the rest keep it
  busy), or ``OUTBOX_AGE`` after an outcome it has not rung for, or at once for
  a recall or a large message;
* shared memory: ``started[slot]`` is the wall-clock time at which the slot's
  job began, or 0.0 before that. The parent resets it before it fills the slot,
  the child sets it as it takes the job from its queue (under the lock that a
  recall takes too); the pipe orders the two. Reading it costs the parent no
  message and no wake-up, and tells it, even after the child died, which of its
  jobs had begun. ``ended`` counts the outcomes the child has written: the parent
  claims more jobs for those it has not read yet, before the bell.

The parent's side is ``pool``, the child's is ``child``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import struct
import uuid
from typing import Any

from errands.models import JobProcess, Outcome, Requeue, Status, build_outcome, uuid_from_bytes
from errands.worker.execution import Assignment, build_assignment

# Jobs a child may hold beyond its runners: enough for the child to keep busy
# while the parent's loop waits for its interpreter (a claim's rows, a batch's
# results are Python work on the parent's other threads). Fewer left children of
# a fast drain waiting for jobs much of the time.
PREFETCH = 64
OUTBOX_AGE = 0.002  # seconds an outcome may wait for the bell, to be read with others
LARGE_MESSAGE = 4096  # bytes: the parent is rung before such a message (it may fill the pipe)

_PICKLE = pickle.HIGHEST_PROTOCOL
_HEADER = struct.Struct("!I")
_STATUSES = {status.value: status for status in Status}

Wire = tuple[Any, ...]

# -- the wire format -------------------------------------------------------------------


def job_to_wire(job: JobProcess) -> Wire:
    """The fields of the job's ``Assignment`` in their order, uuids as their 16 bytes
    (a uuid pickles at a fifth of the cost that way)."""
    return (
        job.uuid.bytes,
        job.job_class,
        job.parameters,
        job.retries,
        job.retry_attempt,
        job.queue,
        None if job.request_uuid is None else job.request_uuid.bytes,
        job.trace_id,
        job.span_id,
        job.priority,
        job.requested_at.timestamp(),
        None if job.start_at is None else job.start_at.timestamp(),
        job.timeout,
        job.worker_id.bytes,
        job.limits,
    )


def assignment_from_wire(wire: Wire) -> Assignment:
    (process, job_class, parameters, retries, attempt, queue, request, trace_id, span_id) = wire[:9]
    priority, requested_at, start_at, timeout, worker_id, limits = wire[9:]
    return build_assignment(
        uuid_from_bytes(process),
        job_class,
        parameters,
        retries,
        attempt,
        queue,
        None if request is None else uuid_from_bytes(request),
        trace_id,
        span_id,
        priority,
        requested_at,  # these three converted only if the job reads its context
        start_at,
        timeout,
        worker_id,
        limits,
    )


def outcome_to_wire(outcome: Outcome) -> Wire:
    """The outcome without its process uuid (the parent knows it from the slot)."""
    requeue = outcome.requeue
    return (
        outcome.status.value,
        outcome.started_at.timestamp() if outcome.started_at else None,
        outcome.ended_at.timestamp(),
        outcome.error_type,
        outcome.error,
        outcome.traceback,
        outcome.return_value,
        (requeue.delay_seconds, requeue.retry_attempt) if requeue else None,
    )


def outcome_from_wire(process_uuid: uuid.UUID, wire: Wire) -> Outcome:
    status, started, ended, error_type, error, traceback, return_value, requeue = wire
    return build_outcome(
        process_uuid=process_uuid,
        status=_STATUSES[status],
        started_at=None if started is None else utc_from_timestamp(started),
        ended_at=utc_from_timestamp(ended),
        error_type=error_type,
        error=error,
        traceback=traceback,
        return_value=return_value,
        requeue=None if requeue is None else Requeue(*requeue),
    )


def utc_from_timestamp(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def encode_message(message: Any) -> bytes:
    """One length-prefixed pickle."""
    data = pickle.dumps(message, _PICKLE)
    return _HEADER.pack(len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` whole (the descriptor blocks)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_message(fd: int, message: Any) -> None:
    write_all(fd, encode_message(message))


def ring(fd: int) -> None:
    """One byte on a bell pipe (non-blocking: a full one rings already)."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, b"x")


class MessageReader:
    """Splits the bytes of a pipe into messages; one read takes whatever is there."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    def read(self) -> list[Any]:
        """The complete messages available now (the descriptor must not block)."""
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.buffer += chunk
                if len(chunk) < 1 << 16:
                    break
            else:
                self.closed = True  # end of file: the writer is gone
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True
        return self._split()

    @property
    def partial(self) -> bool:
        """Whether part of a message has arrived, and the rest is on its way."""
        return bool(self.buffer) and not self.closed

    def _split(self) -> list[Any]:
        messages = []
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            end = _HEADER.size + size
            if len(self.buffer) < end:
                break
            messages.append(pickle.loads(self.buffer[_HEADER.size : end]))
            del self.buffer[:end]
        return messages
