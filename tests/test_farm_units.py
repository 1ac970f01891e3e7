"""Units of the farm's dense parts: leases judged on the observer's clock, identity clashes,
the claim rename that fences a former holder, and the order drops are pulled in."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from dropbox_daemon import claims, drops, recovery
from dropbox_daemon.config import InboxConfig
from dropbox_daemon.coordination import Ready, best
from dropbox_daemon.coordination.takeover import adopt
from dropbox_daemon.errors import ConfigError
from dropbox_daemon.instances import FolderLeases, Lease, boot_id, clash, process_started


def lease(instance: str, **kw) -> Lease:  # noqa: ANN003
    base = Lease.mine(instance, socket.gethostname(), Path("/state") / instance)
    for k, v in kw.items():
        setattr(base, k, v)
    return base


def test_a_peer_is_dead_only_after_its_beat_stood_still_for_stale_seconds(tmp_path: Path) -> None:
    root = tmp_path / ".dropbox"
    peer = FolderLeases([root], lease("peer", pid=1), stale_seconds=10)
    me = FolderLeases([root], lease("me"), stale_seconds=10)
    peer.renew(now=1000.0)
    assert me.dead(me.observe(mono=0.0), mono=0.0) == {}
    assert me.dead(me.observe(mono=9.9), mono=9.9) == {}
    # its wall clock may be anything: only the beat moving counts, timed on my clock
    peer.renew(now=-5e6)
    assert me.dead(me.observe(mono=15.0), mono=15.0) == {}
    assert me.dead(me.observe(mono=24.9), mono=24.9) == {}
    why = me.dead(me.observe(mono=25.0), mono=25.0)
    assert set(why) == {"peer"} and "10 s" in why["peer"]
    peer.renew(now=0.0)  # it was only slow: alive again
    assert me.dead(me.observe(mono=26.0), mono=26.0) == {}
    peer.release(now=0.0)  # a clean stop (its pid is gone, this host can tell) at once
    assert me.dead(me.observe(mono=26.5), mono=26.5) == {"peer": "it stopped"}


def test_identity_clash_rules() -> None:
    me = lease("gpu0", pid=os.getpid())
    parent = os.getppid()
    live_here = lease("gpu0", pid=parent, started_at=process_started(parent))
    assert "already running: pid" in clash(live_here, me, 60, now=live_here.renewed_at)
    gone_here = lease("gpu0", pid=2**22 + 7)  # no such process: this machine's earlier run
    assert clash(gone_here, me, 60, now=0.0) is None
    other_host = lease("gpu0", host="elsewhere", boot_id="b", renewed_at=100.0)
    assert clash(other_host, me, 60, now=150.0) is not None  # renewed 50 s ago: alive
    assert clash(other_host, me, 60, now=161.0) is None  # silent past stale: gone
    assert clash(lease("gpu0", pid=parent, state="stopped"), me, 60, now=0.0) is None
    assert boot_id()  # Linux: the kernel's boot id
    # [daemon] host is a display name: a run killed -9 on this machine under host = "host1"
    # is known gone by its pid, so a restart right after is not refused (it was, until its
    # lease went stale)
    named = lease("gpu0", host="host1", pid=2**22 + 7, renewed_at=100.0)
    assert clash(named, me, 60, now=101.0) is None


def test_register_refuses_a_live_twin_and_names_it(tmp_path: Path) -> None:
    root = tmp_path / ".dropbox"
    FolderLeases([root], lease("twin"), stale_seconds=30).register(now=50.0)  # this process
    twin = lease("twin", pid=os.getppid(), state_dir="/elsewhere")
    with pytest.raises(ConfigError) as e:
        FolderLeases([root], twin, stale_seconds=30).register(now=51.0)
    assert f"pid {os.getpid()}" in e.value.message and "state folder /state/twin" in e.value.message
    assert "[daemon] instance" in e.value.hint


def claim_folder(tmp_path: Path) -> tuple[Path, dict]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.json").write_text(json.dumps({"audio": "a.wav", "template": "t.png"}))
    cand = drops.Candidate(inbox / "a.json", inbox, False)
    cl = claims.claim(inbox, cand, "dead-one", 0.0)
    assert cl is not None
    return cl.dir, claims.read_owner(cl.dir) or {}


def test_take_over_has_one_winner_and_fences_the_former_holder(tmp_path: Path) -> None:
    cdir, owner = claim_folder(tmp_path)
    assert owner["instance"] == "dead-one" and owner["generation"] == 1
    won = recovery.take_over(cdir, owner, "b", 1.0, "silent")
    assert won is not None and won.name == f"{cdir.name}.g2" and not cdir.exists()
    assert recovery.take_over(cdir, owner, "c", 1.0, "silent") is None  # the same view: too late
    new_owner = claims.read_owner(won)
    assert new_owner["instance"] == "b" and new_owner["taken_from"] == "dead-one"
    assert (won / "drop" / "a.json").exists()  # renamed with its folder, never copied
    again = recovery.take_over(won, new_owner, "c", 2.0, "silent")
    assert again is not None and again.name == f"{cdir.name}.g3"
    assert recovery.base_claim_id(again.name) == cdir.name


def test_pull_order_is_priority_then_oldest(tmp_path: Path) -> None:
    inbox = InboxConfig(name="a", path=tmp_path)

    def r(name: str, prio: int, mtime: float) -> Ready:
        return Ready(drops.Candidate(tmp_path / name, tmp_path, False), inbox, prio, mtime)

    ready = {
        r.candidate.manifest: r for r in (r("old", 0, 1.0), r("new", 0, 2.0), r("urgent", 5, 3.0))
    }
    assert best(ready).candidate.manifest.name == "urgent"
    ready.pop(tmp_path / "urgent")
    assert best(ready).candidate.manifest.name == "old"
    assert best({}) is None


def test_a_half_made_claim_is_removed_and_a_real_one_never(tmp_path: Path) -> None:
    cdir, owner = claim_folder(tmp_path)
    assert not recovery.discard_if_unfinished(cdir, owner)  # it holds the manifest
    half = cdir.with_name("20261125T000000-0000000000")
    (half / "drop").mkdir(parents=True)
    (half / "owner.json").write_text(json.dumps({**owner, "job_id": None}))
    bare = cdir.with_name("20261125T000001-0000000000")
    (bare / "drop").mkdir(parents=True)  # died before even owner.json was written
    noted = cdir.with_name("20261125T000002-0000000000")
    (noted / "drop").mkdir(parents=True)
    (noted / "owner.json").write_text(json.dumps({**owner, "job_id": "j"}))
    drafted = cdir.with_name("20261125T000003-0000000000")  # killed while writing owner.json
    (drafted / "drop").mkdir(parents=True)
    (drafted / ".owner.json.4242.tmp").write_text(json.dumps(owner))
    inbox = cdir.parent.parent.parent
    assert [c for c, _ in recovery.unfinished_claims(inbox, "dead-one")] == [
        half,
        bare,
        noted,
        drafted,
    ]
    assert [c for c, _ in recovery.unfinished_claims(inbox, "someone-else")] == [bare]
    assert recovery.discard_if_unfinished(drafted, recovery.drafted_owner(drafted), min_age=60)
    assert not drafted.exists()
    assert not recovery.discard_if_unfinished(bare, None, min_age=60)  # it may be being made now
    assert not recovery.discard_if_unfinished(noted, claims.read_owner(noted))  # a job refers to it
    assert recovery.discard_if_unfinished(half, claims.read_owner(half)) and not half.exists()
    assert recovery.discard_if_unfinished(bare, None, min_age=0) and not bare.exists()
    assert cdir.exists() and noted.exists()


# -- a record written while its claim changes hands ------------------------------------
class Peer:
    """One daemon's intake on the farm's database (real PostgreSQL), the shared inbox and
    the shared outbox: what farm.take_over and claiming drive, called step by step."""

    def __init__(self, name: str, root: Path, url: str) -> None:
        from dropbox_daemon import config
        from dropbox_daemon.intake import Intake
        from dropbox_daemon.outbox import Outbox
        from dropbox_daemon.store.postgres import PostgresStore

        data = {
            "daemon": {
                "instance": name,
                "state_dir": str(root / f"state-{name}"),
                "outbox": str(root / "outbox"),
            },
            "store": {"url": url},
            "inbox": [{"name": "default", "path": str(root / "inbox"), "engine": "passthrough"}],
        }
        self.cfg = config.from_dict(data, source=root / "config.toml", env={})
        self.inbox = self.cfg.inbox[0]
        self.outbox = Outbox(root / "outbox")
        self.store = PostgresStore(url, self.outbox, instance=name)
        self.intake = Intake(self.cfg, self.store, self.outbox)

    def take_over(self, cdir: Path) -> claims.Claim:
        """The folder sweep's fence: the claim renamed to this daemon's generation."""
        new = recovery.take_over(
            cdir, claims.read_owner(cdir) or {}, self.cfg.instance_id, 2.0, "t"
        )
        assert new is not None
        cl = claims.claim_from(self.inbox.path, new, claims.read_owner(new) or {})
        assert cl is not None
        return cl


def peers(tmp_path: Path, url: str, media) -> tuple[Peer, Peer, claims.Claim]:  # noqa: ANN001
    """Instances a (slow, judged dead) and b on one farm, and a's claim on a valid drop."""
    import shutil

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(media.tone, inbox / "a.wav")
    shutil.copy(media.image, inbox / "t.png")
    (inbox / "r1.json").write_text(
        json.dumps({"job_id": "r1", "audio": "a.wav", "template": "t.png"})
    )
    a, b = Peer("a", tmp_path, url), Peer("b", tmp_path, url)
    cl = claims.claim(inbox, drops.Candidate(inbox / "r1.json", inbox, False), "a", 1.0)
    assert cl is not None
    return a, b, cl


@pytest.mark.parametrize("moment", ["before_create", "before_queue", "queued", "rendering"])
def test_a_record_written_while_its_claim_was_taken_over_follows_the_claim(
    tmp_path: Path,
    pg_url: str,
    media,
    moment: str,  # noqa: ANN001
) -> None:
    """The farm takeover race (found by a fresh-clone run): b renames a's claim folder to its
    next generation and adopts the drop at each moment of a's intake or render. Whatever the
    order, the farm ends with one record of the drop, queued, naming b's folder, which
    exists; never a duplicate of itself, never a record of a folder that is gone."""
    a, b, cl = peers(tmp_path, pg_url, media)
    taken: list[claims.Claim] = []

    def b_takes_over() -> None:
        taken.append(b.take_over(cl.dir))
        adopt(b.intake, b.inbox, taken[0], claims.read_owner(taken[0].dir) or {}, "a is silent")

    real = {"create": a.store.create, "transition": a.store.transition}
    hook = {"before_create": "create", "before_queue": "transition"}.get(moment)
    if hook:

        def then_real(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            if not taken:
                b_takes_over()
            return real[hook](*args, **kw)

        setattr(a.store, hook, then_real)
    a.intake.ingest(a.inbox, cl)
    if moment == "rendering":
        job = a.store.take_next("a", {})
        assert job is not None and job.job_id == "r1"
        a.store.transition("r1", "rendering", fence=job.generation)
    if not taken:
        b_takes_over()
    job = b.store.get("r1")
    assert job is not None and job.state == "queued", job
    assert job.claim_dir == str(taken[0].dir) and Path(job.claim_dir).is_dir()
    assert job.instance == "b"
    assert job.attempts == (1 if moment == "rendering" else 0)
    assert sum(b.store.counts().values()) == 1  # no duplicate of itself
    assert sorted(p.name for p in a.outbox.root.iterdir() if p.is_dir()) == ["r1"]
    assert json.loads((a.outbox.root / "r1" / "task.json").read_text())["claim"] == (
        taken[0].dir.name
    )
    # a wakes up: its writes under the generation it held are refused
    assert a.store.update("r1", fence=job.generation - 1, progress=0.5) is None
    a.store.close()
    b.store.close()


def test_claim_generation_reads_the_folder_name() -> None:
    assert recovery.claim_generation("20261126T0300-abc") == 1
    assert recovery.claim_generation("20261126T0300-abc.g2") == 2
    assert recovery.claim_generation("20261126T0300-abc.g17") == 17
    assert recovery.claim_generation("20261126T0300-abc.gx") == 1
    assert recovery.same_claim("/i/.dropbox/c1.g3", Path("/j/c1.g4"))
    assert not recovery.same_claim("/i/.dropbox/c1.g3", Path("/j/c2"))
    assert not recovery.same_claim(None, Path("/j/c1"))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Answering:
    """Lease renewals that get through, or not, as the test says."""

    ok = True

    def renew(self, now: float, **fields: object) -> bool:
        return self.ok


def test_takeover_waits_stale_seconds_after_any_break_in_its_own_renewals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that failed, and one that got through late (the database restarting under
    every daemon at once), both restart the wait: the peers were held up too."""
    from dropbox_daemon.config import Config, DaemonConfig
    from dropbox_daemon.coordination import base
    from dropbox_daemon.coordination.folder import FolderCoordination
    from dropbox_daemon.outbox import Outbox
    from dropbox_daemon.store import open_store

    cfg = Config(
        daemon=DaemonConfig(state_dir=tmp_path / "s", stale_claim_seconds=4.0),
        inbox=[InboxConfig(name="a", path=tmp_path / "in")],
    )
    cfg.daemon.state_dir.mkdir()
    store = open_store(cfg, Outbox(tmp_path / "out"))
    clock = Clock()
    monkeypatch.setattr(base.time, "monotonic", clock)
    f = FolderCoordination(cfg, store)
    f.leases = Answering()  # type: ignore[assignment]
    f.renewing_since = clock.t
    f.next_renew = 0.0

    def beat(dt: float) -> None:
        clock.t += dt
        assert f.renew(now=0.0, mono=clock.t)

    for _ in range(4):
        beat(1.0)
    assert f.may_take_over(clock.t)  # 4 s of unbroken renewals
    beat(2.5)  # held up 2.5 s (over half of stale_claim_seconds), then through
    assert not f.may_take_over(clock.t)
    for _ in range(3):
        beat(1.0)
    assert not f.may_take_over(clock.t)  # 3 s since the late one
    beat(1.0)
    assert f.may_take_over(clock.t)
    beat(1.9)  # a slow pass, under half of stale: no break
    assert f.may_take_over(clock.t)
    f.leases.ok = False  # type: ignore[attr-defined]
    beat(1.0)
    assert not f.may_take_over(clock.t) and f.renewing_since is None
    f.leases.ok = True  # type: ignore[attr-defined]
    beat(1.0)
    beat(4.5)
    assert not f.may_take_over(clock.t)  # late again: 5.5 s since it came back, yet a break


CLAIM_KILLED_AT = """
import os, signal, sys
from pathlib import Path
from dropbox_daemon import drops
from dropbox_daemon import claims
from dropbox_daemon import recovery

inbox, k, calls = Path(sys.argv[1]), int(sys.argv[2]), [0]

def killing(real):
    def call(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9: no cleanup of any kind runs
        return real(*a, **kw)
    return call

for name in ("mkdir", "rename", "replace", "fsync"):
    setattr(os, name, killing(getattr(os, name)))
claims.claim(inbox, drops.Candidate(inbox / "a.json", inbox, False), "me", 0.0)
"""


def test_a_claim_killed_at_any_step_names_its_owner_or_leaves_only_a_draft(tmp_path: Path) -> None:
    """kill -9 before each file system call of a claim: every claim folder it leaves names
    its instance (so a restart, or a peer, can discard or resume it) and the restart's
    clean-up leaves the drop whole, in the inbox or in one claim. A claim folder no one can
    be named for was once left (CI: 301 claims for 300 drops after a host was killed)."""
    import subprocess
    import sys

    manifest = json.dumps({"audio": "a.wav", "template": "t.png"})
    for k in range(1, 40):
        inbox = tmp_path / f"k{k}"
        inbox.mkdir()
        (inbox / "a.json").write_text(manifest)
        claims.make_dropbox(inbox)  # as the daemon does at start-up
        run = subprocess.run([sys.executable, "-c", CLAIM_KILLED_AT, str(inbox), str(k)])
        for cdir in claims.claim_folders(inbox):
            owner = claims.read_owner(cdir) or recovery.drafted_owner(cdir)
            assert owner is not None and owner["instance"] == "me", (k, cdir)
        recovery.discard_drafts(inbox, "me", 120.0)  # what recover_orphan_claims does at start-up
        for cdir, owner in recovery.unfinished_claims(inbox, "me"):
            recovery.discard_if_unfinished(cdir, owner, 120.0)
        left = os.listdir(claims.claims_root(inbox))
        resumed = recovery.own_orphans(inbox, "me", set())
        if (inbox / "a.json").exists():
            assert left == [], k  # the drop waits in the inbox, and nothing else is left
        else:
            assert [cl.manifest.read_text() for cl in resumed] == [manifest], k
        if run.returncode == 0:
            assert k > 5  # every step up to the end was tried
            return
        assert run.returncode == -9, run
    raise AssertionError("the claim never ended")


def test_drafts_of_others_go_only_once_old_and_one_holding_a_file_never(tmp_path: Path) -> None:
    root = claims.claims_root(tmp_path)
    young, old, full = (root / f".draft-20261125T00000{i}-000000000{i}.peer" for i in range(3))
    for d in (young, old, full):
        (d / "drop").mkdir(parents=True)
    (full / "drop" / "a.json").write_text("{}")  # no claim's draft holds one: left alone
    for d in (old, full):
        os.utime(d, (1.0, 1.0))
    odd = root / ".draft-not-one-of-ours"
    odd.mkdir()
    assert recovery.discard_drafts(tmp_path, None, 60.0) == [old]
    assert young.exists() and full.exists() and odd.exists()
    assert recovery.discard_drafts(tmp_path, "peer", 60.0) == [young]  # that instance's own restart
    assert claims.claim_folders(tmp_path) == []  # a draft is never taken for a claim
