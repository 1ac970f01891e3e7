"""The daemon's lifecycle: start, the main loop, signals, graceful stop.

One thread does all the work in loop_once(): watcher hints and rescans,
settling and claiming drops, feeding the worker one job at a time, and
supervising it. Signal handlers only set flags; the loop acts on them.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from dropbox_daemon import drops, health
from dropbox_daemon.callbacks import Deliverer
from dropbox_daemon.config import Config, InboxConfig
from dropbox_daemon.drops import candidate_for
from dropbox_daemon.errors import ConfigError, IllegalTransition
from dropbox_daemon.farm import Farm, best, prevalidate
from dropbox_daemon.intake import Intake
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.scheduler import Scheduler
from dropbox_daemon.store import RUNNING, Job, Store, StoreUnavailable, open_store
from dropbox_daemon.watcher import Watcher
from dropbox_daemon.web import Web

CANCEL_GRACE = 1.5  # seconds a worker gets to stop a cancelled job before it is killed
PROGRESS_WRITE_EVERY = 1.0  # seconds between task.json progress rewrites


@dataclass
class Current:
    """The job the worker has now."""

    job_id: str
    started: float
    last_heard: float
    generation: int = 0
    cancel_sent_at: float | None = None
    last_written: float = 0.0


@dataclass
class Pending:
    candidate: drops.Candidate
    inbox: InboxConfig
    fast: bool = False


@dataclass
class Flags:
    stop: bool = False
    immediate: bool = False
    signals: list[int] = field(default_factory=list)


class Daemon:
    """Owns the store, the watcher and the worker; run() is the service."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.outbox = Outbox(cfg.daemon.outbox)
        self.store: Store | None = None
        self.intake: Intake | None = None
        self.wake = threading.Event()
        self.watcher = Watcher(cfg.inbox, cfg.daemon.rescan_seconds, wake=self.wake.set)
        from dropbox_daemon.worker import WorkerHandle

        self.worker = WorkerHandle(cfg, wake=self.wake.set)
        self.settlers = {i.name: drops.Settler(i.settle_seconds) for i in cfg.inbox}
        self.farm = Farm(cfg)
        self.pending: dict[Path, Pending] = {}
        self.retry_claims: list[tuple[InboxConfig, drops.Claim]] = []
        self.unrecorded: list[tuple[str, dict[str, Any]]] = []  # results the database refused
        self.current: Current | None = None
        self.store_down: str | None = None  # why the store failed, while it does
        self.last_served: dict[str, float] = {}
        self.next_rescan = 0.0
        self.flags = Flags()
        self.view = health.DaemonView()
        self.metrics = health.Metrics(cfg.instance_id)
        self.notifier = Notifier()
        self.scheduler = Scheduler(cfg, self.view, self.metrics, self.notifier)
        self.deliverer = Deliverer(cfg, on_give_up=self.metrics.callback_failures.inc)
        self.web = Web(cfg, self.view, self.metrics)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, recover, start watching and the worker."""
        d = self.cfg.daemon
        for p in (d.state_dir, d.outbox, self.cfg.daemon_dir):
            p.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir()
        for inbox in self.cfg.inbox:
            drops.claims_root(inbox.path).mkdir(parents=True, exist_ok=True)
        self.store = open_store(self.cfg, self.outbox)
        self.farm.register(time.time(), self.store)
        self.view.instance = self.farm.instance
        self.store.on_change = self._on_change
        self.intake = Intake(self.cfg, self.store, self.outbox)
        self._forget_lost()
        for job in self.store.recover_interrupted():
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                "job {} was running when the daemon stopped: now {} (attempt {} of {})",
                job.job_id,
                job.state,
                job.attempts,
                job.max_attempts,
            )
        self._recover_orphan_claims()
        self.watcher.start()
        self.view.watch_modes = dict(self.watcher.modes)
        self.web.start()
        self.worker.start()
        self._share_view()  # the first heartbeat already names the worker
        self.scheduler.start()
        self.deliverer.start()
        logger.info(
            "dropbox-daemon {} started as instance {}: {} inbox(es), outbox {}, state {}",
            __import__("dropbox_daemon").__version__,
            self.farm.instance,
            len(self.cfg.inbox),
            d.outbox,
            d.state_dir,
        )

    def _lock_state_dir(self) -> None:
        """One daemon per state folder: a second one would run every job twice."""
        import fcntl

        self._lock = open(self.cfg.daemon.state_dir / "daemon.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            other = read_pid(self.cfg)
            raise ConfigError(
                f"another dropbox-daemon (pid {other}) already runs on {self.cfg.daemon.state_dir}",
                hint="stop it first, or give this one its own [daemon] state_dir",
            ) from e
        (self.cfg.daemon.state_dir / PID_FILE).write_text(f"{os.getpid()}\n")

    def install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.flags.signals.append(signum)
            if self.flags.stop:
                self.flags.immediate = True
            self.flags.stop = True
            self.wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """The service: start, loop until a signal, stop gracefully. Returns the exit code."""
        self.install_signals()
        self.start()
        try:
            while not self.flags.stop:
                try:
                    self.loop_once(time.time())
                    self._store_back()
                except StoreUnavailable as e:
                    self._store_down(e)
                    self.wake.wait(1.0)
                except Exception:  # noqa: BLE001 - the service outlives any one bad pass
                    logger.exception(
                        "main loop: unexpected error; the daemon goes on and retries in 1 s"
                    )
                    self.wake.wait(1.0)
                self.wake.wait(self.cfg.daemon.loop_seconds)
                self.wake.clear()
            self.stop()
        finally:
            if self.view.instance:
                self.farm.release()
            self.watcher.stop()
            if self.store is not None:
                self.store.close()
            (self.cfg.daemon.state_dir / PID_FILE).unlink(missing_ok=True)
        return 0

    def stop(self) -> None:
        """Stop taking jobs; let the running one finish within stop_timeout, else re-queue it."""
        self.view.stopping = True
        self.notifier.stopping(
            f"stopping; {'finishing ' + self.current.job_id if self.current else 'idle'}"
        )
        deadline = time.monotonic() + self.cfg.daemon.stop_timeout_seconds
        if self.current is not None:
            logger.info(
                "stopping: waiting up to {:.0f}s for job {} to finish (send SIGTERM again to stop now)",
                self.cfg.daemon.stop_timeout_seconds,
                self.current.job_id,
            )
        while self.current is not None and not self.flags.immediate and time.monotonic() < deadline:
            self._handle_worker(time.time(), dispatching=False)
            self.wake.wait(0.1)
            self.wake.clear()
        if self.current is not None:
            job_id = self.current.job_id
            self.worker.kill()
            self._requeue(job_id, "the daemon was stopped during the job", count_attempt=False)
        self.worker.stop(timeout=5)
        self.scheduler.stop()
        self.deliverer.stop()
        self.web.stop()
        logger.info("dropbox-daemon stopped")

    # -- the loop ---------------------------------------------------------------------
    def loop_once(self, now: float) -> None:
        """One pass: worker messages, hints, rescans, claims, cancels, dispatch."""
        self.view.loop_tick = time.monotonic()
        self._handle_worker(now)
        for hint in self.watcher.drain():
            inbox = self.cfg.inbox_by_name(hint.inbox)
            cand = candidate_for(inbox.path, hint.path)
            if cand is not None:
                p = self.pending.setdefault(cand.manifest, Pending(cand, inbox))
                p.fast = p.fast or hint.renamed
        mono = time.monotonic()
        if self.farm.renew(now, mono, **self._lease_fields()):
            self._check_current_held()
        if now >= self.next_rescan:
            self.next_rescan = now + self.cfg.daemon.rescan_seconds
            if self.store is not None and self.store.stale_outbox:
                self.store.flush_outbox()
            if self.unrecorded:
                self._retry_unrecorded()
            if self.retry_claims:
                self._retry_claims()
            self.watcher.check_inboxes()
            for inbox in self.cfg.inbox:
                for cand in drops.scan(inbox.path):
                    if cand.manifest not in self.farm.ready:
                        self.pending.setdefault(cand.manifest, Pending(cand, inbox))
            self._take_over(mono)
        self._take_settled(now)
        self._handle_cancels(now)
        self._dispatch(now)
        # after the dispatch: the worker starts its next job before the prefetch is refilled
        self._pull(now)
        self._dispatch(now)  # an idle worker with nothing queued: what was just pulled
        self._share_view()

    def _store_down(self, e: StoreUnavailable) -> None:
        if self.store_down is None:
            self.store_down = e.message
            logger.error(
                "store: unreachable ({}); the running job goes on and its result is recorded "
                "once the database is back; no new job starts meanwhile",
                e.message,
            )
        self.view.store_error = e.message

    def _store_back(self) -> None:
        if self.store_down is not None:
            logger.info("store: reachable again after '{}'", self.store_down)
            self.store_down = None
            self.view.store_error = None

    def _on_change(self, job: Job, from_state: str | None) -> None:
        self.metrics.on_change(job, from_state)
        if job.callback_url and job.terminal:
            self.deliverer.wake.set()

    def _share_view(self) -> None:
        v, w = self.view, self.worker
        v.worker_pid, v.worker_state, v.worker_info = w.pid, w.state, w.info
        v.worker_restarts = w.restarts
        v.current_job = self.current.job_id if self.current else None

    def _take_settled(self, now: float) -> None:
        assert self.intake is not None
        for key, p in list(self.pending.items()):
            if not p.candidate.manifest.exists():
                self.pending.pop(key)
                self.settlers[p.inbox.name].forget(p.candidate)
                continue
            if not self.settlers[p.inbox.name].ready(p.candidate, now, fast=p.fast):
                continue
            self.pending.pop(key)
            self.settlers[p.inbox.name].forget(p.candidate)
            ready = prevalidate(p.candidate, p.inbox, self.cfg)
            if ready is None:
                self._claim(p.inbox, p.candidate, now)  # invalid: answered at once
            else:
                self.farm.ready[key] = ready

    def _pull(self, now: float) -> None:
        """Claim valid drops while the worker has room: highest priority, then oldest, first."""
        if not self.farm.ready or self.flags.stop:
            return
        assert self.store is not None
        room = self.farm.capacity(self.store, running=self.current is not None)
        while room > 0 and self.farm.ready:
            r = best(self.farm.ready)
            assert r is not None
            self.farm.ready.pop(r.candidate.manifest)
            if self._claim(r.inbox, r.candidate, now):
                room -= 1

    def _claim(self, inbox: InboxConfig, cand: drops.Candidate, now: float) -> bool:
        """Claim a drop and turn it into a job; False when another daemon was first."""
        assert self.intake is not None
        try:
            cl = drops.claim(inbox.path, cand, self.farm.instance, now, self.cfg.daemon.host)
        except OSError as e:
            logger.error("inbox {}: cannot claim {}: {}; will retry", inbox.name, cand.manifest, e)
            return False
        if cl is None:
            return False  # another daemon took it
        try:
            self.intake.ingest(inbox, cl)
        except StoreUnavailable as e:
            self._store_down(e)
            self.retry_claims.append((inbox, cl))  # its files wait in the claim
        except Exception:  # noqa: BLE001 - one bad drop must not stop the daemon
            logger.exception(
                "inbox {}: taking drop {} failed; its files are kept in {} and it is tried "
                "again at the next rescan",
                inbox.name,
                cand.manifest.name,
                cl.dir,
            )
            self.retry_claims.append((inbox, cl))
        return True

    def _retry_claims(self) -> None:
        """Drops whose intake failed (a full disk, say): try again; their files wait in the claim."""
        assert self.store is not None and self.intake is not None
        known = self.store.claim_dirs()  # first: if the store is away, nothing is dropped
        todo, self.retry_claims = self.retry_claims, []
        for inbox, cl in todo:
            if str(cl.dir) in known:
                continue  # it made it into the store after all
            try:
                self.intake.ingest(inbox, cl, recovered=True)
            except Exception:  # noqa: BLE001
                logger.warning(
                    "inbox {}: claim {} still cannot be taken; trying again later",
                    inbox.name,
                    cl.claim_id,
                )
                self.retry_claims.append((inbox, cl))

    def _recover_orphan_claims(self) -> None:
        """Claims this instance made that never reached its database (a crash right after the claim)."""
        assert self.store is not None and self.intake is not None
        known = self.store.claim_dirs()
        stale = self.cfg.daemon.stale_claim_seconds
        for inbox in self.cfg.inbox:
            for cdir, owner in drops.unfinished_claims(inbox.path, self.farm.instance):
                if str(cdir) not in known and drops.discard_if_unfinished(cdir, owner, stale):
                    logger.warning(
                        "inbox {}: removed claim folder {}: a crash left it empty before the "
                        "drop was moved in; the drop itself waits in the inbox and is taken again",
                        inbox.name,
                        cdir.name,
                    )
        for inbox, cdir, owner in self.farm.orphans(known, self.outbox, {self.farm.instance}):
            logger.warning("inbox {}: resuming claim {} left by a crash", inbox.name, cdir.name)
            cl = drops.claim_from(inbox.path, cdir, owner)
            if cl is None:
                continue
            try:
                self.intake.adopt(inbox, cl, owner, "intake resumed after a restart")
            except Exception:  # noqa: BLE001
                logger.exception("inbox {}: claim {} cannot be resumed yet", inbox.name, cdir.name)
                self.retry_claims.append((inbox, cl))

    # -- the farm ---------------------------------------------------------------------------
    def _lease_fields(self) -> dict[str, Any]:
        w = self.worker
        return {
            "device": (w.info or {}).get("device"),
            "worker": w.state,
            "current_job": self.current.job_id if self.current else None,
        }

    def _take_over(self, mono: float) -> None:
        """Adopt the unfinished jobs of dead peers, as many as the worker has room for."""
        assert self.store is not None and self.intake is not None
        self.farm.observe(mono)
        self.view.peers = {k: v.__dict__ for k, v in self.farm.peers.items()}
        if self.flags.stop or not self.farm.may_take_over(mono):
            return
        room = self.farm.capacity(self.store, running=self.current is not None)
        self.farm.take_over(self.intake, self.store, self.outbox, room)
        if self.store.shared:
            self._requeue_strays()

    def _requeue_strays(self) -> None:
        """A farm job the database says this instance runs, but its worker does not: a start
        whose reply the database never got back to us (the connection broke at the commit)."""
        assert self.store is not None
        mine = {j for j, _ in self.unrecorded} | ({self.current.job_id} if self.current else set())
        for job in self.store.held():
            if job.running and job.job_id not in mine:
                logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                    "job {} is {} on this instance in the database but not in its worker "
                    "(a reply lost with the connection); re-queued",
                    job.job_id,
                    job.state,
                )
                self.store.transition(
                    job.job_id,
                    "queued",
                    expect=RUNNING,
                    attempts=max(0, job.attempts - 1),
                    detail="started on a connection that broke before the start was confirmed",
                )

    def _forget_lost(self) -> None:
        """At start-up: jobs a peer took over while this daemon was down are theirs now."""
        assert self.store is not None
        for job in self.store.held():
            why = self.farm.lost(job)
            if why:
                self._forget(job, why)

    def _forget(self, job: Job, why: str) -> None:
        assert self.store is not None
        logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
            "job {}: {}; this daemon drops it and writes nothing more for it", job.job_id, why
        )
        if not self.store.shared:  # a farm's row belongs to the instance that took it over
            self.store.forget(job.job_id)

    def _check_current_held(self) -> None:
        """A daemon that wakes from a freeze stops rendering a job a peer took over meanwhile."""
        assert self.store is not None
        cur = self.current
        if cur is None:
            return
        job = self.store.get(cur.job_id)
        why = self.farm.lost(job, cur.generation) if job is not None else None
        if job is None or why is None:
            return
        self.worker.kill()
        self.worker.state = "dead"
        self.current = None
        self._forget(job, why)

    # -- the worker ---------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        assert self.store is not None
        if self.flags.stop or self.current is not None or self.worker.state != "idle":
            return
        if not self.store.shared:
            self._claim_outranking(now)
        job = self.store.take_next(self.farm.instance, self.last_served, host=self.cfg.daemon.host)
        if job is None:
            return
        lost = self.farm.lost(job)
        if lost:
            self._forget(job, lost)
            return
        if job.config_hash and job.config_hash != self.intake.config_hash:  # type: ignore[union-attr]
            self.store.log(
                job,
                f"config changed since the job was queued: {job.config_hash} -> {self.intake.config_hash}",
            )  # type: ignore[union-attr]
            job = self.store.update(job.job_id, config_hash=self.intake.config_hash) or job  # type: ignore[union-attr]
        self.last_served[job.inbox] = now
        spec = job.model_dump()
        spec["outbox_dir"] = str(self.outbox.job_dir(job.job_id))
        if not self.worker.send({"type": "job", "job": spec}):
            self._requeue(job.job_id, "the worker could not be reached", count_attempt=False)
            return
        self.worker.state = "busy"
        self.current = Current(job.job_id, now, now, generation=job.generation)
        logger.bind(job_id=job.job_id, trace_id=job.trace_id).info(
            "job {} started (engine {}, inbox {}, attempt {})",
            job.job_id,
            job.engine,
            job.inbox,
            job.attempts,
        )

    def _claim_outranking(self, now: float) -> None:
        """A drop still in the inbox that outranks every job this daemon holds is claimed now."""
        assert self.store is not None
        top = best(self.farm.ready)
        if top is None:
            return
        queued = self.store.queued(limit=1)
        if not queued or top.priority > queued[0].priority:
            self.farm.ready.pop(top.candidate.manifest)
            self._claim(top.inbox, top.candidate, now)

    def _handle_worker(self, now: float, dispatching: bool = True) -> None:
        for msg in self.worker.poll():
            self._on_message(msg, now)
        if self.worker.state in ("starting", "idle", "busy") and not self.worker.alive():
            why = self.worker.exit_description()
            # its ffmpeg children still hold the output pipe: end them so that the relay reads
            # the worker's last words to the end (a crash report) before the job is recorded
            self.worker.kill()
            tail = self.worker.output_tail()
            logger.error(
                "worker (pid {}) died: {}; its last output: {}",
                self.worker.pid,
                why,
                " | ".join(tail) or "(none)",
            )
            self.worker.state = "dead"
            if self.current is not None:
                self._requeue(
                    self.current.job_id,
                    f"the worker process {why}",
                    count_attempt=True,
                    output=tail,
                )
        cur = self.current
        if cur is not None:
            limit = self.cfg.daemon.job_timeout_seconds
            if now - cur.started > limit:
                self._kill_worker_for(cur.job_id, f"the job passed its time limit of {limit:.0f} s")
            elif now - cur.last_heard > self.cfg.daemon.hang_seconds:
                self._kill_worker_for(
                    cur.job_id,
                    f"the worker sent nothing for {self.cfg.daemon.hang_seconds:.0f} s (hung)",
                )
            elif cur.cancel_sent_at is not None and now - cur.cancel_sent_at > CANCEL_GRACE:
                self.worker.kill()
                self.worker.state = "dead"
                self.current = None
                self._finish_cancel(cur.job_id, "the worker was killed to stop it")
        if self.worker.state in ("dead", "stopped") and not self.flags.stop:
            self.worker.restarts += 1
            self.metrics.worker_restarts.inc()
            self.worker.kill()
            self.worker.start()

    def _kill_worker_for(self, job_id: str, why: str) -> None:
        logger.error("job {}: {}; killing the worker (pid {})", job_id, why, self.worker.pid)
        self.worker.kill()
        self.worker.state = "dead"
        self._requeue(job_id, why, count_attempt=True, output=self.worker.output_tail())

    def _on_message(self, msg: dict[str, Any], now: float) -> None:
        assert self.store is not None
        kind = msg["type"]
        if msg.get("worker_pid") != self.worker.pid:
            return
        if kind == "ready":
            self.worker.state = "idle" if self.current is None else "busy"
            self.worker.info = msg
            logger.info("worker ready (pid {}, device {})", msg["pid"], msg["device"])
            if not self.view.ready:
                self.view.ready = True
                self.notifier.ready(
                    f"ready: {len(self.cfg.inbox)} inbox(es) watched, worker on {msg['device']}"
                )
            return
        cur = self.current
        job_id = msg.get("job_id")
        if cur is None or job_id != cur.job_id:
            return  # a late message about a job already settled
        cur.last_heard = now
        try:
            if kind == "stage":
                self.store.transition(job_id, msg["stage"], expect=RUNNING, fence=cur.generation)
            elif kind == "progress":
                if now - cur.last_written >= PROGRESS_WRITE_EVERY:
                    cur.last_written = now
                    self.store.update(
                        job_id, progress=round(msg["progress"], 4), fence=cur.generation
                    )
            elif kind == "inputs":
                self.store.update(job_id, inputs=msg["inputs"], fence=cur.generation)
            elif kind == "loads":
                self.worker.info = {**self.worker.info, "loads": msg["loads"]}
            elif kind == "log":
                job = self.store.get(job_id)
                if job is not None and job.generation == cur.generation:
                    self.store.log(job, msg["message"])
            elif kind == "result":
                self.current = None
                self.worker.state = "idle"
                msg["generation"] = cur.generation
                self._record_result(job_id, msg)
        except IllegalTransition as e:
            logger.warning("job {}: ignored worker message {}: {}", job_id, kind, e)
        except StoreUnavailable as e:
            self._store_down(e)  # a lost stage or progress is caught up with the result

    def _record_result(self, job_id: str, msg: dict[str, Any], *, again: bool = False) -> None:
        """Record a job's outcome; if the database cannot take it now (full disk), keep it and retry."""
        try:
            self._on_result(job_id, msg)
        except (sqlite3.OperationalError, StoreUnavailable) as e:
            if not again:
                logger.bind(job_id=job_id).error(
                    "job {}: cannot record its result ({}); kept in memory and recorded once the "
                    "store can be written again",
                    job_id,
                    e,
                )
            self.unrecorded.append((job_id, msg))

    def _retry_unrecorded(self) -> None:
        todo, self.unrecorded = self.unrecorded, []
        for job_id, msg in todo:
            self._record_result(job_id, msg, again=True)

    def _on_result(self, job_id: str, msg: dict[str, Any]) -> None:
        assert self.store is not None
        outcome = msg["outcome"]
        job = self.store.get(job_id)
        if job is None:
            return
        log = logger.bind(job_id=job_id, trace_id=job.trace_id)
        lost = self.farm.lost(job, msg.get("generation"))
        if lost:
            self._forget(job, f"its late result ({outcome}) is discarded: {lost}")
            return
        if outcome == "done":
            self.store.catch_up(job, "store was unreachable", fence=msg.get("generation"))
            job = self.store.transition(
                job_id,
                "done",
                expect=RUNNING,
                output=msg["output"],
                timings={**job.timings, **msg["timings"]},  # keeps the pickup time
                device=msg.get("device"),
                fence=msg.get("generation"),
                detail=f"{msg['output']['name']} in {msg['timings']['total']:.2f} s",
            )
            log.info(
                "job {} done in {:.2f}s: {}",
                job_id,
                msg["timings"]["total"],
                self.outbox.job_dir(job_id),
            )
            return
        err = msg["error"]
        if outcome == "cancelled":
            self._finish_cancel(job_id, err["message"])
            return
        self._keep_for_redrop(job, err)
        to = "rejected" if outcome == "rejected" else "failed"
        self.store.transition(
            job_id, to, expect=RUNNING, error=err, detail=f"{err['code']}: {err['message']}"
        )
        log.warning(
            "job {} {} ({}): {} - {}", job_id, to, err["code"], err["message"], err.get("hint", "")
        )

    def _requeue(
        self, job_id: str, why: str, *, count_attempt: bool, output: list[str] | None = None
    ) -> None:
        """Put a running job back in the queue, or fail it past max_attempts; `output`: the
        worker's last lines when it died or was killed, kept in log.txt and the error."""
        assert self.store is not None
        if self.current is not None and self.current.job_id == job_id:
            self.current = None
        job = self.store.get(job_id)
        if job is None or job.state not in RUNNING:
            return
        for line in output or ():
            self.store.log(job, f"worker output: {line}")
        self._discard_partials(job_id)
        attempts = job.attempts if count_attempt else max(0, job.attempts - 1)
        if count_attempt and attempts >= job.max_attempts:
            err = {
                "code": "worker_failed",
                "stage": job.state,
                "message": f"{why} (attempt {attempts} of {job.max_attempts})",
                "hint": "look at the daemon's log around this time; `dropbox-daemon retry` runs it again",
            }
            if output:
                err["worker_output"] = output
            self._keep_for_redrop(job, err)
            self.store.transition(job_id, "failed", error=err, detail=err["message"])
        else:
            self.store.transition(job_id, "queued", attempts=attempts, detail=f"{why}; re-queued")

    def _keep_for_redrop(self, job: Job, err: dict[str, Any]) -> None:
        """error.json and input/ in the outbox; on a full outbox the drop stays in its claim folder."""
        claim = Path(job.claim_dir or "") / drops.DROP_SUBDIR
        try:
            self.outbox.write_error(job.job_id, err)
            self.outbox.save_inputs(job.job_id, claim)
        except OSError as e:
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).error(
                "job {}: cannot write error.json/input/ to the outbox ({}); the drop's files stay in {}",
                job.job_id,
                e.strerror or e,
                claim,
            )

    # -- cancels -------------------------------------------------------------------------
    def _handle_cancels(self, now: float) -> None:
        assert self.store is not None
        cur = self.current
        if cur is None or cur.cancel_sent_at is not None:
            return
        job = self.store.get(cur.job_id)
        if job is not None and job.cancel_requested:
            self.worker.send({"type": "cancel", "job_id": cur.job_id})
            cur.cancel_sent_at = now
            self.store.log(job, "cancel requested; stopping the render")

    def _finish_cancel(self, job_id: str, why: str) -> None:
        assert self.store is not None
        job = self.store.get(job_id)
        if job is None or job.state not in RUNNING:
            return
        self.store.transition(job_id, "cancelled", detail=why, cancel_requested=0)
        self._discard_partials(job_id)

    def _discard_partials(self, job_id: str) -> None:
        """Remove the half-written result of a job whose render was stopped."""
        for leftover in self.outbox.job_dir(job_id).glob(".*.partial"):
            leftover.unlink(missing_ok=True)


PID_FILE = "daemon.pid"


def read_pid(cfg: Config) -> int | None:
    """The pid of the daemon running on this state folder, or None."""
    try:
        pid = int((cfg.daemon.state_dir / PID_FILE).read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def run_daemon(cfg: Config) -> int:
    """`dropbox-daemon run`."""
    return Daemon(cfg).run()
