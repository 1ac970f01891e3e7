"""The jobs API with 10,000 jobs in the database: latency of the list and record endpoints."""

from __future__ import annotations

import socket
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import DaemonProc, percentile, wait_for, write_section

from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import Job, SqliteStore

N = 10_000
REQUESTS = 200


def fill(state_dir: Path, outbox: Path) -> None:
    """10,000 finished jobs, written straight into the store's table (the fast way for a bench)."""
    store = SqliteStore(state_dir / "jobs.sqlite3", Outbox(outbox))
    rows = []
    now = time.time()
    for n in range(N):
        state = ("done", "failed", "rejected", "cancelled")[n % 4]
        job = Job(
            job_id=f"bulk-{n:05d}",
            seq=n + 1,
            inbox=("a", "b")[n % 2],
            state=state,
            engine="preview",
            trace_id=uuid.uuid4().hex,
            created_at=now - N + n,
            finished_at=now - N + n + 1,
            progress=1.0,
            timings={"total": 1.5},
            output={"name": "result.mp4", "duration": 10.0} if state == "done" else None,
            error={"code": "x", "message": "m", "hint": "h", "stage": "s"}
            if state != "done"
            else None,
        )
        rows.append(job.to_row())
    cols = list(rows[0])
    with store.transaction() as c:
        c.executemany(
            f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [tuple(r[k] for k in cols) for r in rows],
        )
    store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        d = DaemonProc(root / "d", sections={"http": {"listen": f"127.0.0.1:{port}"}})
        fill(d.state, d.outbox)
        d.start()
        base = f"http://127.0.0.1:{port}"
        rows = []
        try:
            with httpx.Client(base_url=base, timeout=10) as c:
                wait_for(lambda: c.get("/ready").status_code == 200, 60, "ready", d)
                # a middle page: the cursor after the first half, page by page (it is opaque)
                middle = None
                for _ in range(N // 2 // 500):
                    page = {"limit": 500, **({"before": middle} if middle else {})}
                    middle = c.get("/api/jobs", params=page).json()["next_before"]
                cases = {
                    "/api/jobs (newest 50)": {"limit": 50},
                    "/api/jobs?state=failed (50)": {"state": "failed", "limit": 50},
                    "/api/jobs?inbox=b (50)": {"inbox": "b", "limit": 50},
                    "/api/jobs?before=<middle> (a middle page)": {"before": middle, "limit": 50},
                    "/api/jobs (500, the largest page)": {"limit": 500},
                }
                for name, params in cases.items():
                    lat = []
                    for _ in range(REQUESTS):
                        t = time.perf_counter()
                        r = c.get("/api/jobs", params=params)
                        lat.append(time.perf_counter() - t)
                        assert r.status_code == 200 and r.json()["jobs"]
                    rows.append(
                        f"| {name} | {percentile(lat, 50) * 1000:.1f} | {percentile(lat, 99) * 1000:.1f} |"
                    )
                lat = []
                for n in range(REQUESTS):
                    t = time.perf_counter()
                    assert c.get(f"/api/jobs/bulk-{(n * 37) % N:05d}").status_code == 200
                    lat.append(time.perf_counter() - t)
                rows.append(
                    f"| /api/jobs/<id> | {percentile(lat, 50) * 1000:.1f} | {percentile(lat, 99) * 1000:.1f} |"
                )
            db = sqlite3.connect(d.state / "jobs.sqlite3")
            assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == N
        finally:
            d.stop()
    body = "\n".join(
        [
            "## Status API with 10,000 jobs (bench/web.py)",
            "",
            f"{REQUESTS} requests each over loopback with httpx against a running daemon without a",
            "database (keyset pagination on indexed (created_at, job_id), the order in which a",
            "shared folder's daemons' lists merge; no peers here, so no outbox walk; counts by state",
            "come with every page). Aim: the list under 100 ms.",
            "",
            "| request | p50 ms | p99 ms |",
            "|---|---|---|",
            *rows,
        ]
    )
    write_section("web", body)


if __name__ == "__main__":
    main()
