"""A real worker in a subprocess, for the tests that signal, pause or kill one.

:meth:`WorkerProcess.main` starts ``tests/support/worker_main.py`` (a worker with its
own signal handlers, as ``errands worker`` has) configured by ``ERRANDS_*``
variables; :meth:`WorkerProcess.errands` starts the ``errands`` command itself. Either
runs in a new session, so that :meth:`signal_group` reaches its job processes too,
and writes its stdout and stderr to a log file. :meth:`close` (or leaving a ``with``
block) kills whatever is left of the group; the ``spawn_worker`` fixture
(``tests/conftest.py``) closes every worker it started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from signal import SIGKILL, SIGTERM
from types import TracebackType

from errands import settings
from errands.backends import open_backend
from errands.models import WorkerInfo

ERRANDS = str(Path(sys.executable).with_name("errands"))
WORKER_MAIN = Path(__file__).with_name("worker_main.py")

#: Settings of a worker started with :meth:`WorkerProcess.main` unless a test gives
#: others: one job process, fast polls and heartbeats, and a heartbeat timeout no
#: test waits for (a test that needs a stale worker backdates its heartbeat).
MAIN_DEFAULTS: dict[str, object] = {
    "import_modules": ("sample_jobs",),
    "worker_max_processes": 1,
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 60,
    "poll_interval": 0.1,
}


def settings_environ(values: Mapping[str, object]) -> dict[str, str]:
    """``ERRANDS_*`` variables for settings given by field name (``import_modules``...)."""
    return {
        settings.env_name(name): ",".join(value) if isinstance(value, tuple) else str(value)
        for name, value in values.items()
    }


class WorkerProcess:
    """A worker subprocess in its own session, its output in ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.url = url
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            list(argv),
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @classmethod
    def main(
        cls,
        url: str,
        log: Path,
        *,
        queues: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        **values: object,
    ) -> WorkerProcess:
        """``worker_main.py`` serving ``queues`` (none: all), with :data:`MAIN_DEFAULTS`
        and ``values`` as its settings; ``env`` adds to (or overrides) its environment."""
        environ = {
            **os.environ,
            **settings_environ({**MAIN_DEFAULTS, **values, "database_url": url}),
            **(env or {}),
        }
        return cls([sys.executable, str(WORKER_MAIN), *queues], log, url=url, env=environ)

    @classmethod
    def errands(
        cls,
        url: str,
        log: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> WorkerProcess:
        """The command ``errands --database-url URL *args`` (``args`` name the command:
        ``worker``, its options, and any global options before it)."""
        argv = [ERRANDS, "--database-url", url, *args]
        return cls(argv, log, url=url, env=env, cwd=cwd)

    # -- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the worker (and its job processes) wrote so far."""
        self._log.flush()
        return self.log_path.read_text()

    def wait_registered(self, *, timeout: float = 30, url: str | None = None) -> WorkerInfo:
        """The worker's row in ``errands_worker`` once it registered (looked up by
        ``url``, else the URL it serves). Fails at once, with its log, if it exits."""
        backend = open_backend(url or self._url())
        deadline = time.monotonic() + timeout
        try:
            while True:
                found = [w for w in backend.workers(timeout_seconds=3600) if w.pid == self.pid]
                if found:
                    return found[0]
                if not self.alive():
                    raise AssertionError(
                        f"the worker exited with {self.process.returncode} before it "
                        f"registered; its log:\n{self.log()}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the worker did not register within {timeout} s; its log:\n{self.log()}"
                    )
                time.sleep(0.05)
        finally:
            backend.close()

    def _url(self) -> str:
        if self.url is None:
            raise ValueError("this worker was started without a URL: pass url=")
        return self.url

    # -- signals ---------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Signal the worker alone (as ``kill PID`` does)."""
        os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Signal the worker and its job processes (as a terminal's Ctrl-C, or the
        OOM killer's and a deploy's SIGKILL of the whole tree)."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """The worker's exit code; fails if it still runs after ``timeout`` seconds."""
        return self.process.wait(timeout=timeout)

    def stop(self, signum: int = SIGTERM, *, timeout: float = 30) -> int:
        """Signal the worker and wait for it to exit; its exit code."""
        self.signal(signum)
        return self.wait(timeout)

    def close(self) -> None:
        """Kill what is left of the worker's group and close the log."""
        if self.alive():
            self.signal_group(SIGKILL)
            self.process.wait(timeout=10)
        else:
            # Job processes of a worker that exited must not outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, SIGKILL)
        self._log.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
