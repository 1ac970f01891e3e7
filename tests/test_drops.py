from __future__ import annotations

import json
import os
import threading

import pytest

from dropbox_daemon.claims import claim
from dropbox_daemon.drops import Candidate, Settler, is_ignored_name, scan


@pytest.mark.parametrize(
    "name",
    [
        ".x.tmp",
        "a.part",
        "a.json.partial",
        "b.crdownload",
        ".name.AbC123",
        "file~",
        ".hidden.json",
        "#auto#",
        "x.json.swp",
    ],
)
def test_ignored_names(name: str) -> None:
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", ["job.json", "a.toml", "welcome-001.json", "x.wav"])
def test_not_ignored_names(name: str) -> None:
    assert not is_ignored_name(name)


def test_scan_finds_loose_manifests_and_job_folders(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.toml").write_text("")
    (tmp_path / ".c.json").write_text("{}")
    (tmp_path / "d.json.part").write_text("{}")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "job.toml").write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "job.json").write_text("{}")
    found = {(c.manifest.name, c.job_folder) for c in scan(tmp_path)}
    assert found == {("a.json", False), ("b.toml", False), ("job.toml", True)}


def test_settler_waits_for_files_to_keep_still(tmp_path) -> None:  # noqa: ANN001
    m = tmp_path / "a.json"
    media = tmp_path / "a.wav"
    m.write_text(json.dumps({"audio": "a.wav", "template": "t.png"}))
    media.write_bytes(b"x")
    c = Candidate(m, tmp_path, False)
    s = Settler(settle_seconds=2.0)
    assert not s.ready(c, 100.0)
    assert not s.ready(c, 101.0)
    media.write_bytes(b"xx")  # still growing: the clock starts again
    assert not s.ready(c, 102.5)
    assert not s.ready(c, 104.0)
    assert s.ready(c, 104.6)


def test_settler_takes_renamed_drops_at_once(tmp_path) -> None:  # noqa: ANN001
    m = tmp_path / "a.json"
    m.write_text("{}")
    assert Settler(settle_seconds=30).ready(Candidate(m, tmp_path, False), 0.0, fast=True)


def test_claim_has_exactly_one_winner(tmp_path) -> None:  # noqa: ANN001
    inbox = tmp_path
    m = inbox / "a.json"
    m.write_text("{}")
    c = Candidate(m, inbox, False)
    wins = []
    barrier = threading.Barrier(8)

    def racer(i: int) -> None:
        barrier.wait()
        cl = claim(inbox, c, f"host{i}", 0.0)
        if cl is not None:
            wins.append(cl)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert wins[0].manifest.exists() and not m.exists()
    # losers leave no empty claim folders behind
    assert len(os.listdir(inbox / ".dropbox" / "claimed")) == 1


def test_a_daemon_killed_undoing_a_lost_claim_leaves_a_draft_its_start_up_discards(
    tmp_path,
    monkeypatch,  # noqa: ANN001
) -> None:
    """Another daemon took the manifest first; this one dies while removing its own claim
    folder: what is left is a draft (no claim folder without its owner.json)."""
    from dropbox_daemon import claims
    from dropbox_daemon.recovery import discard_drafts

    def killed(path) -> None:  # noqa: ANN001
        raise KeyboardInterrupt  # the process ends here

    monkeypatch.setattr(claims, "remove_tree", killed)
    with pytest.raises(KeyboardInterrupt):
        claim(tmp_path, Candidate(tmp_path / "taken.json", tmp_path, False), "host0", 0.0)
    root = tmp_path / ".dropbox" / "claimed"
    assert claims.claim_folders(tmp_path) == []
    assert [p.name.startswith(".draft-") for p in root.iterdir()] == [True]
    monkeypatch.undo()
    assert discard_drafts(tmp_path, "host0", 3600) and not list(root.iterdir())


def test_a_manifest_that_may_not_be_moved_leaves_no_claim_folder(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The rename of the manifest is refused (its folder is its writer's alone): the error
    reaches the caller, and the claim folder made for it is gone, not one more for each try."""
    import errno
    import os

    from dropbox_daemon import claims

    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "job.json").write_text("{}")
    rename = os.rename

    def refused(src, dst) -> None:  # noqa: ANN001
        if str(src) == str(folder / "job.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        rename(src, dst)

    monkeypatch.setattr(claims.os, "rename", refused)
    for _ in range(3):
        with pytest.raises(PermissionError) as e:
            claim(tmp_path, Candidate(folder / "job.json", folder, True), "host0", 0.0)
        assert e.value.filename == str(folder / "job.json")
    assert list((tmp_path / ".dropbox" / "claimed").iterdir()) == []
    assert (folder / "job.json").read_text() == "{}"


def test_network_file_systems_are_polled(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from dropbox_daemon.config import InboxConfig
    from dropbox_daemon.watcher import mount_of, watch_mode

    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        f"server:/export {tmp_path}/nfs nfs4 rw 0 0\n"
        f"//nas/share {tmp_path}/smb cifs rw 0 0\n"
        f"sshfs#me@h: {tmp_path}/fuse fuse.sshfs rw 0 0\n"
    )
    for sub, fstype in (("nfs", "nfs4"), ("smb", "cifs"), ("fuse", "fuse.sshfs")):
        (tmp_path / sub / "inbox").mkdir(parents=True)
        assert mount_of(tmp_path / sub / "inbox", str(mounts)) == (f"{tmp_path}/{sub}", fstype)
    assert mount_of(tmp_path, str(mounts))[1] == "ext4"

    import dropbox_daemon.watcher as w

    orig = w.mount_of
    monkeypatch.setattr(w, "mount_of", lambda p: orig(p, str(mounts)))
    nfs = InboxConfig(name="n", path=tmp_path / "nfs" / "inbox")
    assert watch_mode(nfs)[0] == "poll" and "nfs4" in watch_mode(nfs)[1]
    assert watch_mode(InboxConfig(name="l", path=tmp_path))[0] == "events"
    forced = InboxConfig(name="f", path=tmp_path / "nfs" / "inbox", watch="events")
    assert watch_mode(forced)[0] == "events"
