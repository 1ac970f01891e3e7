"""APScheduler jobs: the heartbeat (health.json, metrics.prom, systemd watchdog), retention, backups.

They run in the scheduler's own threads with their own database connections, so a
hung main loop cannot stop the heartbeat from noticing it; retention and backups run in
a second thread, so a long purge or a slow backup cannot hold the heartbeat back either.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from loguru import logger

from dropbox_daemon import health, retention
from dropbox_daemon.config import Config
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import Store, StoreUnavailable, is_farm, open_store

HOUSEKEEPING = "housekeeping"  # the executor of retention and backups
BEAT_NOW = "heartbeat-now"  # a heartbeat out of turn: the daemon's state changed


class Scheduler:
    """Owns the BackgroundScheduler: start() and stop() are its whole life."""

    def __init__(
        self, cfg: Config, view: health.DaemonView, metrics: Metrics, notifier: Notifier
    ) -> None:
        self.cfg, self.view, self.metrics, self.notifier = cfg, view, metrics, notifier
        self.sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1), HOUSEKEEPING: ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone=dt.UTC,
        )
        self.local = threading.local()
        self.opened: list[Store] = []
        self.last_status = "ok"
        self.beat_lock = threading.Lock()
        self.beat_pending = False

    @property
    def store(self) -> Store:
        """This thread's store: opened in the scheduler thread that uses it, used only there."""
        s = getattr(self.local, "store", None)
        if s is None:
            s = self.local.store = open_store(self.cfg, Outbox(self.cfg.daemon.outbox))
            self.opened.append(s)
        return s

    def start(self) -> None:
        now = dt.datetime.now(dt.UTC)
        r = self.cfg.retention
        self.sched.add_job(
            self.heartbeat,
            "interval",
            seconds=self.cfg.health.heartbeat_seconds,
            next_run_time=now,
            id="heartbeat",
        )
        self.sched.add_job(
            self.retention,
            "interval",
            minutes=r.every_minutes,
            next_run_time=now + dt.timedelta(seconds=30),
            id="retention",
            executor=HOUSEKEEPING,
        )
        self.sched.add_job(
            self.backup,
            "interval",
            hours=r.backup_every_hours,
            next_run_time=now + dt.timedelta(minutes=5),
            id="backup",
            executor=HOUSEKEEPING,
        )
        self.sched.start()

    def beat_now(self) -> None:
        """Write health.json now (in the heartbeat's thread, after any beat under way): the
        daemon started, its worker became ready, a job started or ended, it is stopping.
        Requests made while one waits to run are one beat."""
        with self.beat_lock:
            if self.beat_pending or not self.sched.running:
                return
            self.beat_pending = True
        try:
            # one may be running while this one waits: two instances, never a "skipped"
            self.sched.add_job(self._beat_now, id=BEAT_NOW, replace_existing=True, max_instances=2)
        except Exception as e:  # noqa: BLE001 - the 10 s heartbeat still writes it
            self.beat_pending = False
            logger.debug("heartbeat out of turn not scheduled: {}", e)

    def _beat_now(self) -> None:
        with self.beat_lock:
            self.beat_pending = False  # a change from now on asks for another beat
        self.heartbeat()

    def stop(self) -> None:
        self.sched.shutdown(wait=True)
        for s in self.opened:
            s.close()
        self.opened.clear()
        self.local = threading.local()

    def heartbeat(self) -> None:
        """Write health.json and metrics.prom; ping the watchdog only while really healthy."""
        try:
            now, mono = time.time(), time.monotonic()
            record = health.build(self.view, self.cfg, self.store, self.metrics, now, mono)
            self.view.holding = health.holding(record["disk_free_bytes"], self.cfg)
            health.write(self.cfg, record, self.metrics)
        except Exception:  # noqa: BLE001 - the heartbeat must outlive a bad beat
            logger.exception("heartbeat failed; health.json is stale until the next one succeeds")
            return
        status = record["status"]
        if status != self.last_status:
            # a worker loading its models at start-up is expected: said, not warned about
            expected = status == "degraded" and record["phase"] == "starting"
            log = (
                logger.warning
                if status in ("degraded", "failing") and not expected
                else logger.info
            )
            log("health is now {}: {}", status, "; ".join(record["reasons"]) or "all checks pass")
            self.last_status = status
        if self.view.stopping:
            return
        self.notifier.status(health.status_line(self.view, self.store))
        if status != "failing" and self.view.ready:
            self.notifier.watchdog()

    def retention(self) -> None:
        try:
            retention.purge(self.store, self.cfg)
        except StoreUnavailable as e:
            logger.warning(
                "retention skipped: store unreachable ({}); it runs again later", e.message
            )
        except Exception:  # noqa: BLE001
            logger.exception(
                "retention run failed; it runs again in {} min", self.cfg.retention.every_minutes
            )

    def backup(self) -> None:
        if is_farm(self.cfg):
            return  # a farm's PostgreSQL is backed up by its own tools (docs/operations.md)
        try:
            retention.backup(self.store, self.cfg)
        except Exception:  # noqa: BLE001
            logger.exception(
                "database backup failed; check free space in {}", self.cfg.daemon.state_dir
            )
