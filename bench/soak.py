"""Soak: a long stream of drops with kill -9 of the daemon at random moments, a reader polling the
outbox throughout. Every job must end done exactly once, no file torn, none lost.
Writes the figures into docs/reliability.md (`make soak`; JOBS and KILLS from the environment)."""

from __future__ import annotations

import os
import random
import re
import sqlite3
import tempfile
import time
from pathlib import Path

from common import ROOT, DaemonProc, make_image, make_tone, put_file, put_manifest, wait_for
from support import OutboxReader

JOBS = int(os.environ.get("JOBS", "150"))
KILLS = int(os.environ.get("KILLS", "15"))
DOC = ROOT / "docs" / "reliability.md"


def burst(n: int = 1000) -> tuple[int, float]:
    """n drops from 8 concurrent writers, 1 in 5 invalid: seconds until every one has ended once."""
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio = make_tone(root / "a.wav", 0.5).read_bytes()
        image = make_image(root / "i.png", "64x48").read_bytes()
        d = DaemonProc(root / "d").start()

        def write(i: int) -> None:
            job = f"b{i:04d}"
            put_file(d.inbox / f"{job}.wav", audio)
            put_file(d.inbox / f"{job}.png", image)
            tpl = f"{job}.png" if i % 5 else "missing.png"
            put_manifest(
                d.inbox / f"{job}.json", {"job_id": job, "audio": f"{job}.wav", "template": tpl}
            )

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(n)))
        db = d.state / "jobs.sqlite3"

        def ended() -> bool:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            rows = con.execute(
                "SELECT job_id, COUNT(*) FROM events WHERE to_state IN ('done', 'rejected') "
                "GROUP BY job_id"
            ).fetchall()
            con.close()
            return len(rows) == n and all(c == 1 for _, c in rows)

        wait_for(ended, 1800, "the burst to end", d)
        took = time.monotonic() - t0
        d.stop()
    return n, took


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio = make_tone(root / "a.wav", 1.0).read_bytes()
        image = make_image(root / "i.png", "160x120").read_bytes()
        d = DaemonProc(root / "d").start()
        kill_after = set(random.Random(11).sample(range(3, JOBS), KILLS))
        t0 = time.monotonic()
        with OutboxReader(d.outbox) as reader:
            for i in range(JOBS):
                job = f"soak{i:04d}"
                put_file(d.inbox / f"{job}.wav", audio)
                put_file(d.inbox / f"{job}.png", image)
                put_manifest(
                    d.inbox / f"{job}.json",
                    {"job_id": job, "audio": f"{job}.wav", "template": f"{job}.png"},
                )
                if i in kill_after:
                    d.kill9()
                    d.start()
            wait_for(
                lambda: all(
                    (x := d.task(f"soak{i:04d}")) and x["state"] == "done" for i in range(JOBS)
                ),
                3600,
                "every soak job done",
                d,
            )
            took = time.monotonic() - t0
        torn = reader.torn
        db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
        ends = dict(
            db.execute(
                "SELECT job_id, COUNT(*) FROM events WHERE to_state = 'done' GROUP BY job_id"
            )
        )
        retried = db.execute("SELECT COUNT(*) FROM jobs WHERE attempts > 1").fetchone()[0]
        claims = len(list((d.inbox / ".dropbox" / "claimed").iterdir()))
        d.stop()
    burst_n, burst_s = burst()
    losses = JOBS - sum(1 for v in ends.values() if v == 1)
    figures = (
        f"Last soak run ({time.strftime('%Y-%m-%d')}, `make soak`): {JOBS} jobs, {KILLS} kill -9 of the "
        f"daemon at random points, {took:.0f} s; jobs done exactly once: {len(ends)}; re-run after a kill: "
        f"{retried}; claims kept: {claims}; torn files seen by the reader: {len(torn)}; **losses: {losses}**. "
        f"Burst: {burst_n} drops written at once by 8 writers (1 in 5 invalid) all ended exactly once "
        f"in {burst_s:.0f} s."
    )
    text = DOC.read_text()
    text = re.sub(
        r"<!-- soak -->.*?<!-- /soak -->",
        f"<!-- soak -->\n{figures}\n<!-- /soak -->",
        text,
        flags=re.S,
    )
    DOC.write_text(text)
    print(figures)
    assert losses == 0 and not torn


if __name__ == "__main__":
    main()
