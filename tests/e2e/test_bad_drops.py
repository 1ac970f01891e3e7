"""Acceptance: bad drops end `rejected` with a specific code naming the field; nothing is lost."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from support import put_file, put_manifest, wait_for

# case -> (manifest text or dict, expected code, expected field)
GOOD = {"audio": "{c}.wav", "template": "{c}.png"}


def cases(tmp: Path) -> dict[str, tuple[object, str, str]]:
    def m(**kw: object) -> dict:
        return {**GOOD, **kw}

    return {
        "syntax-json": ('{"audio": "x.wav", ', "manifest_syntax", "(file)"),
        "syntax-toml": ('audio = "x.wav\ntemplate = 1', "manifest_syntax", "(file)"),
        "top-array": ("[1, 2, 3]", "manifest_syntax", "(top)"),
        "empty-manifest": ("", "empty_manifest", "(file)"),
        "not-utf8": (b'{"audio": "\xff\xfe.wav"}', "manifest_encoding", "(file)"),
        "unknown-field": (m(audoi="x.wav"), "unknown_field", "audoi"),
        "unknown-output-field": (m(output={"heigth": 720}), "unknown_field", "output.heigth"),
        "missing-audio": ({"template": "{c}.png"}, "missing_field", "audio"),
        "dotdot": (m(audio="../{c}.wav"), "path_escape", "audio"),
        "absolute": (m(template="/etc/hostname"), "absolute_path", "template"),
        "symlink-out": (m(audio="{c}-link.wav"), "path_escape", "audio"),
        "hard-link": (m(audio="{c}-hard.wav"), "hard_link", "audio"),
        "wrong-type": (m(priority="high"), "invalid_value", "priority"),
        "out-of-range": (m(priority=99), "invalid_value", "priority"),
        "bad-output-name": (m(output={"name": "../escape.mp4"}), "invalid_value", "output.name"),
        "bad-job-id": (m(job_id="bad id!"), "bad_job_id", "job_id"),
        "reserved-job-id": (m(job_id="_daemon"), "bad_job_id", "job_id"),
        "version-2": (m(version=2), "unsupported_version", "version"),
        "missing-file": (m(template="{c}-nothere.png"), "missing_file", "template"),
        "same-file": (m(template="{c}.wav"), "same_file", "template"),
        "dir-as-template": (m(template="{c}-dir"), "not_a_file", "template"),
        "fifo-audio": (m(audio="{c}-fifo.wav"), "not_a_file", "audio"),
        "empty-audio": (m(audio="{c}-empty.wav"), "empty_file", "audio"),
        "text-as-wav": (m(audio="{c}-text.wav"), "audio_invalid", "audio"),
        "zip-as-mp4": (m(template="{c}-zip.mp4"), "template_invalid", "template"),
        "wav-as-template": (m(template="{c}-2.wav"), "template_invalid", "template"),
        "too-large": (m(meta={"pad": "x" * 300_000}), "manifest_too_large", "(file)"),
    }


def make_media(inbox: Path, c: str, media, outside: Path) -> None:  # noqa: ANN001
    put_file(inbox / f"{c}.wav", media.tone)
    put_file(inbox / f"{c}.png", media.image)
    put_file(inbox / f"{c}-2.wav", media.tone)
    os.symlink("/etc/hostname", inbox / f"{c}-link.wav")
    os.link(outside, inbox / f"{c}-hard.wav")
    (inbox / f"{c}-dir").mkdir()
    os.mkfifo(inbox / f"{c}-fifo.wav")
    (inbox / f"{c}-empty.wav").write_bytes(b"")
    (inbox / f"{c}-text.wav").write_text("this is not audio at all\n" * 50)
    with zipfile.ZipFile(inbox / f"{c}-zip.mp4", "w") as z:
        z.writestr("a.txt", "hello" * 100)


def fill(value: object, c: str) -> object:
    if isinstance(value, str):
        return value.replace("{c}", c)
    if isinstance(value, dict):
        return {k: fill(v, c) for k, v in value.items()}
    return value


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
