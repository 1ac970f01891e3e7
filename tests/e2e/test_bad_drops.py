"""Acceptance: bad drops end `rejected` with a specific code naming the field; nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

from corpus.manifests import cases, fill, make_media
from support import put_file, put_manifest, wait_for


def test_bad_drops_are_rejected_with_specific_codes(daemon, media, tmp_path) -> None:  # noqa: ANN001
    outside = tmp_path / "outside.wav"
    outside.write_bytes(media.tone.read_bytes())
    hostname_before = Path("/etc/hostname").read_bytes()
    table = cases(tmp_path)
    assert len({code for _, code, _ in table.values()}) >= 15
    for c, (content, _code, _field) in table.items():
        make_media(daemon.inbox, c, media, outside)
        content = fill(content, c)
        dest = daemon.inbox / f"{c}.{'toml' if c == 'syntax-toml' else 'json'}"
        if isinstance(content, dict):
            put_manifest(dest, content)
        else:
            put_manifest(dest, content if isinstance(content, bytes) else content.encode())

    def by_manifest() -> dict[str, dict]:
        return {t["manifest_name"]: t for t in daemon.tasks() if t["state"] in ("rejected",)}

    found = wait_for(
        lambda: (r := by_manifest()) and len(r) >= len(table) and r,
        90,
        "every bad drop to be rejected",
        daemon,
    )
    for c, (_content, code, field) in table.items():
        name = f"{c}.{'toml' if c == 'syntax-toml' else 'json'}"
        task = found[name]
        folder = daemon.outbox / task["job_id"]
        err = json.loads((folder / "error.json").read_text())
        assert (err["code"], err.get("field")) == (code, field), (c, err)
        assert err["message"] and err["hint"], (c, err)
        if field not in ("(file)", "(top)"):
            assert field.split(".")[-1] in err["message"], (c, err["message"])
        assert task["error"] == err
        assert (folder / "input" / name).exists(), (c, list((folder / "input").iterdir()))
    # the drop's media were kept too, and nothing outside the inbox changed
    assert (
        daemon.outbox / found["text-as-wav.json"]["job_id"] / "input" / "text-as-wav-text.wav"
    ).exists()
    assert (
        daemon.outbox / found["zip-as-mp4.json"]["job_id"] / "input" / "zip-as-mp4-zip.mp4"
    ).exists()
    assert Path("/etc/hostname").read_bytes() == hostname_before
    assert outside.read_bytes() == media.tone.read_bytes()
    # salvaged job ids are used where the manifest had a valid one
    assert daemon.alive()
    put_file(daemon.inbox / "ok.wav", media.tone)
    put_file(daemon.inbox / "ok.png", media.image)
    put_manifest(
        daemon.inbox / "ok.json",
        {"job_id": "still-serving", "audio": "ok.wav", "template": "ok.png"},
    )
    assert daemon.wait_state("still-serving", timeout=60)["state"] == "done"


def test_fixed_redrop_of_a_rejected_job_runs(daemon, media) -> None:  # noqa: ANN001
    put_file(daemon.inbox / "a.wav", media.tone)
    put_manifest(
        daemon.inbox / "fixme.json",
        {"job_id": "fixme", "audio": "a.wav", "template": "missing.png"},
    )
    task = daemon.wait_state("fixme", timeout=30)
    assert task["state"] == "rejected" and task["error"]["code"] == "missing_file"
    fixed = daemon.outbox / "fixme" / "input"
    assert (fixed / "a.wav").exists()
    put_file(daemon.inbox / "a2.wav", media.tone)
    put_file(daemon.inbox / "missing.png", media.image)
    put_manifest(
        daemon.inbox / "fixme.json",
        {"job_id": "fixme", "audio": "a2.wav", "template": "missing.png"},
    )
    task = wait_for(
        lambda: (t := daemon.task("fixme")) and t["state"] == "done" and t,
        60,
        "re-drop done",
        daemon,
    )
    assert not (daemon.outbox / "fixme" / "error.json").exists()
