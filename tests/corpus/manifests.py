"""Malformed manifests (27 cases), each with the code and field it must be rejected with.

Builders for the media they name live here too; tests/e2e/test_bad_drops.py drops them.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from support import put_file

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
