"""errands and pgqueuer behind one interface, for ``bench/side_by_side.py``.

Each system owns a fresh database on the server, fills its queue through its own
API, starts its worker through its own CLI (``errands worker``, ``pgq run``) as a
user would, and reports its completions from its own records: errands' results
table, pgqueuer's log table (rows of status ``successful``). Both tables take
``now()`` of the completing transaction as the write time, on the same server
clock as the benchmark's ``time.time()``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import bench_jobs  # noqa: E402
from databases import PostgresBenchDatabase  # noqa: E402

import errands  # noqa: E402

BIN_DIR = Path(sys.executable).parent
#: where every benchmark process keeps its bytecode (set by side_by_side.py). A
#: user's installed packages have theirs compiled at install time; a process that
#: may not write bytecode (PYTHONDONTWRITEBYTECODE) compiles an editable install's
#: every module again at each start, which is no figure of the library's own.
PYCACHE_PREFIX: list[str] = []


def process_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a spawned worker or client: none of ours (ERRANDS_*, PG*)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ERRANDS_", "PG")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    if PYCACHE_PREFIX:
        env["PYTHONPYCACHEPREFIX"] = PYCACHE_PREFIX[0]
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), str(PEERS_DIR)])
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Completions:
    """Completions recorded so far: count, the first write's rows, first and last write."""

    count: int
    first_count: int
    first: float
    last: float


class Workers:
    """Worker processes started together (one per ``pgq run``; one ``errands worker``)."""

    def __init__(self, commands: list[list[str]], env: Mapping[str, str], log: Path) -> None:
        self.log: TextIO = log.open("a")
        self.spawned = time.time()  # the clock of every whole-drain figure starts here
        self.processes = [
            subprocess.Popen(
                command,
                env=dict(env),
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for command in commands
        ]

    def check_alive(self) -> None:
        """Raise, with the log's tail, if a worker exited before it was stopped."""
        if any(p.poll() is not None for p in self.processes):
            self.log.flush()
            tail = Path(self.log.name).read_text()[-2000:]
            raise RuntimeError(f"a worker exited early; its log ends:\n{tail}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self, timeout: float = 30) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # no child may outlive the run
        self.log.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class System(abc.ABC):
    name: ClassVar[str]

    def __init__(self, server_url: str, log_dir: Path) -> None:
        self.server_url = server_url
        self.db_name = f"errands_bench_{self.name}_{uuid.uuid4().hex[:8]}"
        self.url = urlunsplit(urlsplit(server_url)._replace(path=f"/{self.db_name}"))
        self.log_dir = log_dir

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(statement)

    def _execute(self, *statements: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def _row(self, query: str) -> tuple[Any, ...]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(query.encode()).fetchone()
        assert row is not None
        return tuple(row)

    def create(self) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
        self.install()

    def drop(self) -> None:
        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name))
        )

    def settle(self) -> None:
        self._execute("VACUUM ANALYZE", "CHECKPOINT")

    def completions(self) -> Completions:
        count, first, last = self._row(self.completions_query)
        if not count:
            return Completions(0, 0, float("nan"), float("nan"))
        (first_count,) = self._row(self.first_write_query)
        return Completions(int(count), int(first_count), float(first), float(last))

    def spawn(self, tuned: bool, extra_env: Mapping[str, str] | None = None) -> Workers:
        env = process_environment(self.environment())
        env.update(extra_env or {})
        log = self.log_dir / f"{self.db_name}.log"
        return Workers(self.commands(tuned), env, log)

    completions_query: ClassVar[str]
    first_write_query: ClassVar[str]

    @abc.abstractmethod
    def install(self) -> None: ...

    @abc.abstractmethod
    def empty(self) -> None: ...

    @abc.abstractmethod
    def fill(self, count: int) -> None: ...

    @abc.abstractmethod
    def environment(self) -> dict[str, str]: ...

    @abc.abstractmethod
    def commands(self, tuned: bool) -> list[list[str]]: ...

    @abc.abstractmethod
    def pickup_latencies(self, samples: int, pause: tuple[float, float]) -> list[float]:
        """Seconds from an enqueue's commit to the job's start on an idle default worker."""


# -- errands ------------------------------------------------------------------------------

ERRANDS_TUNED = {
    "--max-processes": "2",
    "--threads": "2",
    "--max-pending-per-process": "500",
}


class ErrandsSystem(System):
    name = "errands"
    completions_query = (
        "SELECT count(*), extract(epoch FROM min(created_at))::float8,"
        " extract(epoch FROM max(created_at))::float8 FROM errands_result"
        " WHERE status = 'SUCCESSFUL'"
    )
    first_write_query = (
        "SELECT count(*) FROM errands_result WHERE status = 'SUCCESSFUL'"
        " AND created_at = (SELECT min(created_at) FROM errands_result WHERE status = 'SUCCESSFUL')"
    )

    def __init__(self, server_url: str, log_dir: Path) -> None:
        super().__init__(server_url, log_dir)
        self.db = PostgresBenchDatabase(server_url)
        self.db.name, self.db.url = self.db_name, self.url

    def install(self) -> None:
        self.db.migrate()
        errands.configure(database_url=self.url)

    def empty(self) -> None:
        self.db.empty()

    def fill(self, count: int) -> None:
        errands.configure(database_url=self.url)
        errands.enqueue_many([bench_jobs.Noop() for _ in range(count)])

    def environment(self) -> dict[str, str]:
        return {"ERRANDS_DATABASE_URL": self.url}

    def commands(self, tuned: bool) -> list[list[str]]:
        command = [str(BIN_DIR / "errands"), "worker", "--import", "bench_jobs"]
        if tuned:
            command += [part for pair in ERRANDS_TUNED.items() for part in pair]
        return [command]

    def pickup_latencies(self, samples: int, pause: tuple[float, float]) -> list[float]:
        import random

        errands.configure(database_url=self.url)
        latencies: list[float] = []
        with self.spawn(tuned=False):
            self._run_one(timeout=60)  # warm-up: children spawned, modules imported
            for _ in range(samples):
                time.sleep(random.uniform(*pause))
                latencies.append(self._run_one(timeout=10))
        return latencies

    def _run_one(self, timeout: float) -> float:
        request = bench_jobs.Noop().run_in_worker()
        committed = time.time()
        assert request is not None
        deadline = time.monotonic() + timeout
        while (started := self.db.started_at(request.uuid)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("errands: a job did not start")
            time.sleep(0.002)
        return started - committed


# -- pgqueuer -----------------------------------------------------------------------------

PGQ_DEFAULT_PROCESSES, PGQ_TUNED_PROCESSES, PGQ_TUNED_BATCH = 1, 2, 100


class PgqueuerSystem(System):
    name = "pgqueuer"
    completions_query = (
        "SELECT count(*), extract(epoch FROM min(created))::float8,"
        " extract(epoch FROM max(created))::float8 FROM pgqueuer_log"
        " WHERE status = 'successful'"
    )
    first_write_query = (
        "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
        " AND created = (SELECT min(created) FROM pgqueuer_log WHERE status = 'successful')"
    )

    def _pgq(self, *args: str) -> list[str]:
        return [str(BIN_DIR / "pgq"), "--pg-dsn", self.url, *args]

    def install(self) -> None:
        subprocess.run(self._pgq("install"), check=True, capture_output=True)

    def empty(self) -> None:
        self._execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

    def fill(self, count: int) -> None:
        asyncio.run(self._enqueue(["noop"] * count, [None] * count, [0] * count))

    async def _enqueue(self, *lists: list[Any]) -> None:
        import asyncpg  # type: ignore[import-untyped]
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        connection = await asyncpg.connect(self.url)
        try:
            await Queries(AsyncpgDriver(connection)).enqueue(*lists)
        finally:
            await connection.close()

    def environment(self) -> dict[str, str]:
        return {"BENCH_PGQ_DSN": self.url}

    def commands(self, tuned: bool) -> list[list[str]]:
        command = self._pgq("run", "pgqueuer_app:create")
        if tuned:
            return [[*command, "--batch-size", str(PGQ_TUNED_BATCH)]] * PGQ_TUNED_PROCESSES
        return [command] * PGQ_DEFAULT_PROCESSES

    def pickup_latencies(self, samples: int, pause: tuple[float, float]) -> list[float]:
        starts = self.log_dir / f"{self.db_name}.starts"
        starts.write_text("")
        with self.spawn(tuned=False, extra_env={"BENCH_PGQ_STARTS": str(starts)}):
            return asyncio.run(self._pickup(starts, samples, pause))

    async def _pickup(self, starts: Path, samples: int, pause: tuple[float, float]) -> list[float]:
        import random

        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        connection = await asyncpg.connect(self.url)
        queries = Queries(AsyncpgDriver(connection))
        seen: dict[int, float] = {}

        async def run_one(timeout: float) -> float:
            (job_id,) = await queries.enqueue("noop", None)
            committed = time.time()
            deadline = time.monotonic() + timeout
            while job_id not in seen:
                if time.monotonic() > deadline:
                    raise TimeoutError("pgqueuer: a job did not start")
                await asyncio.sleep(0.002)
                for line in starts.read_text().splitlines():
                    key, value = line.split()
                    seen[int(key)] = float(value)
            return seen[job_id] - committed

        try:
            await run_one(timeout=60)  # warm-up
            latencies = []
            for _ in range(samples):
                await asyncio.sleep(random.uniform(*pause))
                latencies.append(await run_one(timeout=10))
            return latencies
        finally:
            await connection.close()


SYSTEMS: dict[str, type[System]] = {"errands": ErrandsSystem, "pgqueuer": PgqueuerSystem}
