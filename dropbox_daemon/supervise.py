"""The worker side of each pass: dispatch the next job to an idle worker, read what the
worker says about it, and watch over the worker itself (death, the job's time limit, a
hang, a cancel it does not honour), starting a fresh one when it is gone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from dropbox_daemon.errors import IllegalTransition
from dropbox_daemon.store import RUNNING, StoreUnavailable

if TYPE_CHECKING:
    from dropbox_daemon.daemon import Daemon

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
    """The daemon's worker side (its state is the daemon's; see daemon.py)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.last_served: dict[str, float] = {}  # inbox -> when it last had a job started
        self.early_deaths = 0  # workers in a row that died before they were ready
        self.restart_at: float | None = None  # monotonic; a start held back by restart_delay

    def dispatch(self, now: float) -> None:
        assert self.d.store is not None
        if self.d.flags.stop or self.d.current is not None or self.d.worker.state != "idle":
            return
        if not self.d.store.shared:
            self.d.claiming.claim_outranking(now)
        job = self.d.store.take_next(
            self.d.farm.instance, self.last_served, host=self.d.cfg.daemon.host
        )
        if job is None:
            return
        lost = self.d.farm.lost(job)
        if lost:
            self.d.outcomes.forget(job, lost)
            return
        if job.config_hash and job.config_hash != self.d.intake.config_hash:  # type: ignore[union-attr]
            self.d.store.log(
                job,
                f"config changed since the job was queued: {job.config_hash} -> {self.d.intake.config_hash}",
            )  # type: ignore[union-attr]
            job = self.d.store.update(job.job_id, config_hash=self.d.intake.config_hash) or job  # type: ignore[union-attr]
        self.last_served[job.inbox] = now
        spec = job.model_dump()
        spec["outbox_dir"] = str(self.d.outbox.job_dir(job.job_id))
        if not self.d.worker.send({"type": "job", "job": spec}):
            self.d.outcomes.requeue(
                job.job_id, "the worker could not be reached", count_attempt=False
            )
            return
        self.d.worker.state = "busy"
        mono = time.monotonic()
        self.d.current = Current(job.job_id, mono, mono, generation=job.generation)
        logger.bind(job_id=job.job_id, trace_id=job.trace_id).info(
            "job {} started (engine {}, inbox {}, attempt {})",
            job.job_id,
            job.engine,
            job.inbox,
            job.attempts,
        )

    def handle_worker(self, now: float, dispatching: bool = True) -> None:
        for msg in self.d.worker.poll():
            self.on_message(msg, now)
        if self.d.worker.state in ("starting", "idle", "busy") and not self.d.worker.alive():
            if self.d.worker.state == "starting":
                self.early_deaths += 1
            why = self.d.worker.exit_description()
            # its ffmpeg children still hold the output pipe: end them so that the relay reads
            # the worker's last words to the end (a crash report) before the job is recorded
            self.d.worker.kill()
            tail = self.d.worker.output_tail()
            logger.error(
                "worker (pid {}) died: {}; its last output: {}",
                self.d.worker.pid,
                why,
                " | ".join(tail) or "(none)",
            )
            self.d.worker.state = "dead"
            if self.d.current is not None:
                self.d.outcomes.requeue(
                    self.d.current.job_id,
                    f"the worker process {why}",
                    count_attempt=True,
                    output=tail,
                )
        cur = self.d.current
        if cur is not None:
            limit = self.d.cfg.daemon.job_timeout_seconds
            mono = time.monotonic()
            if mono - cur.started > limit:
                self.kill_worker_for(cur.job_id, f"the job passed its time limit of {limit:.0f} s")
            elif mono - cur.last_heard > self.d.cfg.daemon.hang_seconds:
                self.kill_worker_for(
                    cur.job_id,
                    f"the worker sent nothing for {self.d.cfg.daemon.hang_seconds:.0f} s (hung)",
                )
            elif cur.cancel_sent_at is not None and mono - cur.cancel_sent_at > CANCEL_GRACE:
                self.d.worker.kill()
                self.d.worker.state = "dead"
                self.d.current = None
                self.d.outcomes.finish_cancel(cur.job_id, "the worker was killed to stop it")
        if self.d.worker.state in ("dead", "stopped", "restarting") and not self.d.flags.stop:
            mono = time.monotonic()
            if self.restart_at is None:
                delay = restart_delay(self.early_deaths)
                self.restart_at = mono + delay
                if delay:
                    self.d.worker.state = "restarting"
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
            self.d.worker.restarts += 1
            self.d.metrics.worker_restarts.inc()
            self.d.worker.kill()
            self.d.worker.start()

    def kill_worker_for(self, job_id: str, why: str) -> None:
        logger.error("job {}: {}; killing the worker (pid {})", job_id, why, self.d.worker.pid)
        self.d.worker.kill()
        self.d.worker.state = "dead"
        self.d.outcomes.requeue(job_id, why, count_attempt=True, output=self.d.worker.output_tail())

    def on_message(self, msg: dict[str, Any], now: float) -> None:
        assert self.d.store is not None
        kind = msg["type"]
        if msg.get("worker_pid") != self.d.worker.pid:
            return
        if kind == "ready":
            self.early_deaths = 0
            self.d.worker.state = "idle" if self.d.current is None else "busy"
            self.d.worker.info = msg
            logger.info("worker ready (pid {}, device {})", msg["pid"], msg["device"])
            if not self.d.view.ready:
                self.d.view.ready = True
                self.d.notifier.ready(
                    f"ready: {len(self.d.cfg.inbox)} inbox(es) watched, worker on {msg['device']}"
                )
            return
        cur = self.d.current
        job_id = msg.get("job_id")
        if cur is None or job_id != cur.job_id:
            return  # a late message about a job already settled
        cur.last_heard = time.monotonic()
        try:
            if kind == "stage":
                self.d.store.transition(job_id, msg["stage"], expect=RUNNING, fence=cur.generation)
            elif kind == "progress":
                if cur.last_heard - cur.last_written >= PROGRESS_WRITE_EVERY:
                    cur.last_written = cur.last_heard
                    self.d.store.update(
                        job_id, progress=round(msg["progress"], 4), fence=cur.generation
                    )
            elif kind == "inputs":
                self.d.store.update(job_id, inputs=msg["inputs"], fence=cur.generation)
            elif kind == "loads":
                self.d.worker.info = {**self.d.worker.info, "loads": msg["loads"]}
            elif kind == "log":
                job = self.d.store.get(job_id)
                if job is not None and job.generation == cur.generation:
                    self.d.store.log(job, msg["message"])
            elif kind == "result":
                self.d.current = None
                self.d.worker.state = "idle"
                msg["generation"] = cur.generation
                self.d.outcomes.record(job_id, msg)
        except IllegalTransition as e:
            logger.warning("job {}: ignored worker message {}: {}", job_id, kind, e)
        except StoreUnavailable as e:
            self.d.on_store_down(e)  # a lost stage or progress is caught up with the result

    def handle_cancels(self, now: float) -> None:
        assert self.d.store is not None
        cur = self.d.current
        if cur is None or cur.cancel_sent_at is not None:
            return
        job = self.d.store.get(cur.job_id)
        if job is not None and job.cancel_requested:
            self.d.worker.send({"type": "cancel", "job_id": cur.job_id})
            cur.cancel_sent_at = time.monotonic()
            self.d.store.log(job, "cancel requested; stopping the render")
