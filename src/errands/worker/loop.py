"""The worker's loop: one thread in the parent process turns every part of the worker.

Each turn it:

1. waits for an outcome from a child, a child exit, a wake-up (notification,
   signal, finished claim or database batch) or a deadline;
2. takes in outcomes, finished claims and batches; ends jobs past their timeout
   or flagged for cancellation (``supervision``);
3. hands waiting jobs to free child slots (``pool``);
4. claims more jobs as soon as there is room for them (``intake``), and starts
   the next database batch when one is due (``batches``);
5. runs the services that are due: heartbeat; schedules, rescue and prune on
   the maintenance tick; the stats line.

Claims and database batches run on two background threads, one of each at a
time, so the children keep getting jobs while the database works, and a claim
never waits for a write. Every other database call waits for both first
(``_guarded``): every step sees the effects of the steps before it, as if all
ran in turn. A failing database call is logged and retried later (``timing.Backoff``);
nothing is lost meanwhile. Every call has a deadline (``database_timeout``): a worker
cut off from its database learns it within that time instead of hanging. One that
could not beat for nearly ``heartbeat_timeout`` may have been declared dead: it
starts none of the jobs it holds and claims nothing until a beat is written, and if
its row was gone it drops the jobs it held that a peer rescued (``_cut_off``, ``beat``).

Shutdown: the first SIGTERM/SIGINT stops claiming, puts back jobs not yet started,
and lets running jobs finish; a second one kills them and records them CANCELLED.
Each step is logged at INFO as it happens (``supervision.ShutdownNotes``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from errands import api, registry, scheduler, telemetry
from errands import settings as settings_module
from errands.backends import Backend
from errands.backends.store import ClaimRoom
from errands.containment import is_own_interrupt
from errands.models import JobProcess, JobResult, Outcome
from errands.settings import Settings
from errands.worker.batches import Batch, Recorder
from errands.worker.heartbeat import Heartbeat
from errands.worker.intake import Claim, ClaimAhead, Intake, split_queue_caps
from errands.worker.pool import Pool, Slot
from errands.worker.prune import Prune, as_retention
from errands.worker.rescue import Rescue
from errands.worker.results import AfterResults
from errands.worker.schedules import Schedules
from errands.worker.stats import StatsLine
from errands.worker.supervision import ShutdownNotes, Supervisor
from errands.worker.timing import Backoff, Every

logger = logging.getLogger("errands")


class Worker:
    """Runs jobs of ``queues`` (all queues when empty) until stopped."""

    def __init__(
        self,
        *,
        queues: Sequence[str] = (),
        config: Settings | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config = config or settings_module.current()
        # Registers jobs for hooks, retries, schedules; stored paths may import only inside these.
        registry.import_job_modules(config.import_modules)
        # Bad schedule entries stop the worker here, before it claims anything.
        entries = scheduler.parse_entries(config.schedule, config.timezone)
        # "mail:4": at most 4 jobs of queue mail in this worker's hands at once.
        self.queues, self.queue_caps = split_queue_caps(queues)
        self.backend = backend or api.backend()
        self.backend.bound_calls(seconds=config.database_timeout)
        self.worker_id = uuid.uuid4()
        self.waiting: deque[JobProcess] = deque()  # claimed, not yet handed to a child
        self.pool = Pool(
            size=config.max_processes,
            environ=settings_module.to_environ(config),
            max_jobs_per_child=config.worker_max_jobs_per_process,
            threads=config.worker_threads,
            # Lines jobs print start with the job's class and short id when asked.
            label_output=config.worker_label_output,
        )
        self.backoff = Backoff()
        self._services(config, entries)
        self._jobs_in_hand(config)
        self.stopping = False
        self.stopping_since: float | None = None
        self.aborting = False
        self.drain_timed_out = False
        self.stop_signals: list[int | None] = []  # what asked to stop, in order
        self.notes = ShutdownNotes(
            pool=self.pool, waiting=self.waiting, drain_timeout=config.worker_drain_timeout
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.pool.watch(self._wake_r)
        self._listener: Any = None

    def _services(self, config: Settings, entries: list[scheduler.Entry]) -> None:
        """The background services, and when each runs."""
        backend = self.backend
        self.heartbeat = Heartbeat(backend, self.worker_id, self.queues)
        self.beat_every = Every(config.heartbeat_interval)
        # Without a beat for this long a peer may declare this worker dead any moment.
        self.hold_after = max(
            config.heartbeat_timeout - config.heartbeat_interval, config.heartbeat_interval
        )
        self.holding_back = False
        self.after_results = AfterResults(
            log_jobs=config.log_jobs, beat=self.beat, beat_every=self.beat_every
        )
        self.schedules = Schedules(
            backend,
            entries,
            horizon_seconds=max(2 * config.heartbeat_interval, 60),
            history_seconds=as_retention(config.results_retention).longest(),
        )
        self.rescue = Rescue(
            backend,
            self.worker_id,
            heartbeat_timeout=config.heartbeat_timeout,
            tracked=self._tracked,
            on_aborted=self.after_results.run_aborted_hooks,
        )
        self.prune = Prune.of_process(backend, config.results_retention)
        # Jitter spreads the rescue and pruning work of many workers.
        self.maintenance_every = Every(config.heartbeat_interval, jitter=(0.5, 1.0))
        self.stats = StatsLine(
            backend, self.queues, heartbeat_timeout=config.heartbeat_timeout, state=self._state
        )
        self.stats_every = Every(config.worker_stats_every or float("inf"))

    def _jobs_in_hand(self, config: Settings) -> None:
        """What claims jobs, writes their outcomes and ends the ones children do not."""
        self.recorder = Recorder(
            self.backend,
            self.worker_id,
            aborted_only=self.after_results.aborted_only,
            on_done=self._nudge,
        )
        self.supervisor = Supervisor(
            pool=self.pool, waiting=self.waiting, recorder=self.recorder, on_finished=self._finished
        )
        self.claim_ahead = ClaimAhead(
            fixed=config.worker_max_pending_per_process, threads=config.worker_threads
        )
        self.intake = Intake(
            claim=self._claim_jobs,
            on_done=self._nudge,
            waiting=self.waiting,
            pool=self.pool,
            pacing=self.claim_ahead,
            poll_interval=config.poll_interval,
            schedules=self.schedules,
            backoff=self.backoff,
            queue_caps=self.queue_caps,
            queue_limits=dict(config.queue_limits),
        )

    @property
    def capacity(self) -> int:
        """Jobs in hand (running or waiting) at most (see ``intake``)."""
        return self.intake.capacity

    @property
    def completed(self) -> int:
        """Outcomes written so far."""
        return self.recorder.completed

    # -- lifecycle ------------------------------------------------------------
    def run(self) -> int:
        """Run until shut down by a signal or ``stop()``; returns the process exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda received, _: self.stop(received))
        self.start()
        try:
            while not self.finished():
                self.turn()
        finally:
            self.shut_down()
        return 0

    def start(self) -> None:
        """Register the heartbeat, start listening and spawn the children."""
        self.heartbeat.register()
        self._guarded(self._start_schedules)
        if self.config.notifications:
            self._listener = self.backend.listen(on_wake=self.wake)
        self.pool.fill()
        telemetry.register_worker_gauges(self)
        now = time.monotonic()
        self.beat_every.restart(now)
        self.stats_every.restart(now)

    def _start_schedules(self) -> None:
        self.schedules.run_once(starting=True)

    def finished(self) -> bool:
        """True once a stopping worker has nothing left running or unwritten."""
        if not self.stopping:
            return False
        return not (
            self.pool.busy()
            or self.recorder.outcomes
            or self.waiting
            or self.recorder.busy
            or self.intake.claimer.busy
        )

    def wake(self) -> None:
        """Ask the loop to look for work now (safe from any thread or signal handler)."""
        self.intake.woken()
        self._nudge()

    def _nudge(self) -> None:
        """End the loop's current wait (safe from any thread or signal handler)."""
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the loop anyway
            os.write(self._wake_w, b"x")

    def stop(self, signum: int | None = None) -> None:
        """Begin a graceful shutdown; a second call aborts running jobs.

        ``signum``: the signal that asked for it, named in the log (safe from a
        signal handler: the loop logs, on its next turn)."""
        if len(self.stop_signals) < 2:
            self.stop_signals.append(signum)
        if self.stopping:
            self.aborting = True
        else:
            self.stopping_since = time.monotonic()
        self.stopping = True
        self.wake()

    def shut_down(self) -> None:
        """Put back what did not start, cancel what runs, write everything, deregister."""
        try:
            if self.stopping:
                self._announce_stop()  # a signal after the last turn
            self.stopping = True
            self._settle()
            self.supervisor.release_waiting(self.backend)
            if self.pool.busy():
                self._abort_running()
                self.supervisor.release_waiting(self.backend)
            self.flush()
            self.pool.close()
            self.heartbeat.deregister()
        finally:
            self.recorder.close()
            self.intake.close()
            if self._listener is not None:
                self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- one turn of the loop ------------------------------------------------
    def turn(self) -> None:
        """One pass of the loop (public so that tests and the demo can drive a worker)."""
        events = self.pool.wait(self._wait_timeout())
        if events.woken:
            self._drain_wake_pipe()
        self._apply_batch(self.recorder.collect())
        self.intake.collect()
        for slot, outcome in events.finished:
            self._finished(slot, outcome)
        self.supervisor.returned(events.recalled)
        for child in events.exited:
            self.supervisor.child_exited(child)
        if self.stopping:
            self._announce_stop()
            self._guarded(self._release_waiting)
            self._abort_if_drain_timed_out()
        if self.aborting:
            self._abort_running()
        self.supervisor.watch(time.monotonic(), stopping=self.stopping)
        if self.stopping:
            self.notes.progress()
        self.pool.retire_exhausted()
        if not self.stopping:
            self.pool.fill()
        self._start_database_work()
        self._maintain()

    def _start_database_work(self) -> None:
        now = time.monotonic()
        if not self.stopping and not self._cut_off(now):
            self.intake.start(now)  # first: the claim's round trip overlaps the dispatch
            if self.waiting:
                self.pool.dispatch(self.waiting)
        if not self.backoff.waiting(now):
            self.recorder.start(now, holding=self._holding, stopping=self.stopping)

    def _cut_off(self, now: float) -> bool:
        """Whether this worker went without a beat for so long that a peer may have
        declared it dead and rescued its jobs: then it starts none of the jobs it holds
        (they may be running elsewhere already) and claims nothing, until a beat is
        written (``beat``). Said once in the log each way."""
        silent = now - self.heartbeat.beat_at
        cut_off = silent >= self.hold_after
        if cut_off and not self.holding_back:
            for child in self.pool.children:  # jobs queued in a child come back to wait
                if child.queued():
                    self.pool.recall(child)
            logger.error(
                f"no heartbeat written for {silent:.1f} s: a peer may declare this worker "
                f"dead; starting none of the {len(self.waiting)} jobs it holds and claiming "
                "nothing until the database answers",
                extra={"silent_seconds": round(silent, 1), "held": len(self.waiting)},
            )
        elif not cut_off and self.holding_back:
            logger.warning("heartbeat written again; starting and claiming jobs again")
        self.holding_back = cut_off
        return cut_off

    def _holding(self) -> bool:
        return bool(self.pool.busy() or self.waiting)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self.beat_every.next_at, self.stats_every.next_at]
        if not self.stopping:
            deadlines += self.intake.next_look()
        write_at = self.recorder.write_deadline()
        if write_at is not None:
            deadlines.append(max(write_at, self.backoff.retry_at))
        running = self.pool.busy()
        if running or self.waiting:
            deadlines.append(self.recorder.cancel_check_at)
        deadlines += self.supervisor.deadlines(running)
        return max(min(deadlines) - now, 0.0)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _abort_if_drain_timed_out(self) -> None:
        limit = self.config.worker_drain_timeout
        if limit is None or self.stopping_since is None or self.aborting:
            return
        if time.monotonic() - self.stopping_since >= limit:
            self.aborting = self.drain_timed_out = True

    def _announce_stop(self) -> None:
        """Log, once, what the first stop does to the jobs in hand."""
        if not self.notes.announced:
            self._settle()  # a claim in flight: its jobs go back too
            self.supervisor.notice_starts()
            self.notes.stopping(self.stop_signals[0] if self.stop_signals else None)

    def _abort_running(self) -> None:
        """Kill the running jobs (recorded CANCELLED) and log, once, which they were."""
        cancelled = self.supervisor.abort_running()
        if self.drain_timed_out:
            self.notes.cancelled(cancelled, "drain timeout")
        elif self.aborting:
            signum = self.stop_signals[1] if len(self.stop_signals) > 1 else None
            self.notes.cancelled(cancelled, ShutdownNotes.again(signum))
        elif cancelled:
            self.notes.cancelled(cancelled, "shutting down")

    def _release_waiting(self) -> None:
        self.supervisor.release_waiting(self.backend)

    def _finished(self, slot: Slot, outcome: Outcome) -> None:
        """A child reported the outcome of the job in ``slot``."""
        self.recorder.forget_start(slot.job.uuid)
        self.supervisor.forget(slot.job.uuid)
        if outcome.started_at is not None and self.claim_ahead.adaptive:
            self.claim_ahead.observe((outcome.ended_at - outcome.started_at).total_seconds())
        # Written at once when it frees a limit's slot or releases a workflow's jobs.
        in_workflow = slot.job.uuid in self.intake.in_workflows
        self.intake.in_workflows.discard(slot.job.uuid)
        self.recorder.record(outcome, urgent=bool(slot.job.limits) or in_workflow)
        self.intake.runner_freed()

    # -- the database --------------------------------------------------------------
    def _guarded(self, operation: Callable[[], object]) -> None:
        """Run a database operation; on failure log it and back off instead of dying.

        The claim and the batch in flight are waited for first, so that the database
        has one caller at a time. Nothing is lost meanwhile: outcomes stay buffered,
        claimed jobs stay claimed, and both are written once the database answers again.
        """
        if self.backoff.waiting(time.monotonic()):
            return
        self._settle()
        if self.backoff.waiting(time.monotonic()):
            return  # the batch just failed
        try:
            operation()
        except BaseException as exc:  # a scheduled job's constructor may raise SystemExit
            if is_own_interrupt(exc):
                raise
            self.backoff.failed(operation.__name__, exc)
        else:
            self.backoff.answered(operation.__name__)

    def _settle(self) -> None:
        """Wait for the claim and the batch in flight, and apply them."""
        self.intake.collect(wait=True)
        self._apply_batch(self.recorder.collect(wait=True))

    def _claim_jobs(self, limit: int, room: ClaimRoom | None = None) -> list[JobProcess]:
        return self.backend.claim(
            worker_id=self.worker_id, queues=self.queues, limit=limit, room=room
        )

    def _claim(self) -> None:
        """Claim now, on this thread (for tests: the loop claims in the background)."""
        self._settle()
        limit = 0 if self.stopping else self.intake.limit(time.monotonic())
        if limit:
            room = self.intake.claim_room()
            self.intake.apply(Claim(limit=limit, room=room, claimed=self._claim_jobs(limit, room)))

    def flush(self) -> None:
        """Write buffered outcomes (and start stamps of jobs still running) now."""
        self._settle()
        if self.recorder.unwritten:
            batch = self.recorder.take(write=True, check_cancel=False)
            self.recorder.run(batch)
            self._apply_batch(batch)
            if batch.error is not None:
                raise batch.error

    def _apply_batch(self, batch: Batch | None) -> None:
        if batch is None:
            return
        self.recorder.settle(batch)
        if batch.results is not None:
            self.after_results.written(batch.results)
        if batch.cancel_flagged:
            self.supervisor.cancel(batch.cancel_flagged)
        if batch.error is not None:
            self.backoff.failed("batch", batch.error)
        else:
            self.backoff.answered("batch")

    # -- services ----------------------------------------------------------------------
    def _maintain(self) -> None:
        now = time.monotonic()
        if self.beat_every.due(now):
            self._guarded(self.beat)
        if not self.stopping and self.maintenance_every.due(now):
            self._guarded(self.run_maintenance)
        if self.stats_every.due(now):
            self.log_stats()

    def beat(self) -> None:
        """Refresh the heartbeat (see ``heartbeat``); if a peer had declared this worker
        dead, drop the jobs it holds that the peer rescued."""
        if not self.heartbeat.run_once():
            self.heartbeat.drop_rescued(self.waiting)

    def run_maintenance(self) -> None:
        """One maintenance tick: enqueue schedules, rescue lost jobs, prune results."""
        self.schedules.run_once()
        self.rescue.run_once()
        self.prune.run_once()

    def run_aborted_hooks(self, results: list[JobResult]) -> None:
        """Run ``on_aborted`` for each result, heartbeating between hooks when a beat is
        due: a long list of slow hooks must not make this worker look dead."""
        self.after_results.run_aborted_hooks(results)

    def _tracked(self) -> set[uuid.UUID]:
        """Every job this worker holds (called with no claim or batch in flight)."""
        tracked = {j.uuid for j in self.waiting}
        tracked |= {slot.job.uuid for slot in self.pool.busy()}
        return tracked | {o.process_uuid for o in self.recorder.outcomes}

    def log_stats(self) -> None:
        """Log this worker's state, its queues' depth and its throughput since the last line."""
        self.stats.run_once()

    def _state(self) -> dict[str, int]:
        return {
            "processes": len(self.pool.children),
            "running": len(self.pool.busy()),
            "waiting": len(self.waiting),
            "completed": self.completed,
        }
