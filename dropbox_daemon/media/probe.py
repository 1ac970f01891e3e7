"""Probing media by their content (PyAV), never by their extension.

Probing decodes: the audio completely (its exact duration is the video's),
the template's first frame. A file that cannot be opened or decoded is a
RejectedDrop with the decoder's own words in the message.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.errors import MediaError, RejectedDrop

IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe"}
HASH_CHUNK = 1 << 20  # bytes read at a time for sha256


@dataclass
class AudioInfo:
    duration: float  # seconds, from the decoded sample count
    sample_rate: int
    channels: int
    codec: str
    container: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VisualInfo:
    kind: str  # "image" | "video"
    width: int
    height: int
    fps: float | None  # None for images
    duration: float | None
    frames: int | None  # as the container states it (may be an estimate)
    codec: str
    container: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _short(e: Exception) -> str:
    """The decoder's own words, without errno noise or the full path."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[0])
    return re.sub(r":\s*'[^']*'$", "", text)[:200]


def probe_audio(path: Path, limits: LimitsConfig, field: str = "audio") -> AudioInfo:
    """Open and decode all of an audio file; RejectedDrop if it is not usable audio."""
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.audio:
                raise RejectedDrop(
                    f"{field}: {path.name!r} has no audio stream (it is {c.format.name})",
                    code="audio_invalid",
                    field=field,
                    stage="preparing",
                    hint="drop a wav, mp3, m4a/aac, flac or ogg/opus file",
                )
            stream = c.streams.audio[0]
            declared = float(c.duration / av.time_base) if c.duration else None
            if declared and declared > limits.max_audio_seconds * 1.05:
                raise _too_long(field, path, declared, limits)
            samples = 0
            rate = stream.rate or stream.codec_context.sample_rate
            for frame in c.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate or rate
                if rate and samples / rate > limits.max_audio_seconds:
                    raise _too_long(field, path, samples / rate, limits)
            info = AudioInfo(
                duration=samples / rate if rate else 0.0,
                sample_rate=int(rate or 0),
                channels=stream.codec_context.channels or 0,
                codec=stream.codec_context.name,
                container=c.format.name,
            )
    except RejectedDrop:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise RejectedDrop(
            f"{field}: {path.name!r} is not readable audio: {_short(e)}",
            code="audio_invalid",
            field=field,
            stage="preparing",
            hint="drop a wav, mp3, m4a/aac, flac or ogg/opus file; check that it plays",
        ) from e
    if info.duration < 0.04:
        raise RejectedDrop(
            f"{field}: {path.name!r} holds no sound ({info.duration:.3f} s decoded)",
            code="audio_empty",
            field=field,
            stage="preparing",
            hint="the file may be truncated; export it again",
        )
    return info


def _too_long(field: str, path: Path, seconds: float, limits: LimitsConfig) -> RejectedDrop:
    return RejectedDrop(
        f"{field}: {path.name!r} lasts {seconds:.0f} s, over the limit of {limits.max_audio_seconds:.0f} s",
        code="audio_too_long",
        field=field,
        stage="preparing",
        hint="split it into shorter jobs, or raise [limits] max_audio_seconds",
    )


def image_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as a PNG, JPEG, GIF, BMP or WebP header declares it, read without decoding.

    Decoders allocate the whole picture first: a small file declaring 30000x30000
    pixels (a decompression bomb) must be refused before anything decodes it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"BM") and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = head[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(
                head[27:30], "little"
            )
        if kind == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (
                0xC0,
                0xC1,
                0xC2,
                0xC3,
                0xC5,
                0xC6,
                0xC7,
                0xC9,
                0xCA,
                0xCB,
                0xCD,
                0xCE,
                0xCF,
            ):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return w, h
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + struct.unpack(">H", head[i + 2 : i + 4])[0]
    return None


def probe_visual(path: Path, limits: LimitsConfig, field: str = "template") -> VisualInfo:
    """Open a template (video or image) and decode its first frame; RejectedDrop otherwise."""
    hint = "drop a video (mp4, mov, mkv, webm) or an image (jpg, png, webp) of the presenter"
    declared = image_header_size(path)
    if declared is not None and declared[0] * declared[1] > limits.max_pixels:
        raise RejectedDrop(
            f"{field}: {path.name!r} declares {declared[0]}x{declared[1]} pixels, over the limit of "
            f"{limits.max_pixels} (not decoded)",
            code="too_many_pixels",
            field=field,
            stage="preparing",
            hint="scale it down (e.g. to 1920x1080) or raise [limits] max_pixels",
        )
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.video:
                raise RejectedDrop(
                    f"{field}: {path.name!r} has no picture (it is {c.format.name})",
                    code="template_invalid",
                    field=field,
                    stage="preparing",
                    hint=hint,
                )
            stream = c.streams.video[0]
            cc = stream.codec_context
            w, h = cc.width, cc.height
            if w <= 0 or h <= 0:
                raise RejectedDrop(
                    f"{field}: {path.name!r} has no picture size ({w}x{h}): it is truncated or damaged",
                    code="template_invalid",
                    field=field,
                    stage="preparing",
                    hint=hint,
                )
            if w * h > limits.max_pixels:
                raise RejectedDrop(
                    f"{field}: {path.name!r} is {w}x{h} pixels, over the limit of {limits.max_pixels}",
                    code="too_many_pixels",
                    field=field,
                    stage="preparing",
                    hint="scale it down (e.g. to 1920x1080) or raise [limits] max_pixels",
                )
            fmt = c.format.name
            is_image = fmt in IMAGE_FORMATS or fmt.endswith("_pipe")
            first = next(c.decode(stream), None)
            if first is None:
                raise RejectedDrop(
                    f"{field}: {path.name!r} has no decodable frame",
                    code="template_invalid",
                    field=field,
                    stage="preparing",
                    hint=hint,
                )
            if is_image:
                return VisualInfo("image", w, h, None, None, 1, cc.name, fmt)
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            fps = float(rate)
            if not 0 < fps <= limits.max_fps:
                raise RejectedDrop(
                    f"{field}: {path.name!r} has a frame rate of {fps:g}, outside 0..{limits.max_fps:g}",
                    code="template_invalid",
                    field=field,
                    stage="preparing",
                    hint="re-encode it at 25 or 30 frames per second",
                )
            duration = None
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif c.duration:
                duration = float(c.duration / av.time_base)
            if duration and duration > limits.max_template_seconds:
                raise RejectedDrop(
                    f"{field}: {path.name!r} lasts {duration:.0f} s, over the limit of {limits.max_template_seconds:.0f} s",
                    code="template_too_long",
                    field=field,
                    stage="preparing",
                    hint="trim the template; it is looped to the audio's length anyway",
                )
            frames = stream.frames or (round(duration * fps) if duration else None)
            return VisualInfo("video", w, h, fps, duration, frames, cc.name, fmt)
    except RejectedDrop:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError, StopIteration) as e:
        raise RejectedDrop(
            f"{field}: {path.name!r} is not a readable image or video: {_short(e)}",
            code="template_invalid",
            field=field,
            stage="preparing",
            hint=hint,
        ) from e


@dataclass
class ResultInfo:
    duration: float
    width: int
    height: int
    fps: float
    frames: int
    video_codec: str
    audio_codec: str | None
    pix_fmt: str | None
    tags: dict[str, str]


def probe_result(path: Path) -> ResultInfo:
    """Probe a rendered mp4 (codecs, size, duration, frame count); MediaError if unreadable."""
    try:
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            a = c.streams.audio[0] if c.streams.audio else None
            duration = float(c.duration / av.time_base) if c.duration else 0.0
            return ResultInfo(
                duration=duration,
                width=v.codec_context.width,
                height=v.codec_context.height,
                fps=float(v.average_rate or 0),
                frames=int(v.frames),
                video_codec=v.codec_context.name,
                audio_codec=a.codec_context.name if a else None,
                pix_fmt=v.codec_context.pix_fmt,
                tags=dict(c.metadata),
            )
    except (av.FFmpegError, IndexError, OSError) as e:
        raise MediaError(
            f"the rendered file cannot be read back: {_short(e)}",
            code="output_invalid",
            stage="encoding",
            hint="look at ffmpeg.log in the job's claim folder",
        ) from e
