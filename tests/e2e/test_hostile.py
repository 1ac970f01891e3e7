"""The hostile-input corpus (tests/corpus/hostile.py) through a real daemon: each case ends in its
code, nothing outside the inbox, outbox and state is touched, and the daemon keeps serving."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from corpus.hostile import CASES
from support import put_file, put_manifest, wait_for


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device file needs root")
def test_hostile_corpus(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    outside = tmp_path / "outside"
    outside.mkdir()
    d = daemon_factory(limits={"max_audio_seconds": 60.0})
    for case in CASES:
        case.build(d.inbox, outside, media)
    before = tree_digest(outside)
    d.start()
    expected = {c.name: c for c in CASES if c.expect != "ignored"}

    def ended() -> dict:
        out = {}
        for t in d.tasks():
            key = (
                t["job_id"]
                if t["job_id"] in expected
                else (t.get("manifest_name") or "").rsplit(".", 1)[0]
            )
            if key in expected and t["state"] in ("done", "failed", "rejected"):
                out[key] = t
        return out if len(out) >= len(expected) else {}

    found = wait_for(ended, 120, "every hostile drop to end", d)
    for name, case in expected.items():
        task = found[name]
        if case.expect == "done":
            assert task["state"] == "done", task
            continue
        assert task["state"] in ("rejected", "failed"), (name, task["state"])
        err = json.loads((d.outbox / task["job_id"] / "error.json").read_text())
        assert err["code"] == case.expect, (name, err)
        if case.field:
            assert err.get("field") == case.field, (name, err)
    # never read: the symlinked job folder and the undecodable name are still where they were
    assert (d.inbox / "symfolder").is_symlink() and (outside / "elsewhere" / "job.json").exists()
    assert tree_digest(outside) == before  # nothing outside the inbox touched
    assert d.alive()
    put_file(d.inbox / "ok.wav", media.tone)
    put_file(d.inbox / "ok.png", media.image)
    put_manifest(
        d.inbox / "ok.json", {"job_id": "still-fine", "audio": "ok.wav", "template": "ok.png"}
    )
    assert d.wait_state("still-fine", timeout=60)["state"] == "done"
