"""Farm mode when the database goes away: PostgreSQL stopped for a while, and restarted,
in the middle of a storm of drops. Nothing is lost or answered twice, no job is
rendered twice, the daemons say so, and they carry on by themselves."""

from __future__ import annotations

import json
import os
import time

from farm_support import (
    drop_invalid,
    drop_valid,
    farm,
    instance_of,
    leftovers,
    outcome,
    terminal_lines,
)
from support import wait_for

OUTAGE = float(os.environ.get("DROPBOX_TEST_OUTAGE_SECONDS", "60"))


def health(d) -> dict:  # noqa: ANN001
    try:
        return json.loads((d.outbox / "_daemon" / instance_of(d) / "health.json").read_text())
    except (OSError, ValueError):
        return {}


def until_done(outbox, n: int, d) -> None:  # noqa: ANN001
    wait_for(
        lambda: sum(t.get("state") == "done" for t in outcome(outbox).values()) >= n,
        120,
        f"{n} jobs done",
        d,
    )


def hold(seconds: float, ds) -> None:  # noqa: ANN001
    """Keep the database away for `seconds` (the outage is the test), the daemons alive throughout."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert all(d.alive() for d in ds), [d.log_tail() for d in ds]
        time.sleep(0.5)


def test_the_database_stopped_and_restarted_mid_storm(
    daemon_factory, media, tmp_path, pg_server
) -> None:  # noqa: ANN001
    url = pg_server.new_database()
    ds = farm(
        daemon_factory,
        tmp_path,
        2,
        stale_claim_seconds=4.0,
        store_url=url,
    )
    for d in ds:
        d.config.write_text(d.config.read_text() + "[health]\nheartbeat_seconds = 1.0\n")
        d.start()
    inbox, outbox = ds[0].inbox, ds[0].outbox
    wave1 = [f"a{n:02d}" for n in range(40)]
    wave2 = [f"b{n:02d}" for n in range(40)]
    bad = [f"bad{n}" for n in range(6)]
    for job_id in wave1:
        drop_valid(inbox, media, job_id)
    for n, job_id in enumerate(bad[:3]):
        drop_invalid(inbox, media, job_id, n)
    until_done(outbox, 10, ds[0])

    pg_server.stop("fast")  # unreachable: connections refused for OUTAGE seconds
    try:
        wait_for(
            lambda: all(health(d).get("store") == "unreachable" for d in ds),
            30,
            "both daemons to report the store unreachable",
            ds[0],
        )
        for job_id in wave2[:20]:  # drops keep coming meanwhile
            drop_valid(inbox, media, job_id)
        hold(OUTAGE, ds)
    finally:
        pg_server.start()
    wait_for(lambda: all(health(d).get("store") == "ok" for d in ds), 60, "the store back", ds[0])
    for job_id in wave2[20:]:
        drop_valid(inbox, media, job_id)
    for n, job_id in enumerate(bad[3:], start=3):
        drop_invalid(inbox, media, job_id, n)
    until_done(outbox, 55, ds[0])
    pg_server.restart()  # a restart: every connection broken at once

    ids = wave1 + wave2 + bad

    def ended() -> dict:
        o = outcome(outbox)
        return (
            o if sum(t.get("state") in ("done", "rejected") for t in o.values()) >= len(ids) else {}
        )

    try:
        result = wait_for(ended, 150, "every drop to be answered", ds[0])
    except AssertionError:
        stuck = {k: t.get("state") for k, t in outcome(outbox).items() if t.get("state") != "done"}
        raise AssertionError(
            f"not ended: {stuck}; inbox: {leftovers(inbox)}\n{ds[1].log_tail(60)}"
        ) from None
    assert sorted(result) == sorted(ids), sorted(set(result) ^ set(ids))
    for job_id, task in result.items():
        want = "rejected" if job_id.startswith("bad") else "done"
        assert task["state"] == want, (job_id, task)
        assert terminal_lines(outbox, job_id) == {want: 1}, job_id
    assert leftovers(inbox) == []
    # no job rendered twice: none taken over, every done job on its first attempt
    assert all(t["attempts"] == 1 for t in result.values() if t["state"] == "done"), {
        k: t["attempts"] for k, t in result.items() if t.get("attempts") != 1
    }
    assert not any("taken over" in (outbox / j / "log.txt").read_text() for j in result)
    assert any("kept in memory and recorded once" in d.log_text() for d in ds)  # finished meanwhile
    for d in ds:
        text = d.log_text()
        assert "store: unreachable" in text and "store: reachable again" in text, d.log_tail()
        assert d.alive()
