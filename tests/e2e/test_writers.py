"""Acceptance: writers that cannot rename are waited for; temporary names are never read."""

from __future__ import annotations

import hashlib
import json
import struct
import time

import pytest
from support import put_file, put_manifest

CHUNK = 1 << 20


def padded_mp4(src: bytes, total: int) -> bytes:
    """A valid mp4 grown to `total` bytes with a trailing 'free' box (players skip it)."""
    pad = total - len(src)
    return src + struct.pack(">I4s", pad, b"free") + b"\0" * (pad - 8)


def test_slow_chunked_copy_is_taken_only_when_complete(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(inbox={"settle_seconds": 1.0}).start()
    big = padded_mp4(media.video.read_bytes(), 50 * CHUNK)
    put_file(d.inbox / "a.wav", media.tone)
    # the manifest lands first, written in place, then the template in slow chunks
    (d.inbox / "slow.json").write_text(
        json.dumps({"job_id": "slow", "audio": "a.wav", "template": "big.mp4"})
    )
    with open(d.inbox / "big.mp4", "wb") as f:
        for off in range(0, len(big), CHUNK):
            f.write(big[off : off + CHUNK])
            f.flush()
            assert d.task("slow") is None, "taken while the copy was still running"
            assert (d.inbox / "slow.json").exists()
            time.sleep(0.1)  # the writer's own pace, not a wait on the daemon
    task = d.wait_state("slow", timeout=60)
    assert task["state"] == "done", task
    tmpl = next(i for i in task["inputs"] if i["field"] == "template")
    assert tmpl["bytes"] == len(big)
    assert tmpl["sha256"] == hashlib.sha256(big).hexdigest()


@pytest.mark.parametrize(
    "name",
    [
        "job.json.part",
        ".x.tmp",
        ".name.AbC123",
        "y.json.crdownload",
        ".hidden.json",
        "backup.json~",
        "z.json.partial",
    ],
)
def test_temporary_names_are_never_read(daemon, media, name: str) -> None:  # noqa: ANN001
    put_file(daemon.inbox / "a.wav", media.tone)
    put_file(daemon.inbox / "t.png", media.image)
    manifest = json.dumps({"job_id": "tmpname", "audio": "a.wav", "template": "t.png"}).encode()
    (daemon.inbox / name).write_bytes(manifest)
    # a sentinel dropped afterwards and finished proves the daemon looked at the inbox
    put_file(daemon.inbox / "b.wav", media.tone)
    put_file(daemon.inbox / "u.png", media.image)
    put_manifest(
        daemon.inbox / "sentinel.json",
        {"job_id": "sentinel", "audio": "b.wav", "template": "u.png"},
    )
    daemon.wait_state("sentinel", "done", timeout=60)
    assert (daemon.inbox / name).read_bytes() == manifest
    assert daemon.task("tmpname") is None
    assert (daemon.inbox / "a.wav").exists()


def test_cp_of_a_job_folder_manifest_first(daemon_factory, media) -> None:  # noqa: ANN001
    """A copy that does not rename: the manifest lands before the media, which arrive slowly."""
    d = daemon_factory(inbox={"settle_seconds": 1.0}).start()
    folder = d.inbox / "copied"
    folder.mkdir()
    (folder / "job.json").write_text(
        json.dumps({"job_id": "copied", "audio": "a.wav", "template": "t.png"})
    )
    for name, src in (("a.wav", media.tone), ("t.png", media.image)):
        data = src.read_bytes()
        with open(folder / name, "wb") as f:
            for off in range(0, len(data), 16384):
                f.write(data[off : off + 16384])
                f.flush()
                assert d.task("copied") is None
                time.sleep(0.05)  # the copy's own pace
    assert d.wait_state("copied", timeout=60)["state"] == "done"


def test_editor_saving_with_a_backup_file(daemon_factory, media) -> None:  # noqa: ANN001
    """vim-style save: backup `name~`, then the file written in place; only the manifest is read."""
    d = daemon_factory(inbox={"settle_seconds": 1.0}).start()
    put_file(d.inbox / "e.wav", media.tone)
    put_file(d.inbox / "e.png", media.image)
    first = json.dumps({"job_id": "edited", "audio": "e.wav", "template": "WRONG.png"})
    (d.inbox / "edited.json~").write_text(first)  # the backup of an earlier version
    (d.inbox / "4913").write_text("")  # vim's write test file
    with open(d.inbox / "edited.json", "w") as f:
        f.write(json.dumps({"job_id": "edited", "audio": "e.wav", "template": "e.png"}))
    task = d.wait_state("edited", timeout=60)
    assert task["state"] == "done", task
    assert (d.inbox / "edited.json~").read_text() == first  # the backup is never read or moved
