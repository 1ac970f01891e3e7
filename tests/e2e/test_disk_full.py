"""A full outbox: the job fails `disk_full`, the daemon keeps serving and recovers once space is back."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import put_file, put_manifest, wait_for


@contextlib.contextmanager
def small_disk(d, folder: Path, size: str) -> Iterator[None]:  # noqa: ANN001
    """`folder` of daemon `d` on a tmpfs of `size` (the test skips where mount is refused);
    afterwards the daemon is stopped and the file system unmounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        yield
    finally:
        if d.alive():
            d.stop()
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, kib: int | None = None) -> Path:
    """A file of `kib` KiB in `folder` (None: all the space left); its path."""
    filler = folder / "filler"
    if kib is None:
        st = os.statvfs(folder)
        kib = st.f_bavail * st.f_frsize // 1024
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=1k", f"count={kib}"], capture_output=True
    )
    return filler


def db_job(d, job_id: str) -> dict | None:  # noqa: ANN001
    r = d.cli("jobs", "--json", "--limit", "100")
    return next((j for j in json.loads(r.stdout) if j["job_id"] == job_id), None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small file system")
def test_full_outbox_fails_disk_full_then_recovers(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(sections={"health": {"disk_warn_bytes": 0, "disk_fail_bytes": 0}})
    with small_disk(d, d.outbox, "4m"):
        filler = fill(d.outbox, 3900)
        d.start()
        put_file(d.inbox / "a.wav", media.tone_long)
        put_file(d.inbox / "t.png", media.big_image)
        put_manifest(
            d.inbox / "full.json", {"job_id": "full", "audio": "a.wav", "template": "t.png"}
        )
        job = wait_for(
            lambda: (j := db_job(d, "full")) and j["state"] in ("failed", "done") and j,
            90,
            "the job to end",
            d,
        )
        assert job["state"] == "failed" and job["error"]["code"] == "disk_full", job
        assert "retry" in job["error"]["hint"]
        assert d.alive()
        kept = list((d.inbox / ".dropbox" / "claimed").glob("*/drop/a.wav"))
        assert kept, "the drop's files stay in the claim folder"
        assert not [p for p in d.outbox.glob("full/.*.partial")]
        filler.unlink()  # space is back
        put_file(d.inbox / "b.wav", media.tone)
        put_file(d.inbox / "u.png", media.image)
        put_manifest(
            d.inbox / "next.json", {"job_id": "next", "audio": "b.wav", "template": "u.png"}
        )
        assert d.wait_state("next", timeout=60)["state"] == "done"
        assert d.cli("retry", "full").returncode == 0
        assert d.wait_state("full", "done", timeout=120)["state"] == "done"
        db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert d.task("full")["state"] == "done" == db_job(d, "full")["state"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small file system")
def test_full_state_folder_is_survived_and_recovered(daemon_factory, media) -> None:  # noqa: ANN001
    # thresholds off: this is about the writes that fail (the next test: the thresholds)
    d = daemon_factory(sections={"health": {"disk_warn_bytes": 0, "disk_fail_bytes": 0}})
    with small_disk(d, d.state, "8m"):
        d.start()
        filler = fill(d.state)
        put_file(d.inbox / "s.wav", media.tone)
        put_file(d.inbox / "s.png", media.image)
        put_manifest(
            d.inbox / "statefull.json",
            {"job_id": "statefull", "audio": "s.wav", "template": "s.png"},
        )
        wait_for(
            lambda: (
                "tried again at the next rescan" in d.log_text()
                or "cannot record" in d.log_text()
                or d.task("statefull") is not None
            ),
            60,
            "the daemon to meet the full state folder",
            d,
        )
        assert d.alive()
        filler.unlink()  # space is back
        assert d.wait_state("statefull", "done", timeout=90)["state"] == "done"
        db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # task.json is written inside the transaction, just before its commit
        wait_for(
            lambda: (
                db.execute("SELECT state FROM jobs WHERE job_id = 'statefull'").fetchone()
                == ("done",)
            ),
            10,
            "the database to record done",
            d,
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small file system")
def test_disk_under_the_fail_threshold_holds_new_work_without_a_restart(
    daemon_factory, media
) -> None:  # noqa: ANN001
    """Under disk_fail_bytes free the daemon takes no new job, says why in health.json (degraded,
    not failing: a watchdog restart would kill the render and free nothing) and goes on once
    there is room."""
    d = daemon_factory(
        sections={
            "health": {"heartbeat_seconds": 0.5, "disk_warn_bytes": 0, "disk_fail_bytes": 4 << 20}
        }
    )
    with small_disk(d, d.state, "16m"):
        filler = fill(d.state, 14 << 10)
        d.start()
        health = lambda: json.loads((d.daemon_dir / "health.json").read_text())  # noqa: E731
        wait_for(
            lambda: "no new jobs are taken" in " ".join(health()["reasons"]), 20, "disk low", d
        )
        assert health()["status"] == "degraded"
        put_file(d.inbox / "h.wav", media.tone)
        put_file(d.inbox / "h.png", media.image)
        put_manifest(
            d.inbox / "held.json", {"job_id": "held", "audio": "h.wav", "template": "h.png"}
        )
        dropped = time.time()
        # heartbeats 2 s after the drop (the main loop passes ten times a second meanwhile)
        wait_for(
            lambda: (
                dt.datetime.fromisoformat(health()["written_at"].replace("Z", "+00:00")).timestamp()
                > dropped + 2
            ),
            20,
            "two seconds of heartbeats after the drop",
            d,
        )
        assert (d.inbox / "held.json").exists() and d.task("held") is None  # it waits
        filler.unlink()
        assert d.wait_state("held", "done", timeout=60)["state"] == "done"
        assert d.alive()
