"""Farm mode when the database goes away: PostgreSQL stopped for a while, and restarted, or
frozen (SIGSTOP) for a minute, in the middle of a storm of drops. Nothing is lost or answered twice, no job is
rendered twice, the daemons say so, and they carry on by themselves."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

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


def through_an_outage(ds, media, away, back, watch=None, after=None) -> dict:  # noqa: ANN001
    """40 drops (and 3 bad), the database away (`away()`) once 10 are done, 20 more drops
    meanwhile, OUTAGE seconds held (`watch()` each half second), `back()`, 26 more drops,
    `after()`; every drop answered once, none rendered twice, none taken over."""
    inbox, outbox = ds[0].inbox, ds[0].outbox
    wave1 = [f"a{n:02d}" for n in range(40)]
    wave2 = [f"b{n:02d}" for n in range(40)]
    bad = [f"bad{n}" for n in range(6)]
    for job_id in wave1:
        drop_valid(inbox, media, job_id)
    for n, job_id in enumerate(bad[:3]):
        drop_invalid(inbox, media, job_id, n)
    until_done(outbox, 10, ds[0])
    away()
    try:
        wait_for(
            lambda: all(health(d).get("store") == "unreachable" for d in ds),
            15,
            "every daemon to report the store unreachable",
            ds[0],
        )
        for job_id in wave2[:20]:  # drops keep coming meanwhile
            drop_valid(inbox, media, job_id)
        end = time.monotonic() + OUTAGE
        while time.monotonic() < end:
            assert all(d.alive() for d in ds), [d.log_tail() for d in ds]
            if watch is not None:
                watch()
            time.sleep(0.5)
    finally:
        back()
    wait_for(lambda: all(health(d).get("store") == "ok" for d in ds), 60, "the store back", ds[0])
    for job_id in wave2[20:]:
        drop_valid(inbox, media, job_id)
    for n, job_id in enumerate(bad[3:], start=3):
        drop_invalid(inbox, media, job_id, n)
    if after is not None:
        after()
    ids = wave1 + wave2 + bad

    def ended() -> dict:
        o = outcome(outbox)
        return (
            o if sum(t.get("state") in ("done", "rejected") for t in o.values()) >= len(ids) else {}
        )

    try:
        result = wait_for(ended, 180, "every drop to be answered", ds[0])
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
        assert d.alive()
    return result


def heartbeat_every_second(ds) -> None:  # noqa: ANN001
    for d in ds:
        d.config.write_text(d.config.read_text() + "[health]\nheartbeat_seconds = 1.0\n")


def test_the_database_stopped_and_restarted_mid_storm(
    daemon_factory, media, tmp_path, pg_server
) -> None:  # noqa: ANN001
    url = pg_server.new_database()
    ds = farm(daemon_factory, tmp_path, 2, stale_claim_seconds=4.0, store_url=url)
    heartbeat_every_second(ds)
    for d in ds:
        d.start()

    def restart_when_55_done() -> None:
        until_done(ds[0].outbox, 55, ds[0])
        pg_server.restart()  # a restart: every connection broken at once

    # stopped: connections refused for OUTAGE seconds
    through_an_outage(
        ds, media, lambda: pg_server.stop("fast"), pg_server.start, after=restart_when_55_done
    )
    for d in ds:
        text = d.log_text()
        assert "store: unreachable" in text and "store: reachable again" in text, d.log_tail()


class Watchdog:
    """A fake systemd notify socket: when each WATCHDOG=1 came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.pings: list[float] = []
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                self.pings.append(time.monotonic())

    def longest_gap(self, since: float, until: float) -> float:
        marks = [since, *(t for t in self.pings if since <= t <= until), until]
        return max(b - a for a, b in zip(marks, marks[1:], strict=False))


def health_age(d) -> float:  # noqa: ANN001
    import datetime as dt

    h = health(d)
    if not h:
        return float("inf")
    written = dt.datetime.fromisoformat(h["written_at"].replace("Z", "+00:00"))
    return (dt.datetime.now(dt.UTC) - written).total_seconds()


def test_a_server_frozen_for_a_minute_mid_storm(
    daemon_factory, media, tmp_path, own_server
) -> None:  # noqa: ANN001
    """SIGSTOP on the server and its backends: it answers nothing and its kernel still
    acknowledges, so only the client's own deadlines can see it."""
    url = own_server.new_database()
    *ds, late = farm(daemon_factory, tmp_path, 5, stale_claim_seconds=4.0, store_url=url)
    heartbeat_every_second(ds)
    dogs = [Watchdog(tmp_path / f"notify-{n}") for n in range(len(ds))]
    for d, dog in zip(ds, dogs, strict=True):
        d.start(env={"NOTIFY_SOCKET": str(dog.path), "WATCHDOG_USEC": "60000000"})
    marks: dict[str, float] = {"oldest": 0.0}

    def freeze() -> None:
        marks["frozen"] = time.monotonic()
        own_server.freeze()
        late.start(wait_ready=False)  # a daemon started while the server hangs waits for it

    def watch() -> None:
        marks.setdefault("said", time.monotonic() - marks["frozen"])  # first watch: all said
        marks["oldest"] = max(marks["oldest"], *(health_age(d) for d in ds))

    def thaw() -> None:
        own_server.freeze(signal.SIGCONT)
        marks["thawed"] = time.monotonic()

    through_an_outage(ds, media, freeze, thaw, watch=watch)
    # the loops and heartbeats went on: unreachable said within seconds, health.json fresh
    assert marks["said"] < 12 and marks["oldest"] < 10, marks
    for d, dog in zip(ds, dogs, strict=True):
        gap = dog.longest_gap(marks["frozen"], marks["thawed"])
        assert gap < 20, (instance_of(d), gap)  # WatchdogSec=60 would never have fired
        assert "did not answer within" in d.log_text(), d.log_tail()
        dog.stopped = True
    wait_for(lambda: "worker ready" in late.log_text(), 60, "the late daemon to start", late)
    assert "cannot use the farm's database yet" in late.log_text(), late.log_tail()
    assert late.alive()
