"""What the main loop publishes for the operator, from the main loop's thread: the view
copied at each change (health.json written at once where a reader acts on it, not at the
next heartbeat), the store's outages said once in the log, health.json and to systemd, and
the last record of a stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from dropbox_daemon import health
from dropbox_daemon.config import Config
from dropbox_daemon.loop import Flags
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.scheduler import Scheduler
from dropbox_daemon.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from dropbox_daemon.supervise import Current
    from dropbox_daemon.worker import WorkerHandle


class Reporter:
    """The daemon's view, shared; the one writer of `store_down_why`."""

    def __init__(
        self,
        cfg: Config,
        view: health.DaemonView,
        metrics: Metrics,
        notifier: Notifier,
        scheduler: Scheduler,
        worker: WorkerHandle,
        *,
        current: Callable[[], Current | None],
        wake: threading.Event,
        flags: Flags,
    ) -> None:
        self.cfg, self.view, self.metrics, self.notifier = cfg, view, metrics, notifier
        self.scheduler, self.worker, self.current = scheduler, worker, current
        self.wake, self.flags = wake, flags
        self.store_down_why: str | None = None  # why the store failed, while it does
        self.signature: tuple[Any, ...] = ()  # health.signature of the view last shared

    def waiting_for_store(self, reason: str, delay: float) -> bool:
        """Start-up, the farm's database not answering yet (refused, timed out, no free
        connection slot): say so in the log, health.json and to systemd, then wait."""
        if reason != self.store_down_why:
            logger.warning(
                "store: cannot use the farm's database yet ({}); the daemon starts once it "
                "answers, retrying with back-off up to every 5 s (SIGTERM stops it)",
                reason,
            )
            self.store_down_why = reason
        self.view.store_error = f"starting: waiting for the database ({reason})"
        try:
            now, mono = time.time(), time.monotonic()
            health.write(
                self.cfg,
                health.build(self.view, self.cfg, None, self.metrics, now, mono),
                self.metrics,
            )
        except OSError as e:
            logger.warning("health.json not written while waiting for the database: {}", e)
        # systemd: still starting, not hung (TimeoutStartSec is extended past each wait)
        self.notifier.send(
            f"STATUS=waiting for the database: {reason}"[:300],
            f"EXTEND_TIMEOUT_USEC={int((delay + 60) * 1_000_000)}",
        )
        self.wake.wait(delay)
        self.wake.clear()
        return not self.flags.stop

    def store_down(self, e: StoreUnavailable) -> None:
        """Said once: the running job goes on, no new one starts."""
        if self.store_down_why is None:
            self.store_down_why = e.message
            logger.error(
                "store: unreachable ({}); the running job goes on and its result is recorded "
                "once the database is back; no new job starts meanwhile",
                e.message,
            )
        self.view.store_error = e.message
        self.share()

    def store_back(self) -> None:
        if self.store_down_why is not None:
            logger.info("store: reachable again after '{}'", self.store_down_why)
            self.store_down_why = None
            self.view.store_error = None
            self.share()

    def share(self, beat: bool = True) -> None:
        """Copy what the main loop knows into the view; a change a reader acts on (phase,
        worker, current job, store, disk) is written to health.json now."""
        v, w = self.view, self.worker
        v.worker_pid = w.pid if w.state != "stopped" else None
        v.worker_state, v.worker_info = w.state, w.info
        v.worker_restarts = w.restarts
        current = self.current()
        v.current_job = current.job_id if current else None
        now = health.signature(v)
        if beat and now != self.signature:
            self.scheduler.beat_now()
        self.signature = now

    def write_stopped(self, store: Store | None) -> None:
        """The last health record: "stopped", the worker gone (the caller set the reason)."""
        try:
            store = store if self.view.store_error is None else None
            now, mono = time.time(), time.monotonic()
            record = health.build(self.view, self.cfg, store, self.metrics, now, mono)
            health.write(self.cfg, record, self.metrics)
        except Exception as e:  # noqa: BLE001 - stopping goes on; the pid file is gone anyway
            logger.warning("health.json not marked stopped: {}", e)
