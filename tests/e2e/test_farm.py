"""Several daemons on one shared inbox and outbox: on the shared folder alone (each daemon
its own SQLite) and on one PostgreSQL database (farm mode), the same tests for both.

Each test runs real daemons as subprocesses with their own state folders and
their default instance ids, as one daemon per GPU on one host would.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from farm_support import (
    drop_invalid,
    drop_valid,
    farm,
    freeze,
    instance_of,
    leftovers,
    outcome,
    terminal_lines,
)
from support import wait_for


@pytest.fixture(params=["folder", "postgresql"])
def store_url(request) -> str:  # noqa: ANN001
    """ "" for the shared-folder mode, else a fresh database on a real PostgreSQL server."""
    return "" if request.param == "folder" else request.getfixturevalue("pg_url")


VALID, INVALID = 185, 15  # 200 drops


def storm(ds, media, tmp_path) -> None:  # noqa: ANN001
    """185 valid + 15 invalid drops from 8 writers; one daemon killed -9 mid-storm and restarted."""
    inbox, outbox = ds[0].inbox, ds[0].outbox
    _ = (media.tone_short, media.tiny_image)  # made once here: the fixture is not thread-safe
    ids = [f"v{n:03d}" for n in range(VALID)] + [f"bad{n:02d}" for n in range(INVALID)]

    def write(job_id: str) -> None:
        if job_id.startswith("bad"):
            drop_invalid(inbox, media, job_id, int(job_id[3:]))
        else:
            drop_valid(inbox, media, job_id)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, ids))
        victim = ds[1]
        wait_for(lambda: len(outcome(outbox)) >= 30, 120, "30 jobs to start", victim)
        victim.kill9()
        wait_for(lambda: len(outcome(outbox)) >= 80, 120, "80 more jobs", ds[0])
        victim.start()

    def ended() -> dict:
        o = outcome(outbox)
        return (
            o if sum(t.get("state") in ("done", "rejected") for t in o.values()) >= len(ids) else {}
        )

    result = wait_for(ended, 600, "every drop to be answered", ds[0])
    assert sorted(result) == sorted(ids), sorted(set(result) ^ set(ids))  # no .dup, no extra ids
    for job_id, task in result.items():
        want = "rejected" if job_id.startswith("bad") else "done"
        assert task["state"] == want, (job_id, task)
        assert terminal_lines(outbox, job_id) == {want: 1}, job_id
    assert leftovers(inbox) == []
    return result


def test_daemons_with_default_ids_survive_a_kill9(
    daemon_factory, media, tmp_path, store_url
) -> None:  # noqa: ANN001
    n = 4
    ds = farm(daemon_factory, tmp_path, n, stale_claim_seconds=4.0, store_url=store_url)
    assert len({instance_of(d) for d in ds}) == n
    for d in ds:
        d.start()
    result = storm(ds, media, tmp_path)
    # every instance rendered some, each job says which one, and no job ended in two stores
    by = {t["instance"] for t in result.values() if t["state"] == "done"}
    assert by <= {instance_of(d) for d in ds} and len(by) >= 2, by
    ends: dict[str, int] = {}
    for rows in terminal_events(ds, store_url):
        for (job_id,) in rows:
            ends[job_id] = ends.get(job_id, 0) + 1
    assert set(ends.values()) == {1} and len(ends) == VALID + INVALID
    # any daemon lists the whole share, with or without a database: each job once, with the
    # instance that answered it
    for d in ds:
        rows = json.loads(d.cli("jobs", "--json", "--limit", "1000").stdout)
        assert {r["job_id"]: r["instance"] for r in rows} == {
            j: t["instance"] for j, t in result.items()
        }, d.log_tail()
        assert len(rows) == len(result)
    status = json.loads(ds[-1].cli("status", "--json").stdout)  # the share's counts, too
    assert (status["jobs"]["done"], status["jobs"]["rejected"]) == (VALID, INVALID), status["jobs"]
    scope = "jobs (farm)" if store_url else "jobs (the share)"
    assert scope in ds[0].cli("status").stdout


def terminal_events(ds, store_url: str):  # noqa: ANN001, ANN201
    """The terminal events of every store: each daemon's SQLite, or the farm's one database."""
    sql = "SELECT job_id FROM events WHERE to_state IN ('done', 'rejected', 'duplicate')"
    if store_url:
        import psycopg

        with psycopg.connect(store_url) as conn:
            yield conn.execute(sql).fetchall()
        return
    for d in ds:
        db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
        yield db.execute(sql).fetchall()


def test_same_instance_id_twice_refuses_to_start(daemon_factory, tmp_path, store_url) -> None:  # noqa: ANN001
    a, b = farm(daemon_factory, tmp_path, 2, instance="gpu-box", store_url=store_url)
    a.start()
    b.start(wait_ready=False)
    assert b.proc.wait(30) != 0
    text = b.log_text()
    assert "instance 'gpu-box' is already running" in text, b.log_tail()
    assert f"pid {a.proc.pid}" in text and str(a.state) in text
    assert a.alive()


def test_a_frozen_daemons_job_is_taken_over_and_its_late_result_refused(
    daemon_factory, media, tmp_path, store_url
) -> None:  # noqa: ANN001
    stale = 3.0
    ds = farm(daemon_factory, tmp_path, 2, stale_claim_seconds=stale, store_url=store_url)
    for d in ds:
        d.start()
    outbox = ds[0].outbox
    drop_valid(ds[0].inbox, media, "frozen", long=True)
    task = wait_for(
        lambda: (t := ds[0].task("frozen")) and t["state"] == "rendering" and t,
        60,
        "the job to render",
        ds[0],
    )
    holder = next(d for d in ds if instance_of(d) == task["instance"])
    other = next(d for d in ds if d is not holder)
    frozen_at = time.monotonic()
    freeze(holder, signal.SIGSTOP)
    try:
        done = other.wait_state("frozen", "done", timeout=stale + 30)
        took = time.monotonic() - frozen_at
    finally:
        freeze(holder, signal.SIGCONT)
    assert done["instance"] == instance_of(other) and done["attempts"] == 2, done
    assert took < stale + 20, took
    log = (outbox / "frozen" / "log.txt").read_text()
    assert f"taken over from instance {instance_of(holder)} by instance {instance_of(other)}" in log
    wait_for(
        lambda: "this daemon drops it" in holder.log_text(),
        30,
        "the thawed daemon to give the job up",
        holder,
    )
    after = json.loads((outbox / "frozen" / "task.json").read_text())
    assert after == done  # the thawed daemon wrote nothing over it
    assert (outbox / "frozen" / "log.txt").read_text() == log
    from dropbox_daemon.render.media.probe import sha256_file

    assert sha256_file(outbox / "frozen" / "result.mp4") == done["output"]["sha256"]
    assert holder.alive() and other.alive()


def test_an_idle_daemon_takes_the_backlog_and_priority_holds_across_the_share(
    daemon_factory, media, tmp_path, store_url
) -> None:  # noqa: ANN001
    ds = farm(daemon_factory, tmp_path, 2, store_url=store_url)
    for d in ds:
        d.start()
    inbox = ds[0].inbox
    drop_valid(inbox, media, "slow", long=True)
    slow = wait_for(
        lambda: (t := ds[0].task("slow")) and t["state"] == "rendering" and t, 60, "slow", ds[0]
    )
    quick = [f"q{n:02d}" for n in range(20)]
    for job_id in quick:
        drop_valid(inbox, media, job_id)
    dropped_urgent = time.time()
    drop_valid(inbox, media, "urgent", priority=5)
    tasks = {j: ds[0].wait_state(j, timeout=120) for j in [*quick, "urgent", "slow"]}
    busy, idle = (
        slow["instance"],
        next(instance_of(d) for d in ds if instance_of(d) != slow["instance"]),
    )
    assert tasks["urgent"]["state"] == "done"

    def started(t: dict, key: str = "started_at") -> float:
        from datetime import datetime

        return datetime.fromisoformat(t[key].replace("Z", "+00:00")).timestamp()

    # while the busy one rendered, the idle one took the backlog: the busy one started none
    # of it (a job it had claimed meanwhile, its prefetch, waited for it) before it was free
    slow_end = started(tasks["slow"], "finished_at")
    where = {j: (tasks[j]["instance"], round(started(tasks[j]) - slow_end, 2)) for j in quick}
    assert all(started(tasks[j]) >= slow_end for j in quick if tasks[j]["instance"] == busy), where
    meanwhile = [j for j in quick if started(tasks[j]) < slow_end]
    assert len(meanwhile) >= 5, where  # the slow job lasted long enough to say so
    assert {tasks[j]["instance"] for j in meanwhile} == {idle}, where

    urgent_start = started(tasks["urgent"])
    waiting = [j for j in quick if started(tasks[j]) > dropped_urgent]
    before = [j for j in waiting if started(tasks[j]) < urgent_start]
    # at most the jobs each daemon had already taken (prefetch 1 each) start before it
    assert len(before) <= 2, (before, busy)
