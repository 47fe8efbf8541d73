"""How the worker's children are started: multiprocessing's "spawn", made lighter.

A child is a fresh interpreter (never a fork of the parent, which holds database
connections and threads), started as multiprocessing's spawn start method does,
with three differences:

* it ignores SIGINT from its first instruction: a Ctrl-C on the terminal reaches
  the whole process group, and the parent decides about shutdown (``child``
  ignores it too once running; this covers its imports);
* it starts no resource tracker (a 12 MiB process per worker): the children share
  only anonymous memory (``RawArray``/``RawValue``, on file descriptors passed at
  spawn) and pipes, which need no tracking; a job that uses named semaphores or
  shared memory gets a tracker of its own child when it asks;
* unless told otherwise (``skip_main``), it runs the parent's ``__main__`` script
  again as spawn does (a script may define the jobs). The ``errands`` command says
  it need not: its ``__main__`` is the console script, whose import (the CLI, the
  database driver) a child would pay for in time and memory and never use.
"""

from __future__ import annotations

import io
import os
import sys
from multiprocessing import context, popen_spawn_posix, reduction, spawn
from multiprocessing import util as _util
from multiprocessing.process import BaseProcess
from typing import Any

util: Any = _util  # its stubs lack the private helpers used here

_skip_main = False

#: ``_Popen._launch`` follows the standard library's own, whose private helpers it
#: calls, as Python 3.11 has them: elsewhere (another version, a frozen program) the
#: children start as the standard spawn starts them, heavier but the same otherwise.
LIGHT = sys.version_info[:2] == (3, 11) and not getattr(sys, "frozen", False)

# What a child runs first (``spawn_main`` reads the rest from its pipe).
_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from multiprocessing.spawn import spawn_main; spawn_main(pipe_handle={fd!r})"
)


def skip_main(skip: bool = True) -> None:
    """Children started from now on do not run the parent's ``__main__`` again."""
    global _skip_main
    _skip_main = skip


def preparation_data(name: str) -> dict[str, Any]:
    """What spawn tells a child to set up before it unpickles its target."""
    data: dict[str, Any] = spawn.get_preparation_data(name)
    if _skip_main:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


class _Popen(popen_spawn_posix.Popen):
    """``popen_spawn_posix.Popen`` without the resource tracker (and its fd), with
    ``_BOOT`` and ``preparation_data``; the rest as the standard library does it."""

    _fds: list[int]  # set by its __init__: descriptors the child inherits

    def _launch(self, process_obj: Any) -> None:
        prep_data = preparation_data(process_obj._name)
        buffer = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buffer)
            reduction.dump(process_obj, buffer)
        finally:
            context.set_spawning_popen(None)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            command = [
                spawn.get_executable(),
                *util._args_from_interpreter_flags(),
                "-c",
                _BOOT.format(fd=child_r),
                "--multiprocessing-fork",
            ]
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), command, self._fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as pipe:
                pipe.write(buffer.getbuffer())
        finally:
            self.finalizer = util.Finalize(
                self, util.close_fds, [fd for fd in (parent_r, parent_w) if fd is not None]
            )
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class ChildProcess(context.SpawnProcess):
    """A spawned process started by ``_Popen`` (the standard one unless ``LIGHT``)."""

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:
        if not LIGHT:
            return popen_spawn_posix.Popen(process_obj)
        return _Popen(process_obj)
