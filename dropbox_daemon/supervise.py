"""The worker side of each pass: dispatch the next job to an idle worker, read what the
worker says about it, and watch over the worker itself (death, the job's time limit, a
hang, a cancel it does not honour), starting a fresh one when it is gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from dropbox_daemon import protocol
from dropbox_daemon.coordination import Coordination
from dropbox_daemon.errors import ConfigError, IllegalTransition
from dropbox_daemon.intake import Intake
from dropbox_daemon.loop import Loop
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.outcomes import Outcomes
from dropbox_daemon.store import RUNNING, Job, Store, StoreUnavailable

if TYPE_CHECKING:
    from dropbox_daemon.worker import WorkerHandle

CANCEL_GRACE = 1.5  # seconds a worker gets to stop a cancelled job before it is killed
MAX_RESTART_DELAY = 60.0  # seconds, for a worker that keeps dying before it is ready


def restart_delay(early_deaths: int) -> float:
    """Seconds before the next worker start: none after a worker that had been ready (a crash
    mid-job); 1, 2, 4, ... up to MAX_RESTART_DELAY after each that died before it was ready
    in a row (a CUDA init error, a kernel image for another GPU, an out-of-memory while
    loading), so a host that cannot start one is not spun at full speed."""
    return 0.0 if early_deaths <= 0 else min(MAX_RESTART_DELAY, 2.0 ** (early_deaths - 1))


PROGRESS_WRITE_EVERY = 1.0  # seconds between task.json progress rewrites


@dataclass
class Current:
    """The job the worker has now."""

    job_id: str
    started: float  # these four on the monotonic clock: a clock step neither kills a
    last_heard: float  # healthy render nor hides a hung one
    generation: int = 0
    cancel_sent_at: float | None = None
    last_written: float = 0.0


class Supervisor:
    """The daemon's worker side. It alone writes `current` (the job the worker has); the
    worker handle writes the worker's state, told by this part."""

    def __init__(
        self,
        loop: Loop,
        store: Store,
        worker: WorkerHandle,
        *,
        outbox: Outbox,
        farm: Coordination,
        intake: Intake,
        outcomes: Outcomes,
        notifier: Notifier,
        metrics: Metrics,
        claim_outranking: Callable[[float], None],
    ) -> None:
        self.loop, self.cfg, self.store, self.worker = loop, loop.cfg, store, worker
        self.outbox, self.farm, self.intake, self.outcomes = outbox, farm, intake, outcomes
        self.notifier, self.metrics = notifier, metrics
        self.claim_outranking = claim_outranking  # a drop that outranks the local queue
        self.current: Current | None = None
        self.last_served: dict[str, float] = {}  # inbox -> when it last had a job started
        self.early_deaths = 0  # workers in a row that died before they were ready
        self.restart_at: float | None = None  # monotonic; a start held back by restart_delay

    def busy(self) -> bool:
        return self.current is not None

    def give_up(self, job: Job, why: str) -> None:
        """A peer took the running job over while this daemon was silent: its worker is
        stopped and the job dropped here (the peer writes what follows)."""
        self.worker.put_down()
        self.current = None
        self.outcomes.forget(job, why)

    def abandon(self, why: str) -> None:
        """Stopping with the job still running: the worker killed, the job re-queued."""
        if self.current is None:
            return
        job_id, self.current = self.current.job_id, None
        self.worker.kill()
        self.outcomes.requeue(job_id, why, count_attempt=False)

    def dispatch(self, now: float) -> None:
        if self.loop.flags.stop or self.current is not None or self.worker.state != "idle":
            return
        if self.farm.own_store:  # a drop that outranks its own queue is claimed first
            self.claim_outranking(now)
        job = self.store.take_next(self.farm.instance, self.last_served, host=self.cfg.daemon.host)
        if job is None:
            return
        lost = self.farm.lost(job)
        if lost:
            self.outcomes.forget(job, lost)
            return
        if job.config_hash and job.config_hash != self.intake.config_hash:
            self.store.log(
                job,
                f"config changed since the job was queued: {job.config_hash} -> {self.intake.config_hash}",
            )
            job = self.store.update(job.job_id, config_hash=self.intake.config_hash) or job
        self.last_served[job.inbox] = now
        order = protocol.JobOrder(job=self.spec_of(job))
        if not self.worker.send(order):
            self.outcomes.requeue(
                job.job_id, "the worker could not be reached", count_attempt=False
            )
            return
        self.worker.took_job()
        mono = time.monotonic()
        self.current = Current(job.job_id, mono, mono, generation=job.generation)
        logger.bind(job_id=job.job_id, trace_id=job.trace_id).info(
            "job {} started (engine {}, inbox {}, attempt {})",
            job.job_id,
            job.engine,
            job.inbox,
            job.attempts,
        )

    def spec_of(self, job: Job) -> protocol.JobSpec:
        """The job as the worker is told it, its output options resolved here, once."""
        try:
            defaults = self.cfg.inbox_by_name(job.inbox).output.model_dump()
            output = protocol.resolve_output(defaults, job.manifest)
        except ConfigError:  # its inbox left the config: the worker fails it, saying so
            output = None
        return protocol.JobSpec(
            job_id=job.job_id,
            trace_id=job.trace_id,
            inbox=job.inbox,
            engine=job.engine,
            claim_dir=job.claim_dir,
            outbox_dir=str(self.outbox.job_dir(job.job_id)),
            manifest=job.manifest or {},
            output=output,
        )

    def handle_worker(self, now: float, dispatching: bool = True) -> None:
        """The worker's messages, then its death, the job's limits, and a start when due."""
        for msg in self.worker.poll():
            self.on_message(msg, now)
        if self.worker.state in ("starting", "idle", "busy") and not self.worker.alive():
            self._died()
        self._watch_current()
        if self.worker.state in ("dead", "stopped", "restarting") and not self.loop.flags.stop:
            self._start_when_due()

    def _died(self) -> None:
        """The worker is gone by itself: said with its last words, its job re-queued."""
        if self.worker.state == "starting":
            self.early_deaths += 1
        why = self.worker.exit_description()
        # its ffmpeg children still hold the output pipe: end them so that the relay reads
        # the worker's last words to the end (a crash report) before the job is recorded
        self.worker.put_down()
        tail = self.worker.output_tail()
        logger.error(
            "worker (pid {}) died: {}; its last output: {}",
            self.worker.pid,
            why,
            " | ".join(tail) or "(none)",
        )
        if self.current is not None:
            job_id, self.current = self.current.job_id, None
            self.outcomes.requeue(
                job_id,
                f"the worker process {why}",
                count_attempt=True,
                output=tail,
            )

    def _watch_current(self) -> None:
        """The running job's time limit, a hung worker, a cancel it does not honour."""
        cur = self.current
        if cur is not None:
            limit = self.cfg.daemon.job_timeout_seconds
            mono = time.monotonic()
            if mono - cur.started > limit:
                self.kill_worker_for(cur.job_id, f"the job passed its time limit of {limit:.0f} s")
            elif mono - cur.last_heard > self.cfg.daemon.hang_seconds:
                self.kill_worker_for(
                    cur.job_id,
                    f"the worker sent nothing for {self.cfg.daemon.hang_seconds:.0f} s (hung)",
                )
            elif cur.cancel_sent_at is not None and mono - cur.cancel_sent_at > CANCEL_GRACE:
                self.worker.put_down()
                self.current = None
                self.outcomes.finish_cancel(cur.job_id, "the worker was killed to stop it")

    def _start_when_due(self) -> None:
        """A fresh worker: at once after one that had been ready, with back-off after each
        that died before it was (restart_delay)."""
        mono = time.monotonic()
        if self.restart_at is None:
            delay = restart_delay(self.early_deaths)
            self.restart_at = mono + delay
            if delay:
                self.worker.hold_back()
                logger.warning(
                    "worker died before it was ready ({} in a row): the next one starts in "
                    "{:.0f} s; its last output above says why (a CUDA error, the GPU's "
                    "memory, the model file); `dropbox-daemon doctor` checks the set-up",
                    self.early_deaths,
                    delay,
                )
        if mono < self.restart_at:
            return
        self.restart_at = None
        self.metrics.worker_restarts.inc()
        self.worker.restart()

    def kill_worker_for(self, job_id: str, why: str) -> None:
        logger.error("job {}: {}; killing the worker (pid {})", job_id, why, self.worker.pid)
        self.worker.put_down()
        if self.current is not None and self.current.job_id == job_id:
            self.current = None
        self.outcomes.requeue(job_id, why, count_attempt=True, output=self.worker.output_tail())

    def on_message(self, msg: protocol.FromWorker, now: float) -> None:
        if msg.worker_pid != self.worker.pid:
            return
        if isinstance(msg, protocol.Ready):
            self.early_deaths = 0
            self.worker.on_ready(msg.model_dump(exclude={"worker_pid"}), busy=self.busy())
            logger.info("worker ready (pid {}, device {})", msg.pid, msg.device)
            if not self.loop.view.ready:
                self.loop.view.ready = True
                self.notifier.ready(
                    f"ready: {len(self.cfg.inbox)} inbox(es) watched, worker on {msg.device}"
                )
            return
        cur = self.current
        if cur is None or msg.job_id != cur.job_id:
            return  # a late message about a job already settled
        cur.last_heard = time.monotonic()
        job_id = msg.job_id
        try:
            if isinstance(msg, protocol.Stage):
                self.store.transition(job_id, msg.stage, expect=RUNNING, fence=cur.generation)
            elif isinstance(msg, protocol.Progress):
                if cur.last_heard - cur.last_written >= PROGRESS_WRITE_EVERY:
                    cur.last_written = cur.last_heard
                    self.store.update(job_id, progress=round(msg.progress, 4), fence=cur.generation)
            elif isinstance(msg, protocol.Inputs):
                self.store.update(job_id, inputs=msg.inputs, fence=cur.generation)
            elif isinstance(msg, protocol.Loads):
                self.worker.on_loads(msg.loads)
            elif isinstance(msg, protocol.Log):
                job = self.store.get(job_id)
                if job is not None and job.generation == cur.generation:
                    self.store.log(job, msg.message)
            elif isinstance(msg, protocol.Result):
                self.current = None
                self.worker.job_ended()
                self.outcomes.record(job_id, msg, cur.generation)
        except IllegalTransition as e:
            logger.warning("job {}: ignored worker message {}: {}", job_id, msg.type, e)
        except StoreUnavailable as e:
            self.loop.on_store_down(e)  # a lost stage or progress is caught up with the result

    def handle_cancels(self, now: float) -> None:
        cur = self.current
        if cur is None or cur.cancel_sent_at is not None:
            return
        job = self.store.get(cur.job_id)
        if job is not None and job.cancel_requested:
            self.worker.send(protocol.Cancel(job_id=cur.job_id))
            cur.cancel_sent_at = time.monotonic()
            self.store.log(job, "cancel requested; stopping the render")
