"""Retention (injected time), backups, health evaluation and the sd_notify watchdog, as units."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from dropbox_daemon import config, health, retention
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.scheduler import Scheduler
from dropbox_daemon.store import Job, SqliteStore, sqlite_path

DAY = 86400.0
NOW = 1_800_000_000.0


def make_cfg(tmp_path: Path, **sections) -> config.Config:  # noqa: ANN003
    data = {
        "daemon": {"state_dir": str(tmp_path / "state"), "outbox": str(tmp_path / "outbox")},
        "inbox": [
            {"name": "main", "path": str(tmp_path / "in")},
            {"name": "smoke", "path": str(tmp_path / "sm")},
        ],
        **sections,
    }
    return config.from_dict(data, source=tmp_path / "c.toml")


def add_job(
    store: SqliteStore,
    cfg: config.Config,
    job_id: str,
    inbox: str,
    state: str,
    ended_days_ago: float | None,
) -> Job:
    claim = [i for i in cfg.inbox if i.name == inbox][0].path / ".dropbox" / "claimed" / job_id
    (claim / "drop").mkdir(parents=True)
    (claim / "drop" / "a.wav").write_bytes(b"x")
    store.create(Job(job_id=job_id, inbox=inbox, claim_dir=str(claim)))
    path = {
        "done": ["queued", "preparing", "rendering", "encoding", "done"],
        "rejected": ["rejected"],
        "queued": ["queued"],
        "rendering": ["queued", "preparing", "rendering"],
    }[state]
    for to in path:
        store.transition(job_id, to)
    if ended_days_ago is not None:
        store.conn.execute(
            "UPDATE jobs SET finished_at = ?, created_at = ? WHERE job_id = ?",
            (NOW - ended_days_ago * DAY, NOW - 30 * DAY, job_id),
        )
    (cfg.daemon.outbox / job_id / "result.mp4").write_bytes(b"v")
    return store.get(job_id)


def test_retention_removes_exactly_the_expired_jobs(tmp_path) -> None:  # noqa: ANN001
    cfg = make_cfg(tmp_path)
    assert [i.keep_days for i in cfg.inbox] == [7.0, 3.0]
    store = SqliteStore(sqlite_path(cfg), Outbox(cfg.daemon.outbox))
    add_job(store, cfg, "old-done", "main", "done", 8)
    add_job(store, cfg, "young-done", "main", "done", 6)
    add_job(store, cfg, "old-rejected", "main", "rejected", 30)
    add_job(store, cfg, "smoke-4d", "smoke", "done", 4)
    add_job(store, cfg, "smoke-2d", "smoke", "done", 2)
    add_job(store, cfg, "old-queued", "main", "queued", None)
    add_job(store, cfg, "old-running", "main", "rendering", None)
    gone = retention.purge(store, cfg, now=NOW)
    assert sorted(gone) == ["old-done", "old-rejected", "smoke-4d"]
    left = {j.job_id for j in store.jobs(limit=100)}
    assert left == {"young-done", "smoke-2d", "old-queued", "old-running"}
    for job_id in gone:
        assert not (cfg.daemon.outbox / job_id).exists()
        assert not list(tmp_path.glob(f"*/.dropbox/claimed/{job_id}"))
        assert store.events(job_id) == []
    for job_id in left:
        assert (cfg.daemon.outbox / job_id / "result.mp4").exists()
        assert list(tmp_path.glob(f"*/.dropbox/claimed/{job_id}/drop/a.wav"))
    assert retention.purge(store, cfg, now=NOW) == []  # idempotent


def test_backup_restores_to_a_working_database(tmp_path) -> None:  # noqa: ANN001
    cfg = make_cfg(tmp_path, retention={"backups_keep": 2})
    store = SqliteStore(sqlite_path(cfg), Outbox(cfg.daemon.outbox))
    for n in range(3):
        add_job(store, cfg, f"j{n}", "main", "done", 1)
    dests = [retention.backup(store, cfg, now=NOW + k) for k in range(3)]
    kept = sorted((cfg.daemon.state_dir / "backups").glob("jobs-*.sqlite3"))
    assert kept == dests[1:]  # the oldest went
    store.close()
    sqlite_path(cfg).unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(sqlite_path(cfg)) + suffix).unlink(missing_ok=True)
    dests[-1].replace(sqlite_path(cfg))  # the operator's restore: copy a backup into place
    restored = SqliteStore(sqlite_path(cfg), Outbox(cfg.daemon.outbox))
    assert restored.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(j.job_id for j in restored.jobs()) == ["j0", "j1", "j2"]
    assert len(restored.events("j1")) == 6
    restored.transition("j1", "queued")  # and it works as a store


def test_health_evaluation(tmp_path) -> None:  # noqa: ANN001
    cfg = make_cfg(tmp_path)
    for i in cfg.inbox:
        i.path.mkdir(parents=True)
    view = health.DaemonView(worker_state="idle", ready=True, loop_tick=100.0, pass_done=100.0)
    plenty = {"outbox": 50 << 30, "state": 50 << 30}
    assert health.evaluate(view, cfg, plenty, 101.0) == ("ok", [])
    status, why = health.evaluate(view, cfg, plenty, 100.0 + cfg.health.loop_stall_seconds + 1)
    assert status == "failing" and "main loop silent" in why[0]
    status, why = health.evaluate(view, cfg, {"outbox": 100 << 20, "state": 50 << 30}, 101.0)
    assert status == "degraded" and "outbox has 100 MiB free" in why[0]  # no restart loop
    assert "no new jobs are taken" in why[0]
    assert health.holding({"outbox": 100 << 20, "state": 50 << 30}, cfg) == "outbox 100 MiB free"
    # passes that keep failing before dispatch: degraded with why, while the loop still runs
    view.loop_tick, view.pass_done, view.pass_error = 170.0, 100.0, "RecursionError: deep"
    status, why = health.evaluate(view, cfg, plenty, 171.0)
    assert status == "degraded" and "RecursionError: deep" in why[0], why
    view.loop_tick = view.pass_done = 171.0
    view.pass_error = None
    assert health.evaluate(view, cfg, plenty, 172.0) == ("ok", [])  # recovered
    view.loop_tick = view.pass_done = 100.0
    status, why = health.evaluate(view, cfg, {"outbox": 3 << 30, "state": 50 << 30}, 101.0)
    assert status == "degraded"
    view.worker_state = "dead"
    assert health.evaluate(view, cfg, plenty, 101.0)[0] == "failing"


@pytest.fixture
def notify_socket(tmp_path):  # noqa: ANN001, ANN201
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            return out


def test_notifier_abstract_namespace() -> None:
    name = f"dropbox-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1)
    try:
        assert Notifier("@" + name).ready("up")
        assert sock.recv(4096).decode().split("\n")[:2] == ["READY=1", "STATUS=up"]
    finally:
        sock.close()
    assert not Notifier("").watchdog()  # outside systemd: a no-op


def test_heartbeat_pings_the_watchdog_only_while_healthy(tmp_path, notify_socket) -> None:  # noqa: ANN001
    path, sock = notify_socket
    cfg = make_cfg(tmp_path, health={"disk_warn_bytes": 0, "disk_fail_bytes": 0})
    for i in cfg.inbox:
        i.path.mkdir(parents=True)
    cfg.daemon.outbox.mkdir(parents=True)
    SqliteStore(sqlite_path(cfg), Outbox(cfg.daemon.outbox)).close()
    view = health.DaemonView(worker_state="idle", ready=True, loop_tick=time.monotonic())
    sched = Scheduler(cfg, view, Metrics(), Notifier(path))
    sched.heartbeat()
    msgs = received(sock)
    assert "WATCHDOG=1" in msgs and "STATUS=idle, 0 queued" in msgs
    beat = json.loads((cfg.daemon_dir / "health.json").read_text())
    assert beat["status"] == "ok" and beat["worker"]["state"] == "idle"
    view.loop_tick = time.monotonic() - cfg.health.loop_stall_seconds - 5  # the main loop hangs
    sched.heartbeat()
    assert "WATCHDOG=1" not in received(sock)
    beat = json.loads((cfg.daemon_dir / "health.json").read_text())
    assert beat["status"] == "failing" and "main loop silent" in beat["reasons"][0]
    assert sqlite3.connect(sqlite_path(cfg)).execute("SELECT 1").fetchone() == (1,)


def test_a_long_retention_run_does_not_hold_the_heartbeat_back(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Retention and backups have a thread of their own: while a purge takes its time (a
    slow share, a million claim folders), health.json is still rewritten every beat."""
    import datetime as dt
    import threading

    cfg = make_cfg(
        tmp_path, health={"heartbeat_seconds": 0.2, "disk_warn_bytes": 0, "disk_fail_bytes": 0}
    )
    for i in cfg.inbox:
        i.path.mkdir(parents=True)
    cfg.daemon.outbox.mkdir(parents=True)
    SqliteStore(sqlite_path(cfg), Outbox(cfg.daemon.outbox)).close()  # the daemon makes it first
    release, purging = threading.Event(), threading.Event()

    def slow_purge(store, cfg):  # noqa: ANN001, ANN202
        purging.set()
        release.wait(20)
        return []

    monkeypatch.setattr(retention, "purge", slow_purge)
    view = health.DaemonView(worker_state="idle", ready=True)
    sched = Scheduler(cfg, view, Metrics(), Notifier(""))
    sched.start()
    try:
        sched.sched.modify_job("retention", next_run_time=dt.datetime.now(dt.UTC))
        assert purging.wait(10)
        path = cfg.daemon_dir / "health.json"
        deadline = time.monotonic() + 5
        while not path.exists():
            assert time.monotonic() < deadline, "no first heartbeat"
            time.sleep(0.05)
        first = json.loads(path.read_text())["written_at"]
        while json.loads(path.read_text())["written_at"] == first:
            assert time.monotonic() < deadline, "no heartbeat while retention ran"
            time.sleep(0.05)
    finally:
        release.set()
        sched.stop()
