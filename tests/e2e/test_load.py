"""Acceptance: 200 drops made at once each end done or rejected exactly once."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

from support import put_file, put_manifest, wait_for

N = 200
BAD_EVERY = 4  # one drop in four is invalid


def test_200_drops_at_once(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory().start()
    audio, image = media.tone_short.read_bytes(), media.tiny_image.read_bytes()

    def write(n: int) -> None:
        put_file(d.inbox / f"l{n}.wav", audio)
        put_file(d.inbox / f"l{n}.png", image)
        m = {
            "job_id": f"load-{n:03d}",
            "audio": f"l{n}.wav",
            "template": f"l{n}.png",
            "engine": "passthrough",
        }
        if n % BAD_EVERY == 0:
            m["template"] = f"l{n}-missing.png"
        put_manifest(d.inbox / f"l{n}.json", m)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(N)))

    def finished() -> list[dict]:
        tasks = [t for t in d.tasks() if t["state"] in ("done", "rejected")]
        return tasks if len(tasks) >= N else []

    tasks = wait_for(finished, 600, f"{N} jobs to end", d)
    assert len(tasks) == N
    assert len(list(d.outbox.glob("load-*/task.json"))) == N
    states = {t["job_id"]: t["state"] for t in tasks}
    for n in range(N):
        assert states[f"load-{n:03d}"] == ("rejected" if n % BAD_EVERY == 0 else "done"), n
    db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == N
    ends = dict(
        db.execute(
            "SELECT job_id, COUNT(*) FROM events WHERE to_state IN ('done','rejected','failed') GROUP BY job_id"
        ).fetchall()
    )
    assert len(ends) == N and set(ends.values()) == {1}
    # every drop was taken from the inbox; only the images no manifest named stay
    left = sorted(p.name for p in d.inbox.glob("l*"))
    assert left == sorted(f"l{n}.png" for n in range(0, N, BAD_EVERY))
