"""Hostile drops, each built for real on disk, with the outcome it must end in.

Together with tests/e2e/test_bad_drops.py (27 malformed manifests) this is the
hostile-input corpus: every case ends in a specific code, nothing outside the
job is touched, and the daemon keeps serving. Files that git cannot hold (FIFOs,
device nodes, symlinks, bombs) are made by the builders here.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support import FFMPEG, put_file


@dataclass
class Case:
    name: str
    expect: str  # the error code, "done", or "ignored" (never read as a drop)
    build: Callable[[Path, Path, object], None]  # (inbox, outside, media) -> writes the drop
    field: str | None = None


def manifest(inbox: Path, name: str, data: dict | str | bytes) -> None:
    body = (
        data
        if isinstance(data, bytes)
        else (data if isinstance(data, str) else json.dumps(data)).encode()
    )
    put_file(inbox / f"{name}.json", body)


def with_media(inbox: Path, media, name: str, audio=None, template=None) -> tuple[str, str]:  # noqa: ANN001
    a, t = f"{name}-a.wav", f"{name}-t.png"
    put_file(inbox / a, audio if audio is not None else media.tone)
    put_file(inbox / t, template if template is not None else media.image)
    return a, t


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 8, 9)  # a few rows; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def ffmpeg_video(path: Path, *args: str) -> Path:
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", *args, str(path)], check=True)
    return path


def simple(name: str, expect: str, field: str | None, **overrides) -> Case:  # noqa: ANN003
    def build(inbox: Path, outside: Path, media) -> None:  # noqa: ANN001
        a, t = with_media(inbox, media, name)
        manifest(inbox, name, {"job_id": name, "audio": a, "template": t, **overrides})

    return Case(name, expect, build, field)


def _tilde(inbox, outside, media):  # noqa: ANN001, ANN202
    manifest(inbox, "tilde", {"job_id": "tilde", "audio": "~/secret.wav", "template": "x.png"})


def _symlinked_job_folder(inbox, outside, media):  # noqa: ANN001, ANN202
    target = outside / "elsewhere"
    target.mkdir()
    a, t = with_media(target, media, "sl")
    (target / "job.json").write_text(json.dumps({"job_id": "symfolder", "audio": a, "template": t}))
    os.symlink(target, inbox / "symfolder")


def _device(inbox, outside, media):  # noqa: ANN001, ANN202
    os.mknod(inbox / "device-node.wav", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    _, t = with_media(inbox, media, "device")
    manifest(inbox, "device", {"job_id": "device", "audio": "device-node.wav", "template": t})


def _ten_mb(inbox, outside, media):  # noqa: ANN001, ANN202
    manifest(
        inbox,
        "tenmb",
        '{"job_id": "tenmb", "audio": "a", "template": "b", "meta": {"x": "'
        + "x" * 10_000_000
        + '"}}',
    )


def _deep(inbox, outside, media):  # noqa: ANN001, ANN202
    manifest(
        inbox,
        "deep",
        '{"audio": "a", "template": "b", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
    )


def _huge_int(inbox, outside, media):  # noqa: ANN001, ANN202
    put_file(
        inbox / "hugeint.toml",
        (
            'job_id = "hugeint"\naudio = "a"\ntemplate = "b"\npriority = ' + "9" * 400 + "\n"
        ).encode(),
    )


def _nul(inbox, outside, media):  # noqa: ANN001, ANN202
    manifest(inbox, "nul", '{"job_id": "nul", "audio": "a\\u0000.wav", "template": "b.png"}')


def _newline(inbox, outside, media):  # noqa: ANN001, ANN202
    manifest(inbox, "newline", {"job_id": "newline", "audio": "a\nb.wav", "template": "b.png"})


def _bad_utf8_name(inbox, outside, media):  # noqa: ANN001, ANN202
    (inbox / os.fsdecode(b"\xff\xfeweird.json")).write_bytes(b'{"audio": "a", "template": "b"}')


def _dash(inbox, outside, media):  # noqa: ANN001, ANN202
    put_file(inbox / "--help.wav", media.tone)
    put_file(inbox / "-rf t.png", media.image)
    manifest(inbox, "dash", {"job_id": "dash", "audio": "--help.wav", "template": "-rf t.png"})


def _truncated(kind: str):  # noqa: ANN202
    def build(inbox, outside, media):  # noqa: ANN001, ANN202
        name = f"trunc-{kind}"
        if kind == "mp4":
            t = f"{name}.mp4"
            put_file(inbox / t, media.video.read_bytes()[:1500])
            put_file(inbox / f"{name}.wav", media.tone)
            manifest(inbox, name, {"job_id": name, "audio": f"{name}.wav", "template": t})
        elif kind == "wav":
            put_file(inbox / f"{name}.wav", media.tone.read_bytes()[:46])
            put_file(inbox / f"{name}.png", media.image)
            manifest(
                inbox, name, {"job_id": name, "audio": f"{name}.wav", "template": f"{name}.png"}
            )
        else:
            put_file(inbox / f"{name}.png", media.image.read_bytes()[:60] + b"\0garbage" * 20)
            put_file(inbox / f"{name}.wav", media.tone)
            manifest(
                inbox, name, {"job_id": name, "audio": f"{name}.wav", "template": f"{name}.png"}
            )

    return build


def _long_audio(inbox, outside, media):  # noqa: ANN001, ANN202
    a, t = with_media(inbox, media, "hours", audio=media.tone_95)
    manifest(inbox, "hours", {"job_id": "hours", "audio": a, "template": t})


def _bomb(inbox, outside, media):  # noqa: ANN001, ANN202
    put_file(inbox / "bomb.png", png_bomb(30000, 30000))
    put_file(inbox / "bomb.wav", media.tone)
    manifest(inbox, "bomb", {"job_id": "bomb", "audio": "bomb.wav", "template": "bomb.png"})


def _absurd_fps(inbox, outside, media):  # noqa: ANN001, ANN202
    v = ffmpeg_video(
        outside / "fps.mp4",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=1000:duration=0.2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
    )
    put_file(inbox / "fps.mp4", v)
    put_file(inbox / "fps.wav", media.tone)
    manifest(inbox, "fps", {"job_id": "fps", "audio": "fps.wav", "template": "fps.mp4"})


def _absurd_size(inbox, outside, media):  # noqa: ANN001, ANN202
    v = ffmpeg_video(
        outside / "huge.mp4",
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:s=4096x4096:rate=1:duration=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
    )
    put_file(inbox / "huge.mp4", v)
    put_file(inbox / "huge.wav", media.tone)
    manifest(inbox, "huge", {"job_id": "huge", "audio": "huge.wav", "template": "huge.mp4"})


def _self(inbox, outside, media):  # noqa: ANN001, ANN202
    put_file(inbox / "selfref.png", media.image)
    manifest(
        inbox, "selfref", {"job_id": "selfref", "audio": "selfref.json", "template": "selfref.png"}
    )


CASES = [
    Case("tilde", "absolute_path", _tilde, "audio"),
    Case("symfolder", "ignored", _symlinked_job_folder),
    Case("device", "not_a_file", _device, "audio"),
    Case("tenmb", "manifest_too_large", _ten_mb, "(file)"),
    Case("deep", "manifest_syntax", _deep, "(file)"),
    Case("hugeint", "invalid_value", _huge_int, "priority"),
    Case("nul", "invalid_path", _nul, "audio"),
    Case("newline", "invalid_path", _newline, "audio"),
    Case("weird", "ignored", _bad_utf8_name),
    Case("dash", "done", _dash),
    Case("trunc-mp4", "template_invalid", _truncated("mp4"), "template"),
    Case("trunc-wav", "audio_invalid", _truncated("wav"), "audio"),
    Case("trunc-png", "template_invalid", _truncated("png"), "template"),
    Case("hours", "audio_too_long", _long_audio, "audio"),
    Case("bomb", "too_many_pixels", _bomb, "template"),
    Case("fps", "template_invalid", _absurd_fps, "template"),
    Case("huge", "too_many_pixels", _absurd_size, "template"),
    Case("selfref", "same_file", _self, "audio"),
    simple("bad-engine", "invalid_value", "engine", engine="sora"),
    simple("bad-url", "invalid_value", "callback_url", callback_url="file:///etc/passwd"),
]
