"""Soak: a long stream of drops with kill -9 of the daemon at random moments, a reader polling the
outbox throughout. Every job must end done exactly once, no file torn, none lost.
Writes the figures into docs/reliability.md (`make soak`; JOBS and KILLS from the environment)."""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import av
from common import ROOT, DaemonProc, make_image, make_tone, put_file, put_manifest, wait_for

JOBS = int(os.environ.get("JOBS", "150"))
KILLS = int(os.environ.get("KILLS", "15"))
DOC = ROOT / "docs" / "reliability.md"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio = make_tone(root / "a.wav", 1.0).read_bytes()
        image = make_image(root / "i.png", "160x120").read_bytes()
        d = DaemonProc(root / "d").start()
        torn: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                for p in list(d.outbox.glob("*/task.json")):
                    try:
                        json.loads(p.read_text())
                    except ValueError:
                        torn.append(str(p))
                    except OSError:
                        pass
                for p in list(d.outbox.glob("*/result.mp4")):
                    try:
                        with av.open(str(p)) as c:
                            if not c.duration:
                                torn.append(str(p))
                    except (OSError, av.FFmpegError):
                        if p.exists():
                            torn.append(str(p))

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        kill_after = set(random.Random(11).sample(range(3, JOBS), KILLS))
        t0 = time.monotonic()
        for i in range(JOBS):
            job = f"soak{i:04d}"
            put_file(d.inbox / f"{job}.wav", audio)
            put_file(d.inbox / f"{job}.png", image)
            put_manifest(d.inbox / f"{job}.json", {"job_id": job, "audio": f"{job}.wav", "template": f"{job}.png"})
            if i in kill_after:
                d.kill9()
                d.start()
        wait_for(lambda: all((x := d.task(f"soak{i:04d}")) and x["state"] == "done" for i in range(JOBS)),
                 3600, "every soak job done", d)
        took = time.monotonic() - t0
        stop.set()
        t.join(5)
        db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
        ends = dict(db.execute("SELECT job_id, COUNT(*) FROM events WHERE to_state = 'done' GROUP BY job_id"))
        retried = db.execute("SELECT COUNT(*) FROM jobs WHERE attempts > 1").fetchone()[0]
        claims = len(list((d.inbox / ".dropbox" / "claimed").iterdir()))
        d.stop()
    losses = JOBS - sum(1 for v in ends.values() if v == 1)
    figures = (f"Last soak run ({time.strftime('%Y-%m-%d')}, `make soak`): {JOBS} jobs, {KILLS} kill -9 of the "
               f"daemon at random points, {took:.0f} s; jobs done exactly once: {len(ends)}; re-run after a kill: "
               f"{retried}; claims kept: {claims}; torn files seen by the reader: {len(torn)}; **losses: {losses}**.")
    text = DOC.read_text()
    text = re.sub(r"<!-- soak -->.*?<!-- /soak -->", f"<!-- soak -->\n{figures}\n<!-- /soak -->", text, flags=re.S)
    DOC.write_text(text)
    print(figures)
    assert losses == 0 and not torn


if __name__ == "__main__":
    main()
