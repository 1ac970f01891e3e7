"""The coordination contract (dropbox_daemon/coordination), one suite run on both ways: two
daemons' coordination, store and intake built in this process on one shared inbox and
outbox, their own SQLite each (folder) or one real PostgreSQL database (database). What
differs by design is asserted per way, as base.py's doc writes it down."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import wait_for

from dropbox_daemon import claims, config, drops
from dropbox_daemon.coordination import Coordination, instances_view, open_coordination
from dropbox_daemon.intake import Intake
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import Job, Store, open_store

STALE = 2.0
TWIN = """
import json, sys, time
from pathlib import Path
from dropbox_daemon import config
from dropbox_daemon.coordination import open_coordination
from dropbox_daemon.errors import ConfigError
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import open_store
path = Path(sys.argv[1])
cfg = config.from_dict(json.loads(path.read_text()), source=path, env={})
store = open_store(cfg, Outbox(cfg.daemon.outbox))
try:
    open_coordination(cfg, store).register(time.time())
except ConfigError as e:
    print(e)
    sys.exit(3)
"""


@dataclass
class Node:
    """One daemon's side of the share, without its loop or worker."""

    cfg: config.Config
    store: Store
    farm: Coordination
    intake: Intake
    outbox: Outbox

    def take(self, media, job_id: str) -> Job:  # noqa: ANN001
        """A drop put in the shared inbox, claimed by this daemon and started on it."""
        inbox = self.cfg.inbox[0]
        staging = inbox.path / f".{job_id}.staging"
        staging.mkdir()
        shutil.copy(media.tone_short, staging / "a.wav")
        shutil.copy(media.tiny_image, staging / "t.png")
        (staging / "job.json").write_text(
            json.dumps({"job_id": job_id, "audio": "a.wav", "template": "t.png"})
        )
        staging.rename(inbox.path / job_id)
        (cand,) = [c for c in drops.scan(inbox.path) if c.manifest.parent.name == job_id]
        cl = claims.claim(inbox.path, cand, self.farm.instance, time.time())
        assert cl is not None
        assert self.intake.ingest(inbox, cl).state == "queued"
        job = self.store.take_next(self.farm.instance, {})
        assert job is not None and job.job_id == job_id and job.state == "preparing"
        return job


@pytest.fixture(params=["folder", "database"])
def way(request) -> str:  # noqa: ANN001
    return request.param


@pytest.fixture
def make(way: str, tmp_path: Path, request):  # noqa: ANN001, ANN201
    url = request.getfixturevalue("pg_url") if way == "database" else ""
    made: list[Node] = []

    def node(name: str, *, register: bool = True) -> Node:
        data = {
            "daemon": {
                "state_dir": str(tmp_path / name),
                "outbox": str(tmp_path / "outbox"),
                "stale_claim_seconds": STALE,
                "prefetch": 1,
            },
            "store": {"url": url},
            "inbox": [{"name": "default", "path": str(tmp_path / "inbox")}],
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        cfg = config.from_dict(data, source=tmp_path / f"{name}.toml", env={})
        for p in (cfg.daemon.state_dir, cfg.daemon.outbox, cfg.inbox[0].path):
            p.mkdir(parents=True, exist_ok=True)
        claims.make_dropbox(cfg.inbox[0].path)
        outbox = Outbox(cfg.daemon.outbox)
        store = open_store(cfg, outbox)
        farm = open_coordination(cfg, store)
        n = Node(cfg, store, farm, Intake(cfg, store, outbox, own_store=farm.own_store), outbox)
        made.append(n)
        if register:
            farm.register(time.time())
        return n

    yield node
    for n in made:
        n.store.close()


def test_the_way_is_chosen_by_the_store(make, way: str) -> None:  # noqa: ANN001
    a = make("a")
    assert (
        type(a.farm).__name__
        == {"folder": "FolderCoordination", "database": "DatabaseCoordination"}[way]
    )
    assert a.farm.own_store is (way == "folder")


def test_a_twin_is_refused_and_peers_see_each_other(make) -> None:  # noqa: ANN001
    a, b = make("a"), make("b")
    # another process on a's state folder, so under a's instance id: a live twin, refused
    twin = subprocess.run(
        [sys.executable, "-c", TWIN, str(a.cfg.daemon.state_dir.with_suffix(".json"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert twin.returncode == 3 and "is already running: pid" in twin.stdout, twin
    for n in (a, b):  # the twin's start may outlast STALE on a loaded host: leases renewed
        n.farm.renew(time.time(), time.monotonic())
    a.farm.observe(time.monotonic())
    assert set(a.farm.peers) == {a.farm.instance, b.farm.instance} and a.farm.dead == {}
    view = {i["instance"]: i["state"] for i in a.farm.instances()}
    assert view == {a.farm.instance: "running", b.farm.instance: "running"}
    assert {i["instance"] for i in instances_view(b.cfg, b.store)} == set(view)


def test_room_to_claim_is_the_documented_one(make, media) -> None:  # noqa: ANN001
    """The shared folder: the running job plus prefetch; a farm's database: every drop."""
    a = make("a")
    if a.farm.own_store:
        assert a.farm.capacity(running=False) == 2 and a.farm.capacity(running=True) == 1
        a.take(media, "j1")
        assert a.farm.capacity(running=True) == 1  # started: no longer queued
    else:
        assert a.farm.capacity(running=True) >= 1 << 20


def test_a_busy_daemon_leaves_the_next_drop_to_an_idle_peer(make, media) -> None:  # noqa: ANN001
    """On the shared folder a busy daemon's prefetch would hold a drop behind its render
    (the burst's most urgent one, first in line) while a peer's worker is idle; a farm's
    database starts a job only on an idle worker, so it never has to."""
    a, b = make("a"), make("b")
    if not a.farm.own_store:
        b.farm.renew(time.time(), time.monotonic(), worker="idle")
        assert a.farm.capacity(running=True) >= 1 << 20  # into the one queue, as ever
        return
    b.farm.renew(time.time(), time.monotonic(), worker="busy")
    assert a.farm.capacity(running=True) == 1  # every worker busy: its prefetch keeps it fed
    # b's worker turns idle within its lease period: its lease says so at once, and a, which
    # found no idle peer, looks again within IDLE_LOOK (not a whole lease period)
    assert not b.farm.renew(time.time(), time.monotonic(), worker="busy")  # not due yet
    assert b.farm.renew(time.time(), time.monotonic(), worker="idle")
    assert not b.farm.renew(time.time(), time.monotonic(), worker="idle")  # said already
    from dropbox_daemon.coordination.folder import IDLE_LOOK

    assert a.farm.next_look - time.monotonic() <= IDLE_LOOK
    wait_for(lambda: a.farm.capacity(running=True) == 0, 5, "a to see b idle")
    assert a.farm.capacity(running=False) == 2  # an idle daemon claims as ever
    b.farm.release()  # stopped: not a peer to leave work to
    a.farm.next_look = 0.0
    assert a.farm.capacity(running=True) == 1


def stopped_then_dead(a: Node, b: Node) -> None:
    """b stops cleanly; a has renewed for stale seconds and believes it."""
    b.farm.release()
    a.farm.observe(time.monotonic())

    def seen() -> bool:
        a.farm.renew(time.time(), time.monotonic())
        a.farm.observe(time.monotonic())
        return b.farm.instance in a.farm.dead and a.farm.may_take_over(time.monotonic())

    wait_for(seen, 15, "the stopped peer to be dead")
    assert a.farm.dead[b.farm.instance] == "it stopped"


def test_a_dead_peers_running_job_is_taken_over_under_its_next_generation(
    make,
    media,  # noqa: ANN001
) -> None:
    a, b = make("a"), make("b")
    held = b.take(media, "t1")
    assert b.farm.lost(held, held.generation) is None  # its own while it lives
    stopped_then_dead(a, b)
    taken = a.farm.take_over(a.intake, a.outbox, room=5)
    assert [j.job_id for j in taken] == ["t1"]
    job = a.store.get("t1")
    assert job is not None and job.state == "queued" and job.generation == held.generation + 1
    assert job.attempts == held.attempts  # kept: the next start counts the next attempt
    assert job.claim_dir != held.claim_dir and Path(job.claim_dir or "").is_dir()
    # the former holder, thawed, finds it is no longer its own, and by whom
    mine = b.store.get("t1") or held
    why = b.farm.lost(mine, held.generation)
    assert why is not None and "taken over by instance" in why and a.farm.instance in why
    assert a.farm.take_over(a.intake, a.outbox, room=5) == []  # once


def test_strays_and_forgotten_rows_are_the_documented_ones(make, media) -> None:  # noqa: ANN001
    """A job the store says this daemon runs but its worker does not have: a farm's database
    re-queues it (its start's reply was lost); a daemon's own store learns of starts only
    from its worker. A job given up: forgotten in a daemon's own store, kept in the farm's."""
    a = make("a")
    started = a.take(media, "s1")
    a.farm.requeue_strays(mine={"s1"})
    assert a.store.get("s1").state == "preparing"  # type: ignore[union-attr]
    a.farm.requeue_strays(mine=set())
    after = a.store.get("s1")
    assert after is not None
    if a.farm.own_store:
        assert after.state == "preparing"
    else:
        assert after.state == "queued" and after.attempts == started.attempts - 1
    a.farm.forget(after)
    assert (a.store.get("s1") is None) is a.farm.own_store


def test_every_daemon_lists_every_job_of_the_share_with_its_instance(
    make,
    media,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    a, b = make("a"), make("b")
    a.take(media, "from-a")
    b.take(media, "from-b")
    for node in (a, b):
        rows = node.farm.jobs()
        assert {r["job_id"]: r["instance"] for r in rows} == {
            "from-a": a.farm.instance,
            "from-b": b.farm.instance,
        }
        assert [r["job_id"] for r in node.farm.jobs(instance=b.farm.instance)] == ["from-b"]
        assert [r["job_id"] for r in node.farm.jobs(limit=1)] == ["from-b"]  # newest first
        assert node.farm.jobs(state="done") == []
        counts = node.farm.counts()
        assert counts["preparing"] == 2 and sum(counts.values()) == 2 and counts["done"] == 0
    # what else lies in a shared outbox is no job of the share's: a forged or torn record,
    # one under another folder's name, a link to a folder elsewhere
    outbox = a.cfg.daemon.outbox
    (outbox / "forged").mkdir()
    (outbox / "forged" / "task.json").write_text(json.dumps({"job_id": "forged", "state": 7}))
    (outbox / "torn").mkdir()
    (outbox / "torn" / "task.json").write_text('{"job_id": "torn", "sta')
    (outbox / "other").mkdir()
    shutil.copy(outbox / "from-b" / "task.json", outbox / "other" / "task.json")
    (outbox / "linked").symlink_to(outbox / "from-b")
    assert {r["job_id"] for r in a.farm.jobs()} == {"from-a", "from-b"}


def test_the_shares_job_list_pages_through_every_job_once(make, media) -> None:  # noqa: ANN001
    """The status page's list: pages of the share's jobs newest first, each job once, in
    either way; a cursor the page did not give is refused; a peer's record that changes is
    read again (the folder way keeps the records it read between looks)."""
    a, b = make("a"), make("b")
    for n in range(3):
        a.take(media, f"a{n}")
        b.take(media, f"b{n}")
    for node in (a, b):
        everything = [r["job_id"] for r in node.farm.jobs()]
        assert sorted(everything) == ["a0", "a1", "a2", "b0", "b1", "b2"]
        seen, cursor = [], None
        while True:
            rows, cursor = node.farm.page(
                {"state": None, "inbox": None, "instance": None}, 2, cursor
            )
            seen += [r["job_id"] for r in rows]
            if cursor is None:
                break
        assert seen == everything  # the same order, no job twice, none left out
        rows, cursor = node.farm.page(
            {"state": None, "inbox": None, "instance": b.farm.instance}, 5, None
        )
        assert [r["job_id"] for r in rows] == [j for j in everything if j.startswith("b")]
        assert cursor is None
        with pytest.raises(ValueError):
            node.farm.page({}, 2, "not a cursor")
    b.store.transition(
        "b1", "failed", error={"code": "x", "message": "m", "hint": "", "stage": "rendering"}
    )
    failed = a.farm.page({"state": "failed", "inbox": None, "instance": None}, 5, None)[0]
    assert [r["job_id"] for r in failed] == ["b1"]
