"""health.json and metrics.prom: the operator's view of the running daemon.

The health record says in one word whether the daemon is ok, degraded or failing, and
why; the metrics (metrics.py) are brought up to date with it and written beside it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dropbox_daemon import __version__, access
from dropbox_daemon.config import Config
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.outbox import atomic_write_json, utc_iso
from dropbox_daemon.store import RUNNING, Job, Store, StoreUnavailable

HEALTH_JSON = "health.json"
METRICS_PROM = "metrics.prom"
# the metric's value of each status; "stopping" (draining after a signal) and "stopped" (a
# clean stop's last record) say what the daemon is doing, not how well
STATUS_LEVEL = {"ok": 0, "degraded": 1, "failing": 2, "stopping": 3, "stopped": 4}


@dataclass
class DaemonView:
    """What the main loop shares with the heartbeat thread (plain values, read without locks)."""

    started_at: float = field(default_factory=time.time)
    loop_tick: float = field(default_factory=time.monotonic)  # a pass began (monotonic)
    pass_done: float = field(default_factory=time.monotonic)  # a pass got through dispatch
    pass_error: str | None = None  # why the last pass broke off, while passes keep failing
    holding: str | None = None  # why no new work is taken now (disk low), set by the heartbeat
    ready: bool = False
    farm_queue: bool = False  # the store is a farm's database: its jobs are not all ours
    stopping: bool = False  # a signal came: the running job finishes, no new one starts
    stop_reason: str = ""  # which signal, said while draining
    stopped_at: float | None = None  # a clean stop's time: the last record says "stopped"
    worker_pid: int | None = None
    worker_state: str = "stopped"
    worker_info: dict[str, Any] = field(default_factory=dict)
    worker_restarts: int = 0
    current_job: str | None = None
    watch_modes: dict[str, str] = field(default_factory=dict)
    instance: str = ""
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance -> its lease
    store_error: str | None = None  # why the store cannot be reached now
    intake_rejected: int = 0  # claims answered intake_failed after MAX_INTAKE_TRIES
    quarantined: int = 0  # claims that could not even be answered, set aside


def phase(view: DaemonView) -> str:
    """What the daemon is doing, in one word: starting, running, draining or stopped."""
    if view.stopped_at is not None:
        return "stopped"
    if view.stopping:
        return "draining"
    return "running" if view.ready else "starting"


def signature(view: DaemonView) -> tuple[Any, ...]:
    """The parts of the view a reader acts on; a change of any is written at once, not at
    the next heartbeat."""
    return (
        phase(view),
        view.worker_state,
        view.worker_pid,
        view.current_job,
        view.store_error,
        view.holding,
        view.worker_restarts,
    )


def disk_free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _process_memory(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.Error, OSError):
        return None


def _job_brief(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "job_id": job.job_id,
        "state": job.state,
        "inbox": job.inbox,
        "progress": job.progress,
        "finished_at": utc_iso(job.finished_at),
        "started_at": utc_iso(job.started_at),
        "error": (job.error or {}).get("message") if job.error else None,
    }


def evaluate(
    view: DaemonView, cfg: Config, disks: dict[str, int | None], now_mono: float
) -> tuple[str, list[str]]:
    """(status, reasons): failing stops the watchdog pings, degraded only reports;
    stopping and stopped say that the daemon was told to stop (with how far it is)."""
    if view.stopped_at is not None:
        return "stopped", [f"stopped cleanly at {utc_iso(view.stopped_at)} ({view.stop_reason})"]
    failing, degraded = [], []
    stall = now_mono - view.loop_tick
    limit = cfg.health.loop_stall_seconds
    no_progress = now_mono - view.pass_done
    if stall > limit:  # blocked inside one pass: a restart is what helps
        failing.append(f"main loop silent for {stall:.0f} s")
    elif no_progress > limit:  # passes begin but none reaches dispatch: jobs wait
        degraded.append(
            f"main loop: no pass has got through to dispatch for {no_progress:.0f} s"
            + (f" (each fails: {view.pass_error})" if view.pass_error else "")
            + "; queued jobs wait; see the daemon's log"
        )
    if view.worker_state == "dead" or (
        view.ready and not view.stopping and view.worker_state == "stopped"
    ):
        failing.append(f"worker is {view.worker_state}")
    elif view.worker_state == "starting":
        degraded.append("worker is starting (loading models)")
    elif view.worker_state == "restarting":  # not failing: a daemon restart mends nothing
        degraded.append(
            "worker keeps dying before it is ready; the next start is held back (the log says why)"
        )
    if view.worker_restarts:
        degraded.append(f"worker restarted {view.worker_restarts} time(s) since start")
    for name, free in disks.items():
        if free is None:
            failing.append(f"{name} folder is not reachable")
        elif free < cfg.health.disk_fail_bytes:
            # not failing: a restart would kill the running render and free nothing
            degraded.append(
                f"{name} has {free >> 20} MiB free (under {cfg.health.disk_fail_bytes >> 20} MiB): "
                "no new jobs are taken until there is more; the running one goes on"
            )
        elif free < cfg.health.disk_warn_bytes:
            degraded.append(
                f"{name} has {free >> 20} MiB free (under {cfg.health.disk_warn_bytes >> 20} MiB)"
            )
    degraded += inbox_problems(cfg)
    if view.store_error:
        degraded.append(f"store: unreachable ({view.store_error})")
    status = "failing" if failing else "degraded" if degraded else "ok"
    if view.stopping and not failing:
        doing = f"finishing job {view.current_job}" if view.current_job else "idle"
        return "stopping", [
            f"stopping ({view.stop_reason}): {doing}; no new job starts; SIGTERM again stops "
            "at once (a running job is re-queued)",
            *degraded,
        ]
    return status, failing + degraded


def inbox_problems(cfg: Config) -> list[str]:
    """Inboxes no drop can be taken from: gone (an unmounted share), or not the daemon's to
    write (a claim is a rename inside it: a chown or a read-only mount gone wrong)."""
    out = []
    for inbox in cfg.inbox:
        if not inbox.path.is_dir():
            out.append(f"inbox {inbox.name} ({inbox.path}) is missing")
        elif not os.access(inbox.path, os.W_OK | os.X_OK):
            out.append(
                f"inbox {inbox.name} ({inbox.path}) is not writable by the daemon: no drop in "
                f"it can be claimed ({access.who(inbox.path)})"
            )
    return out


def holding(disks: dict[str, int | None], cfg: Config) -> str | None:
    """Why the daemon takes no new work now: a folder under disk_fail_bytes free."""
    low = [
        f"{name} {free >> 20} MiB free"
        for name, free in disks.items()
        if free is not None and free < cfg.health.disk_fail_bytes
    ]
    return ", ".join(low) or None


def build(
    view: DaemonView,
    cfg: Config,
    store: Store | None,
    metrics: Metrics,
    now: float,
    now_mono: float,
) -> dict[str, Any]:
    """The health record, and the metrics brought up to date with it (store None: the
    daemon is starting and waits for the farm's database; view.store_error says why)."""
    counts, by_inbox, current, last_done, last_failed = _store_facts(view, store)
    disks = {"outbox": disk_free(cfg.daemon.outbox), "state": disk_free(cfg.daemon.state_dir)}
    status, reasons = evaluate(view, cfg, disks, now_mono)
    _set_metrics(metrics, view, counts, disks, status)
    return {
        "status": status,
        "reasons": reasons,
        "written_at": utc_iso(now),
        "version": __version__,
        "pid": os.getpid(),
        "host": cfg.daemon.host,
        "instance": view.instance or cfg.instance_id,
        "store": "unreachable" if view.store_error else "ok",
        "store_error": view.store_error,
        # farm mode: encrypted? verified? the database's encoding and schema (never a password)
        "store_connection": getattr(store, "security", None),
        "peers": _peers(view, view.instance or cfg.instance_id),
        "phase": phase(view),
        "stopped_at": utc_iso(view.stopped_at) if view.stopped_at else None,
        "uptime_seconds": round(now - view.started_at, 1),
        "config_hash": cfg.config_hash(),
        "ready": view.ready,
        "worker": _worker(view),
        "intake": {"rejected_after_tries": view.intake_rejected, "quarantined": view.quarantined},
        "queue": {k: v for k, v in counts.items() if k in ("received", "queued", *RUNNING)},
        "queue_by_inbox": by_inbox,
        "jobs_by_state": counts,
        "current_job": _job_brief(current),
        "last_done": _job_brief(last_done[0] if last_done else None),
        "last_failed": _job_brief(last_failed[0] if last_failed else None),
        "disk_free_bytes": disks,
        "inboxes": {
            i.name: {"path": str(i.path), "watch": view.watch_modes.get(i.name)} for i in cfg.inbox
        },
    }


def _store_facts(view: DaemonView, store: Store | None) -> tuple[Any, ...]:
    """What the record reads from the store: counts, by inbox, the current job, the last
    done and failed; empty where the store cannot be reached (view.store_error says why)."""
    try:
        if store is None:
            raise StoreUnavailable(view.store_error or "not connected yet")
        counts = store.counts()
        by_inbox = store.counts_by_inbox()
        current = store.get(view.current_job) if view.current_job else None
        mine = view.instance if view.farm_queue else None
        last_done = store.jobs(state="done", instance=mine, limit=1)
        last_failed = store.jobs(state="failed", instance=mine, limit=1)
        view.store_error = None
    except StoreUnavailable as e:
        view.store_error = e.message
        return {}, {}, None, [], []
    return counts, by_inbox, current, last_done, last_failed


def _set_metrics(
    metrics: Metrics,
    view: DaemonView,
    counts: dict[str, int],
    disks: dict[str, int | None],
    status: str,
) -> None:
    for state in ("received", "queued", *RUNNING):
        metrics.queue.labels(state).set(counts.get(state, 0))
    for name, free in disks.items():
        if free is not None:
            metrics.disk_free.labels(name).set(free)
    metrics.status.set(STATUS_LEVEL[status])
    metrics.intake_given_up.labels("rejected").set(view.intake_rejected)
    metrics.intake_given_up.labels("quarantined").set(view.quarantined)


def _worker(view: DaemonView) -> dict[str, Any]:
    info = view.worker_info
    return {
        "pid": view.worker_pid,
        "state": view.worker_state,
        "device": info.get("device"),
        "engines_loaded": info.get("engines", []),
        "model_loaded": bool(info.get("engines")),
        "model_loads": info.get("loads", {}),
        "load_errors": info.get("load_errors", {}),
        "memory_bytes": _process_memory(view.worker_pid),
        "restarts": view.worker_restarts,
    }


def _peers(view: DaemonView, me: str) -> dict[str, Any]:
    return {
        k: {
            "host": v.get("host"),
            "state": v.get("state"),
            "renewed_at": utc_iso(v.get("renewed_at")),
            "current_job": v.get("current_job"),
        }
        for k, v in view.peers.items()
        if k != me
    }


def status_line(view: DaemonView, store: Store) -> str:
    """systemd's STATUS=: what the daemon is doing, in a few words."""
    try:
        queued = store.counts().get("queued", 0)
        job = store.get(view.current_job) if view.current_job else None
    except StoreUnavailable as e:
        return f"store unreachable ({e.message}); {view.current_job or 'idle'}"
    if view.current_job:
        pct = f" {job.progress:.0%}" if job else ""
        return f"rendering {view.current_job}{pct}, {queued} queued"
    return f"idle, {queued} queued"


def write(cfg: Config, record: dict[str, Any], metrics: Metrics) -> None:
    cfg.daemon_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.daemon_dir / HEALTH_JSON, record)
    metrics.write(cfg.daemon_dir / METRICS_PROM)
