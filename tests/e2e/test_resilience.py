"""Faults and scale: double SIGTERM, a vanishing inbox, a crash mid-transaction, a corrupt task.json,
1,000 drops from 8 writers, three daemons sharing one inbox, kill -9 at random moments."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support import DaemonProc, OutboxReader, put_file, put_manifest, wait_for


def drop(inbox: Path, job_id: str, audio: bytes, image: bytes, valid: bool = True) -> None:
    put_file(inbox / f"{job_id}.wav", audio)
    put_file(inbox / f"{job_id}.png", image)
    put_manifest(
        inbox / f"{job_id}.json",
        {
            "job_id": job_id,
            "audio": f"{job_id}.wav",
            "template": f"{job_id}.png" if valid else "missing.png",
        },
    )


def test_double_sigterm_stops_at_once_and_loses_nothing(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(daemon={"stop_timeout_seconds": 60.0}).start()
    drop(d.inbox, "twice", media.tone_95.read_bytes(), media.big_image.read_bytes())
    d.wait_state("twice", {"rendering"}, timeout=60)
    d.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping: waiting up to" in d.log_text(), 10, "the graceful stop to begin", d)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0  # long before the 60 s stop timeout
    task = d.task("twice")
    assert task["state"] == "queued" and not list((d.outbox / "twice").glob(".*.partial"))
    assert list((d.inbox / ".dropbox" / "claimed").glob("*/drop/twice.wav"))


def test_inbox_disappears_and_comes_back(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(daemon={"rescan_seconds": 0.5}).start()
    away = d.root / "unmounted"
    d.inbox.rename(away)
    wait_for(lambda: "has disappeared" in d.log_text(), 20, "the daemon to notice", d)
    assert d.alive()
    away.rename(d.inbox)
    wait_for(
        lambda: "is back; watching it again" in d.log_text(), 20, "the inbox to be watched again", d
    )
    drop(d.inbox, "back", media.tone.read_bytes(), media.image.read_bytes())
    assert d.wait_state("back", timeout=60)["state"] == "done"


def test_start_after_a_crash_in_the_middle_of_a_transaction(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory().start()
    drop(d.inbox, "before", media.tone.read_bytes(), media.image.read_bytes())
    d.wait_state("before", "done", timeout=60)
    d.stop()
    crash = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN IMMEDIATE'); "
        "c.execute(\"UPDATE jobs SET state = 'failed' WHERE job_id = 'before'\"); "
        "c.execute(\"INSERT INTO events (job_id, at, to_state) VALUES ('ghost', 0, 'queued')\"); "
        "os._exit(9)"
    )
    assert (
        subprocess.run([sys.executable, "-c", crash, str(d.state / "jobs.sqlite3")]).returncode == 9
    )
    d.start()
    db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
    assert db.execute("SELECT state FROM jobs WHERE job_id = 'before'").fetchone() == ("done",)
    assert db.execute("SELECT COUNT(*) FROM events WHERE job_id = 'ghost'").fetchone() == (0,)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    drop(d.inbox, "after", media.tone.read_bytes(), media.image.read_bytes())
    assert d.wait_state("after", timeout=60)["state"] == "done"


def test_corrupt_task_json_is_survived_and_rewritten(daemon, media) -> None:  # noqa: ANN001
    drop(daemon.inbox, "torn", media.tone.read_bytes(), media.image.read_bytes())
    daemon.wait_state("torn", "done", timeout=60)
    (daemon.outbox / "torn" / "task.json").write_text('{"job_id": "torn", "sta')
    r = daemon.cli("show", "torn")
    assert r.returncode == 0 and '"state": "done"' in r.stdout and "unreadable" in r.stderr
    put_file(daemon.inbox / "t2.wav", media.tone)
    put_file(daemon.inbox / "t2.png", media.image)
    put_manifest(
        daemon.inbox / "t2.json",
        {"job_id": "torn", "audio": "t2.wav", "template": "t2.png", "replace": True},
    )
    wait_for(
        lambda: (
            (t := daemon.task("torn"))
            and t["inputs"]
            and t["inputs"][0]["name"] == "t2.wav"
            and t["state"] == "done"
        ),
        60,
        "the re-run to rewrite task.json",
        daemon,
    )


def test_1000_drops_from_8_writers(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory().start()
    audio, image = media.tone_short.read_bytes(), media.tiny_image.read_bytes()
    n = 1000
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda i: drop(d.inbox, f"k{i:04d}", audio, image, valid=i % 5 != 0), range(n))
        )
    tasks = wait_for(
        lambda: (
            (t := [x for x in d.tasks() if x["state"] in ("done", "rejected")])
            and len(t) >= n
            and t
        ),
        900,
        "1000 jobs to end",
        d,
    )
    assert len(tasks) == n and len({t["job_id"] for t in tasks}) == n
    db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
    ends = db.execute(
        "SELECT job_id, COUNT(*) FROM events WHERE to_state IN ('done', 'rejected', 'failed') "
        "GROUP BY job_id"
    ).fetchall()
    assert len(ends) == n and {c for _, c in ends} == {1}
    assert sum(t["state"] == "rejected" for t in tasks) == n // 5


def test_three_daemons_share_one_inbox_and_one_is_killed(tmp_path, media) -> None:  # noqa: ANN001
    inbox, outbox = tmp_path / "shared-inbox", tmp_path / "shared-outbox"
    inbox.mkdir()
    daemons = [
        DaemonProc(
            tmp_path / f"host{i}",
            inbox={"path": str(inbox)},
            daemon={"outbox": str(outbox), "host": f"host{i}"},
        )
        for i in range(3)
    ]
    try:
        for dm in daemons:
            dm.start()
        audio, image = media.tone_short.read_bytes(), media.tiny_image.read_bytes()
        n = 300
        for i in range(n):
            drop(inbox, f"s{i:03d}", audio, image)
            if i == 100:
                daemons[1].kill9()  # a host dies with jobs claimed and running
        daemons[1].start()  # it comes back and finishes what it had claimed

        def ended() -> list:  # noqa: ANN202
            out = []
            for p in outbox.glob("s*/task.json"):
                try:
                    t = json.loads(p.read_text())
                except ValueError:
                    continue
                if t["state"] in ("done", "failed", "rejected", "duplicate"):
                    out.append(t)
            return out if len(out) >= n else []

        tasks = wait_for(ended, 600, "300 jobs to end across three daemons", daemons[0])
        assert sorted(t["job_id"] for t in tasks) == [f"s{i:03d}" for i in range(n)]
        assert all(t["state"] == "done" for t in tasks), [t for t in tasks if t["state"] != "done"][
            :3
        ]
        assert not list(outbox.glob("*.dup-*"))  # no drop was taken twice
        hosts = {t["host"] for t in tasks}
        assert len(hosts) >= 2  # the work was shared
        claims = list((inbox / ".dropbox" / "claimed").iterdir())
        assert len(claims) == n  # one claim per drop, none lost
    finally:
        for dm in daemons:
            if dm.alive():
                dm.stop()


def test_kill9_at_random_moments_while_a_reader_watches(daemon_factory, media) -> None:  # noqa: ANN001
    # each restart waits until the daemon is up, so a kill can land on the oldest job every
    # time: five kills may interrupt one job five times, and each interruption is an attempt
    d = daemon_factory(daemon={"max_attempts": 10}).start()
    audio, image = media.tone.read_bytes(), media.image.read_bytes()
    n = 50
    kill_after = set(
        random.Random(7).sample(range(3, n), 5)
    )  # the daemon is mid-claim, mid-render, ...
    with OutboxReader(d.outbox) as reader:
        for i in range(n):
            drop(d.inbox, f"r{i:02d}", audio, image)
            if i in kill_after:
                d.kill9()
                d.start()

        def all_done() -> bool:
            return all((x := d.task(f"r{i:02d}")) and x["state"] == "done" for i in range(n))

        wait_for(all_done, 300, "50 jobs done despite the kills", d)
    assert reader.torn == []
    db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == n
    ends = db.execute(
        "SELECT job_id, COUNT(*) FROM events WHERE to_state = 'done' GROUP BY job_id"
    ).fetchall()
    assert len(ends) == n and {c for _, c in ends} == {1}
    assert not [p for p in d.outbox.glob("*/.*.partial")]


def test_a_claim_half_made_before_a_crash_is_cleared_and_the_drop_taken(
    daemon_factory, media
) -> None:  # noqa: ANN001
    d = daemon_factory(daemon={"instance": "solo"})
    half = d.inbox / ".dropbox" / "claimed" / "20261125T000000-00000000aa"
    (half / "drop").mkdir(parents=True)  # kill -9 between creating the claim and moving in
    owner = {"instance": "solo", "generation": 1, "source": "h.json", "job_folder": False}
    (half / "owner.json").write_text(json.dumps(owner))
    drafted = half.with_name("20261125T000000-00000000bb")  # killed inside owner.json's write
    (drafted / "drop").mkdir(parents=True)
    (drafted / ".owner.json.777.tmp").write_text(json.dumps(owner))
    draft = half.with_name(".draft-20261125T000000-00000000cc.solo")  # killed before its rename
    draft.mkdir()
    peers = half.with_name(".draft-20261125T000000-00000000dd.peer")  # a live peer's, being made
    (peers / "drop").mkdir(parents=True)
    drop(d.inbox, "h", media.tone.read_bytes(), media.image.read_bytes())
    d.start()
    assert d.wait_state("h", timeout=60)["state"] == "done"
    assert not half.exists() and not drafted.exists() and not draft.exists()
    assert d.log_text().count("a crash left it empty") == 2
    assert d.log_text().count("a crash left this claim folder half made") == 1
    assert peers.exists()  # not this instance's, and too young to be a crash's leftover
    assert len(list((d.inbox / ".dropbox" / "claimed").iterdir())) == 2
