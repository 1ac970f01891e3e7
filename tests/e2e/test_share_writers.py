"""The share's writers (tests/corpus/share_writers.py) against a real `dropbox-daemon run`:
after each hostile case the daemon is alive, the case was answered once (rejected with its
code, or left alone with one log line), the bystanders are unchanged byte for byte, and a
normal job dropped after it is done within 30 s."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from corpus.share_writers import AT_START, CASES, Case, Ctx, outside_files
from support import put_file, put_manifest, wait_for

from dropbox_daemon.boundary import remove_tree
from dropbox_daemon.config import default_instance_id

ROOT_ONLY = {"media-device", "chardev"}  # mknod needs root


def digest(root: Path) -> str:
    """Names, types, sizes and contents of everything under `root` (links not followed)."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            p = Path(dirpath) / name
            st = os.lstat(p)
            h.update(f"{p.relative_to(root)}|{stat.S_IFMT(st.st_mode)}|{st.st_size}".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(p.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
    return h.hexdigest()


class Bystanders:
    """Files that belong to no hostile drop: another job's claim, outbox, and files outside."""

    def __init__(self, *roots: Path) -> None:
        self.roots = roots
        self.before = self.now()

    def now(self) -> dict[str, str]:
        return {str(r): digest(r) for r in self.roots}

    def unchanged(self) -> bool:
        return self.now() == self.before


def normal_job(d, media, n: int) -> None:  # noqa: ANN001
    folder = d.inbox / f".ok-{n}.tmp"
    folder.mkdir()
    put_file(folder / "a.wav", media.tone)
    put_file(folder / "t.png", media.image)
    (folder / "job.json").write_text(
        json.dumps({"job_id": f"ok-{n}", "audio": "a.wav", "template": "t.png"})
    )
    os.rename(folder, d.inbox / f"ok-{n}")
    task = d.wait_state(f"ok-{n}", timeout=30)
    assert task["state"] == "done", task


def claims(d) -> dict[str, tuple[Path, dict]]:  # noqa: ANN001
    """job id -> (claim folder, owner.json) of every claim in the inbox."""
    out = {}
    for owner_file in (d.inbox / ".dropbox" / "claimed").glob("*/owner.json"):
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and owner.get("job_id"):
            out[owner["job_id"]] = (owner_file.parent, owner)
    return out


def answers(d, case: Case) -> list[dict]:  # noqa: ANN001
    """Every task.json that answers the case's drop (by where its claim came from)."""
    by_job = claims(d)
    out = []
    for t in d.tasks():
        source = by_job.get(t["job_id"], (None, {}))[1].get("source", "")
        if Path(source).parts[:1] in ((case.manifest,), (case.name,)):
            out.append(t)
    return out


def share_lines(d, token: str) -> list[str]:  # noqa: ANN001
    return [ln for ln in d.log_text().splitlines() if token in ln and "share:" in ln]


def check_answered(d, case: Case) -> None:  # noqa: ANN001
    if case.expect == "ignored":
        wait_for(lambda: share_lines(d, case.token), 15, f"{case.name}: its one log line", d)
        return
    found = wait_for(
        lambda: [t for t in answers(d, case) if t["state"] in ("rejected", "failed")],
        15,
        f"{case.name}: its answer",
        d,
    )
    assert len(found) == 1, (case.name, found)
    task = found[0]
    err = json.loads((d.outbox / task["job_id"] / "error.json").read_text())
    assert task["state"] == "rejected" and err["code"] == case.expect, (case.name, err)
    if case.left:
        assert err.get("left_in_inbox"), (case.name, err)


@pytest.fixture
def share(daemon_factory, media, tmp_path):  # noqa: ANN001, ANN201
    outside = tmp_path / "outside"
    outside.mkdir()
    outside_files(outside, media)
    d = daemon_factory(daemon={"rescan_seconds": 0.5}, inbox={"settle_seconds": 0.2})
    assets = d.inbox / "assets"
    assets.mkdir()
    (assets / "voice.wav").write_bytes(media.tone.read_bytes())
    d.start()
    # the victim: a finished job whose claimed files stay in .dropbox/claimed/ until retention
    put_file(d.inbox / "victim.wav", media.tone)
    put_file(d.inbox / "victim.png", media.image)
    put_manifest(
        d.inbox / "victim.json",
        {"job_id": "victim", "audio": "victim.wav", "template": "victim.png"},
    )
    task = d.wait_state("victim", timeout=30)
    assert task["state"] == "done", task
    claim = claims(d)["victim"][0]
    ctx = Ctx(
        inbox=d.inbox,
        outside=outside,
        assets=assets,
        victim=claim / "drop" / "victim.wav",
        instance=default_instance_id(socket.gethostname(), d.state),
        media=media,
        sockets=[],
    )
    yield d, ctx, Bystanders(outside, assets, claim, d.outbox / "victim")
    for s in ctx.sockets:
        s.close()
    if d.alive():
        d.stop()
    remove_tree(d.root)  # pytest's own clean-up recurses, and the deep case is 1,000 levels


def test_the_share_writers_corpus(share, media) -> None:  # noqa: ANN001
    d, ctx, bystanders = share
    cases = [c for c in CASES if os.geteuid() == 0 or c.name not in ROOT_ONLY]
    assert len(CASES) >= 40
    for n, case in enumerate(cases):
        started = time.monotonic()
        case.build(ctx)
        check_answered(d, case)
        assert d.alive(), d.log_tail()
        normal_job(d, media, n)
        assert bystanders.unchanged(), (case.name, bystanders.now(), bystanders.before)
        assert time.monotonic() - started < 45, case.name
    # answered once: no case was answered again by the rescans since
    for case in cases:
        if case.expect == "ignored":
            assert len(share_lines(d, case.token)) == 1, (case.name, share_lines(d, case.token))
        else:
            assert len(answers(d, case)) == 1, case.name
    # what was never read is still where its writer put it
    for name in ("zero.json", "pipe.json", "linked-folder", "link-asset-x.wav"):
        assert os.path.lexists(d.inbox / name), name
    health = json.loads((d.daemon_dir / "health.json").read_text())
    assert health["intake"] == {"rejected_after_tries": 0, "quarantined": 0}, health["intake"]


def test_forged_coordination_files_neither_stop_a_start_nor_are_used(share, media) -> None:  # noqa: ANN001
    d, ctx, bystanders = share
    d.stop()
    for case in AT_START:
        case.build(ctx)
    d.start()
    for case in AT_START:
        wait_for(lambda c=case: share_lines(d, c.token), 15, f"{case.name}: its log line", d)
    normal_job(d, media, 0)
    assert bystanders.unchanged()
    assert (ctx.inbox / ".dropbox" / "claimed" / AT_START[1].name / "drop" / "stolen.json").exists()
    for case in AT_START:
        assert len(share_lines(d, case.token)) == 1, case.name


def test_input_holds_copies_so_the_documented_redrop_works(share, media) -> None:  # noqa: ANN001
    """outbox/<id>/input/ of a rejected drop: `mv input/* inbox/` is a valid drop again."""
    d, ctx, _ = share
    put_file(d.inbox / "fixme.wav", media.tone)
    put_file(d.inbox / "fixme.png", media.image)
    put_manifest(
        d.inbox / "fixme.json",
        {"job_id": "fixme", "audio": "fixme.wav", "template": "fixme.png", "engine": "sora"},
    )
    assert d.wait_state("fixme", timeout=30)["state"] == "rejected"
    inp = d.outbox / "fixme" / "input"
    assert all(os.lstat(p).st_nlink == 1 for p in inp.iterdir())
    assert stat.S_IMODE(os.lstat(inp / "fixme.wav").st_mode) & 0o007 == 0  # not world-readable
    fixed = json.loads((inp / "fixme.json").read_text())
    fixed["engine"] = "passthrough"
    (inp / "fixme.json").write_text(json.dumps(fixed))
    for p in sorted(inp.iterdir(), key=lambda p: p.suffix == ".json"):  # the manifest last
        os.rename(p, d.inbox / p.name)
    task = wait_for(
        lambda: (t := d.task("fixme")) and t["state"] == "done" and t, 30, "the re-drop", d
    )
    assert task["state"] == "done"


def test_a_template_of_unknown_length_keeps_the_loop_cache_bounded(
    daemon_factory, media, tmp_path
) -> None:  # noqa: ANN001
    """A Matroska file written to a pipe names neither its duration nor its frame count: the
    loop cache on the share is bounded by max_loop_cache_bytes all the same (here 1 MB, 17
    frames of 160x120), and the template that must loop past it is refused by name."""
    import subprocess

    from support import FFMPEG

    mkv = tmp_path / "unknown.mkv"
    with open(mkv, "wb") as out:
        subprocess.run(
            [
                FFMPEG,
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=160x120:r=25:d=1",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "matroska",
                "pipe:1",
            ],
            stdout=out,
            check=True,
        )
    import av

    with av.open(str(mkv)) as c:
        assert c.streams.video[0].frames == 0 and c.duration is None  # nothing declared
    d = daemon_factory(
        limits={"max_loop_cache_bytes": 1_000_000}, sections={"media": {"template_cache_bytes": 0}}
    ).start()
    put_file(d.inbox / "u.wav", media.tone)  # 2 s: the 1 s template must loop
    put_file(d.inbox / "u.mkv", mkv)
    put_manifest(d.inbox / "u.json", {"job_id": "unknown", "audio": "u.wav", "template": "u.mkv"})
    task = d.wait_state("unknown", timeout=60)
    assert task["state"] == "failed" and task["error"]["code"] == "template_too_long", task
    assert not list(d.inbox.glob(".dropbox/claimed/*/loop-cache.raw"))
    # with room for its 25 frames it loops as any template does
    d.stop()
    d2 = daemon_factory(limits={"max_loop_cache_bytes": 4_000_000}).start()
    put_file(d2.inbox / "u.wav", media.tone)
    put_file(d2.inbox / "u.mkv", mkv)
    put_manifest(d2.inbox / "u.json", {"job_id": "unknown2", "audio": "u.wav", "template": "u.mkv"})
    task = d2.wait_state("unknown2", timeout=60)
    assert task["state"] == "done" and abs(task["output"]["duration"] - 2.0) < 0.1, task
