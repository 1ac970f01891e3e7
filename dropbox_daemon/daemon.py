"""The daemon's lifecycle: start, the main loop, signals, graceful stop.

One thread does all the work in loop_once(), through the daemon's parts, each in its own
file, each given the collaborators it uses and the loop's shared state (loop.py), made once
the store is open:

  claiming.py   drops to jobs: hints, rescans, settling, claims, failed intakes again
  supervise.py  the worker: dispatch, its messages, its death, time limits, hangs, cancels
  outcomes.py   how a job ends: results recorded, re-queued or failed, cancelled, forgotten
  peers.py      the farm: the lease, taking over dead peers' jobs, strays, lost jobs

Signal handlers only set flags; the loop acts on them.
"""

from __future__ import annotations

import os
import threading
import time

from loguru import logger

from dropbox_daemon import claims, health, signals
from dropbox_daemon.callbacks import Deliverer
from dropbox_daemon.claiming import Claiming
from dropbox_daemon.config import Config
from dropbox_daemon.coordination import Coordination, open_coordination
from dropbox_daemon.errors import ConfigError
from dropbox_daemon.intake import Intake
from dropbox_daemon.loop import Flags, Loop
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.outcomes import Outcomes
from dropbox_daemon.parts import make_parts
from dropbox_daemon.peers import PeerDuties
from dropbox_daemon.pidfile import PID_FILE, hold_state_dir
from dropbox_daemon.reporting import Reporter
from dropbox_daemon.scheduler import Scheduler
from dropbox_daemon.store import Job, Store, StoreUnavailable, open_store
from dropbox_daemon.supervise import Current, Supervisor
from dropbox_daemon.watcher import Watcher
from dropbox_daemon.web import Web

UMASK = 0o027  # files 0640, folders 0750: the daemon's user and group only


class Daemon:
    """Owns the store, the watcher and the worker; run() is the service."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # input/ of a rejected or failed job holds copies of what passed the limits
        biggest = max(cfg.limits.max_audio_bytes, cfg.limits.max_template_bytes)
        self.outbox = Outbox(cfg.daemon.outbox, max_input_file=biggest)
        self.store: Store | None = None
        self.intake: Intake | None = None
        self.wake = threading.Event()
        self.watcher = Watcher(cfg.inbox, cfg.daemon.rescan_seconds, wake=self.wake.set)
        from dropbox_daemon.worker import WorkerHandle

        self.worker = WorkerHandle(cfg, wake=self.wake.set)
        self.farm: Coordination | None = None  # with the store: how its daemons coordinate
        self.next_rescan = 0.0
        self.flags = Flags()
        self.view = health.DaemonView()
        self.metrics = Metrics(cfg.instance_id)
        self.notifier = Notifier()
        self.scheduler = Scheduler(cfg, self.view, self.metrics, self.notifier)
        self.deliverer = Deliverer(cfg, on_give_up=self.metrics.callback_failures.inc)
        self.web = Web(cfg, self.view, self.metrics)
        self.holding_said: str | None = None  # the disk-low reason last logged
        self.report = Reporter(
            cfg,
            self.view,
            self.metrics,
            self.notifier,
            self.scheduler,
            self.worker,
            current=lambda: self.current,
            wake=self.wake,
            flags=self.flags,
        )
        self.loop = Loop(cfg, self.flags, self.view, self.report.store_down)
        # the parts of each pass, made with the store (_make_parts)
        self.claiming: Claiming
        self.supervisor: Supervisor
        self.outcomes: Outcomes
        self.peers: PeerDuties
        self.parts = False

    @property
    def current(self) -> Current | None:
        """The job the worker has (the supervisor's)."""
        return self.supervisor.current if self.parts else None

    def _make_parts(self, store: Store, intake: Intake, farm: Coordination) -> None:
        made = make_parts(
            self.loop,
            store,
            intake,
            self.worker,
            watcher=self.watcher,
            farm=farm,
            outbox=self.outbox,
            notifier=self.notifier,
            metrics=self.metrics,
        )
        self.claiming, self.supervisor = made.claiming, made.supervisor
        self.outcomes, self.peers = made.outcomes, made.peers
        self.parts = True

    def start(self) -> None:
        """Open the store, recover, start watching and the worker."""
        d = self.cfg.daemon
        # what the daemon creates is its user's and group's to read, no one else's (0640/0750)
        os.umask(UMASK)
        for p in (d.state_dir, d.outbox, self.cfg.daemon_dir):
            p.mkdir(parents=True, exist_ok=True)
        self._lock = hold_state_dir(self.cfg)  # kept open: the lock lasts as long as the daemon
        for inbox in self.cfg.inbox:
            claims.make_dropbox(inbox.path)
        delay = 1.0
        while True:  # the farm's database may refuse a moment (no slot, a restart): wait it out
            try:
                self._recover()
                break
            except StoreUnavailable as e:
                if not self.report.waiting_for_store(e.message, delay):
                    raise ConfigError("stopped while waiting for the farm's database") from e
                delay = min(5.0, delay * 2)
        self.view.store_error = None
        self.watcher.start()
        self.view.watch_modes = dict(self.watcher.modes)
        self.web.start()
        self.worker.start()
        self.report.share()  # the first heartbeat already names the worker
        self.scheduler.start()
        self.deliverer.start()
        logger.info(
            "dropbox-daemon {} started as instance {}: {} inbox(es), outbox {}, state {}",
            __import__("dropbox_daemon").__version__,
            self.cfg.instance_id,
            len(self.cfg.inbox),
            d.outbox,
            d.state_dir,
        )

    def _recover(self) -> None:
        """Open the store, take this instance's lease, put back what the last run left."""
        if self.store is None:
            self.store = open_store(self.cfg, self.outbox, on_wait=self.report.waiting_for_store)
        if self.farm is None:
            self.farm = open_coordination(self.cfg, self.store)
        self.farm.register(time.time())
        self.view.instance = self.farm.instance
        self.view.farm_queue = not self.farm.own_store
        self.store.on_change = self._on_change
        if self.intake is None:
            self.intake = Intake(self.cfg, self.store, self.outbox, own_store=self.farm.own_store)
            self._make_parts(self.store, self.intake, self.farm)
        self.peers.forget_lost()
        for job in self.store.recover_interrupted():
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                "job {} was running when the daemon stopped: now {} (attempt {} of {})",
                job.job_id,
                job.state,
                job.attempts,
                job.max_attempts,
            )
        self.claiming.recover_orphan_claims()

    def install_signals(self) -> None:
        signals.install(self.flags, self.wake.set)

    def run(self) -> int:
        """The service: start, loop until a signal, stop gracefully. Returns the exit code."""
        self.install_signals()
        try:
            self.start()
        except ConfigError:
            if self.flags.stop and not self.view.ready:  # SIGTERM while waiting for the database
                logger.info("dropbox-daemon stopped while waiting for the farm's database")
                self._write_stopped()
                self._let_go()  # a lease taken before the wait says "stopped"
                return 0
            raise
        try:
            while not self.flags.stop:
                try:
                    self.loop_once(time.time())
                    self.report.store_back()
                except StoreUnavailable as e:
                    self.report.store_down(e)
                    self.wake.wait(1.0)
                except Exception as e:  # noqa: BLE001 - the service outlives any one bad pass
                    why = f"{type(e).__name__}: {e}"[:300]
                    if why != self.view.pass_error:  # once per kind, not every second
                        logger.exception(
                            "main loop: unexpected error; the daemon goes on and retries in 1 s"
                        )
                    self.view.pass_error = why
                    self.wake.wait(1.0)
                self.wake.wait(self.cfg.daemon.loop_seconds)
                self.wake.clear()
            self.stop()
            self._write_stopped()
        finally:
            self._let_go()
        return 0

    def _write_stopped(self) -> None:
        """The last health record: "stopped", the worker gone, so no reader takes the last
        heartbeat of a daemon that is no longer there for a running one."""
        self.view.stopped_at = time.time()
        self.view.stop_reason = self.view.stop_reason or signals.names(self.flags.signals)
        self.report.share(beat=False)
        self.report.write_stopped(self.store)

    def _let_go(self) -> None:
        """What a started daemon holds, given back: its lease (as stopped), the watches,
        the store, the pid file."""
        if self.view.instance and self.farm is not None:
            self.farm.release()
        self.watcher.stop()
        if self.store is not None:
            self.store.close()
        (self.cfg.daemon.state_dir / PID_FILE).unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop taking jobs; let the running one finish within stop_timeout, else re-queue it."""
        self.view.stopping = True
        self.view.stop_reason = signals.names(self.flags.signals)
        self.report.share()  # "stopping" is read at once, not at the next heartbeat
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
            self.supervisor.handle_worker(time.time(), dispatching=False)
            self.report.share()
            self.wake.wait(0.1)
            self.wake.clear()
        self.supervisor.abandon("the daemon was stopped during the job")
        self.worker.stop(timeout=5)
        self.scheduler.stop()
        self.deliverer.stop()
        self.web.stop()
        logger.info("dropbox-daemon stopped")

    def loop_once(self, now: float) -> None:
        """One pass: worker messages, hints, the farm's lease, rescans, settled drops,
        cancels, dispatch, claims while the worker has room."""
        self.view.loop_tick = time.monotonic()
        self.supervisor.handle_worker(now)
        self.claiming.collect_hints()
        mono = time.monotonic()
        self.peers.renew(now, mono)
        if now >= self.next_rescan:
            self.next_rescan = now + self.cfg.daemon.rescan_seconds
            if self.store is not None and self.store.stale_outbox:
                self.store.flush_outbox()
            if self.outcomes.unrecorded:
                self.outcomes.retry_unrecorded()
            self.claiming.rescan()
            self.peers.take_over(mono)
        self.claiming.take_settled(now)
        self.supervisor.handle_cancels(now)
        if self.view.holding is None:
            self.supervisor.dispatch(now)
            # after the dispatch: the worker starts its next job before the prefetch is refilled
            self.claiming.pull(now)
            self.supervisor.dispatch(now)  # an idle worker, nothing queued: what was just pulled
        elif self.holding_said != self.view.holding:
            logger.warning(
                "disk low ({}): no new jobs are taken until there is more free space; a running "
                "job goes on, drops wait in the inbox",
                self.view.holding,
            )
        self.holding_said = self.view.holding
        self.view.pass_done = time.monotonic()
        self.view.pass_error = None
        self.report.share()

    def _on_change(self, job: Job, from_state: str | None) -> None:
        self.metrics.on_change(job, from_state)
        if job.callback_url and job.terminal:
            self.deliverer.wake.set()


def run_daemon(cfg: Config) -> int:
    """`dropbox-daemon run`."""
    return Daemon(cfg).run()
