"""The daemon's parts (claiming, supervise, outcomes) driven in this process, one pass at a
time with an injected clock, on a real store, inbox, outbox and worker process. The e2e
tests drive the same parts through `dropbox-daemon run`."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for

from dropbox_daemon import config
from dropbox_daemon.daemon import Daemon
from dropbox_daemon.supervise import Current


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    data = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "outbox": str(tmp_path / "outbox"),
            "rescan_seconds": 3600.0,  # the test runs each part itself
            "job_timeout_seconds": 100.0,
            "max_attempts": 2,
        },
        "inbox": [
            {
                "name": "default",
                "path": str(tmp_path / "inbox"),
                "settle_seconds": 2.0,
                "engine": "passthrough",
            }
        ],
    }
    d = Daemon(config.from_dict(data, source=tmp_path / "config.toml", env={}))
    d.start()
    try:
        yield d
    finally:
        d.flags.stop = True
        d.stop()
        d.watcher.stop()
        d.store.close()  # type: ignore[union-attr]


def claim_with_the_worker_idle(daemon: Daemon) -> None:
    """One pass of claiming (the drop settled, then pulled), and the worker ready for it."""
    daemon.claiming.rescan()
    daemon.claiming.take_settled(0.0)
    daemon.claiming.take_settled(10.0)
    daemon.claiming.pull(10.0)
    wait_for(
        lambda: daemon.supervisor.handle_worker(time.time()) or daemon.worker.state == "idle",
        60,
        "the worker",
    )


def put_drop(inbox: Path, media, job_id: str) -> Path:  # noqa: ANN001
    folder = inbox / job_id
    folder.mkdir(parents=True)
    shutil.copy(media.tone, folder / "a.wav")
    shutil.copy(media.image, folder / "t.png")
    (folder / "job.json").write_text(
        json.dumps({"job_id": job_id, "audio": "a.wav", "template": "t.png"})
    )
    return folder


def worker_idle(daemon: Daemon) -> bool:
    daemon.supervisor.handle_worker(time.time())
    return daemon.worker.state == "idle"


def queued(daemon: Daemon) -> None:
    """The drop in the inbox claimed and queued (settled at once on the test's clock), and
    the worker ready for it."""
    daemon.claiming.rescan()
    daemon.claiming.take_settled(0.0)
    daemon.claiming.take_settled(10.0)
    daemon.claiming.pull(10.0)
    wait_for(lambda: worker_idle(daemon), 60, "the worker to be ready")


def test_a_drop_is_claimed_only_once_it_has_settled(daemon: Daemon, media) -> None:  # noqa: ANN001
    put_drop(daemon.cfg.inbox[0].path, media, "s1")
    t = 1000.0
    daemon.claiming.rescan()
    daemon.claiming.take_settled(t)  # first sight: the clock starts
    daemon.claiming.take_settled(t + 1.9)
    assert daemon.store.get("s1") is None and not daemon.farm.ready  # type: ignore[union-attr]
    daemon.claiming.take_settled(t + 2.0)
    assert len(daemon.farm.ready) == 1
    daemon.claiming.pull(t + 2.0)
    job = daemon.store.get("s1")  # type: ignore[union-attr]
    assert job is not None and job.state == "queued" and not daemon.farm.ready


def test_a_job_past_its_time_limit_is_requeued_then_failed_with_the_workers_output(
    daemon: Daemon, media
) -> None:  # noqa: ANN001
    put_drop(daemon.cfg.inbox[0].path, media, "slow")
    claim_with_the_worker_idle(daemon)
    for attempt in (1, 2):
        now = time.time()
        daemon.supervisor.dispatch(now)
        assert isinstance(daemon.current, Current) and daemon.current.job_id == "slow"
        daemon.current.started -= 101.0  # started 101 s ago (monotonic): past job_timeout_seconds
        daemon.supervisor.handle_worker(now)
        job = daemon.store.get("slow")  # type: ignore[union-attr]
        assert daemon.current is None and job.attempts == attempt
        if attempt == 1:
            assert job.state == "queued"
            wait_for(
                lambda: (
                    daemon.supervisor.handle_worker(time.time()) or daemon.worker.state == "idle"
                ),
                60,
                "a new worker",
            )
    assert job.state == "failed" and job.error["code"] == "worker_failed"
    assert "passed its time limit of 100 s (attempt 2 of 2)" in job.error["message"]
    assert (daemon.outbox.job_dir("slow") / "input" / "a.wav").exists()  # kept for a re-drop


def test_a_wall_clock_step_does_not_kill_a_healthy_render(daemon: Daemon, media) -> None:  # noqa: ANN001
    """Time limits run on the monotonic clock: the wall clock stepped 3 hours on (NTP, an
    operator) is not 3 hours of render, nor of silence from the worker."""
    put_drop(daemon.cfg.inbox[0].path, media, "stepped")
    claim_with_the_worker_idle(daemon)
    now = time.time()
    daemon.supervisor.dispatch(now)
    assert isinstance(daemon.current, Current) and daemon.current.job_id == "stepped"
    daemon.supervisor.handle_worker(now + 3 * 3600.0)
    job = daemon.store.get("stepped")  # type: ignore[union-attr]
    assert job.attempts == 1 and job.state != "queued" and not job.error, job
    assert daemon.worker.state != "dead"
    wait_for(
        lambda: daemon.supervisor.handle_worker(time.time()) or daemon.current is None,
        60,
        "the job to end",
    )
    assert daemon.store.get("stepped").state == "done"  # type: ignore[union-attr]


def test_a_cancel_reaches_the_worker_and_ends_the_job_cancelled(daemon: Daemon, media) -> None:  # noqa: ANN001
    folder = put_drop(daemon.cfg.inbox[0].path, media, "c1")
    shutil.copy(media.tone_long, folder / "a.wav")  # 20 s at 1280x720: seconds of work
    shutil.copy(media.big_image, folder / "t.png")
    queued(daemon)
    daemon.supervisor.dispatch(time.time())
    store = daemon.store
    assert store is not None

    def rendering() -> bool:
        daemon.supervisor.handle_worker(time.time())
        return store.get("c1").state == "rendering"  # type: ignore[union-attr]

    wait_for(rendering, 60, "the render to start")
    store.update("c1", cancel_requested=1)
    daemon.supervisor.handle_cancels(time.time())
    assert daemon.current is not None and daemon.current.cancel_sent_at is not None

    def ended() -> bool:
        daemon.supervisor.handle_worker(time.time())
        return daemon.current is None

    wait_for(ended, 30, "the worker to stop the job")
    job = store.get("c1")
    assert job is not None and job.state == "cancelled"
    assert not list(daemon.outbox.job_dir("c1").glob(".*.partial"))


def test_a_worker_that_dies_before_it_is_ready_is_restarted_with_back_off(daemon: Daemon) -> None:
    import os
    import signal

    from dropbox_daemon import supervise

    assert [supervise.restart_delay(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    wait_for(lambda: worker_idle(daemon), 60, "the worker to be ready")

    def kill_and_see(state: str) -> None:
        pid = daemon.worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not daemon.worker.alive(), 10, "the worker gone")
        daemon.supervisor.handle_worker(time.time())
        assert daemon.worker.state == state, daemon.worker.state

    kill_and_see("starting")  # it had been ready: a crash mid-life restarts at once
    kill_and_see("restarting")  # died while starting: held back 1 s
    assert daemon.view.ready  # the daemon stays up; health says degraded, not failing
    t0 = time.monotonic()
    wait_for(
        lambda: daemon.supervisor.handle_worker(time.time()) or daemon.worker.state == "starting",
        10,
        "the held-back start",
    )
    assert 0.8 <= time.monotonic() - t0 <= 3.0
    kill_and_see("restarting")  # twice in a row: 2 s
    held = daemon.supervisor.restart_at - time.monotonic()  # type: ignore[operator]
    assert 1.5 <= held <= 2.1, held
    wait_for(lambda: worker_idle(daemon), 60, "a worker ready again")
    assert daemon.supervisor.early_deaths == 0  # ready: the count starts over
