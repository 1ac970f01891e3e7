"""Probing media by their content (PyAV), never by their extension.

Probing decodes: the audio completely (its exact duration is the video's),
the template's first frame. A file that cannot be opened or decoded is a
RejectedDrop with the decoder's own words in the message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.errors import MediaError, RejectedDrop
from dropbox_daemon.render.media.colour import Colour
from dropbox_daemon.render.media.headers import image_header_size

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
    width: int  # as a player shows it: non-square pixels widened, display rotation applied
    height: int
    fps: float | None  # None for images
    duration: float | None
    frames: int | None  # as the container states it (may be an estimate)
    codec: str
    container: str
    coded_width: int = 0  # the stored picture, before rotation and pixel aspect
    coded_height: int = 0
    rotation: int = 0  # degrees a player turns the stored picture clockwise (phones: 90)
    sar: str | None = None  # pixel aspect ratio when not square ("64:45")
    pix_fmt: str = ""
    interlaced: bool = False  # deinterlaced while decoding
    alpha: bool = False  # transparent pixels are flattened onto [media] background
    colour: str = ""  # how its code values are meant (Colour.describe: "BT.709 limited range")
    transfer: str = "sdr"  # "sdr", or "hlg" / "pq" for HDR (tone-mapped unless hdr = "keep")

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


TEMPLATE_HINT = "drop a video (mp4, mov, mkv, webm) or an image (jpg, png, webp) of the presenter"
ALPHA_FORMATS = re.compile(r"^(yuva|gbrap|ya\d|pal8)|rgba|bgra|argb|abgr")


def has_alpha(pix_fmt: str) -> bool:
    """Whether a pixel format carries transparency (a palette may)."""
    return bool(ALPHA_FORMATS.search(pix_fmt))


def display_rotation(frame: av.VideoFrame, stream: Any) -> int:
    """Degrees (0/90/180/270) a player turns the stored picture clockwise: the display matrix
    (phones; a JPEG's EXIF orientation arrives as one too), else the legacy `rotate` tag."""
    ccw = frame.rotation or 0
    if not ccw:
        tags = {k.lower(): v for k, v in stream.metadata.items()}  # Matroska says ROTATE
        try:
            return round(float(tags.get("rotate", 0)) / 90) * 90 % 360
        except ValueError:
            return 0
    return round(-ccw / 90) * 90 % 360


def pixel_aspect(stream: Any) -> Fraction | None:
    """The sample (pixel) aspect ratio when it is not square and plausible, else None."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar and sar != 1 and Fraction(1, 10) <= sar <= 10:
            return Fraction(sar)
    return None


def display_size(w: int, h: int, sar: Fraction | None, rotation: int) -> tuple[int, int]:
    """(width, height) a player shows: non-square pixels widened, then turned."""
    dw = max(1, round(w * sar)) if sar else w
    return (h, dw) if rotation in (90, 270) else (dw, h)


def animated_webp(path: Path) -> bool:
    """A WebP whose VP8X header sets the animation flag (the decoder reads stills only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(21)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def _refuse(
    field: str, path: Path, what: str, code: str = "template_invalid", hint: str = TEMPLATE_HINT
) -> RejectedDrop:
    return RejectedDrop(
        f"{field}: {path.name!r} {what}", code=code, field=field, stage="preparing", hint=hint
    )


def _check_declared(path: Path, limits: LimitsConfig, field: str) -> None:
    """Refuse, before any decoder allocates it, a picture whose header declares too many pixels."""
    declared = image_header_size(path)
    if declared is not None and declared[0] * declared[1] > limits.max_image_pixels:
        raise _refuse(
            field,
            path,
            f"declares {declared[0]}x{declared[1]} pixels, over the limit of "
            f"{limits.max_image_pixels} for a photo (not decoded)",
            code="too_many_pixels",
            hint="scale it down (e.g. to 4000x3000) or raise [limits] max_image_pixels",
        )
    if animated_webp(path):
        raise _refuse(
            field,
            path,
            "is an animated WebP, which the decoder cannot read",
            hint="export it as an mp4 (or a GIF), or drop a still image",
        )


REENCODE = "re-encode it as H.264 (e.g. ffmpeg -i in.mov -c:v libx264 out.mp4) or export a PNG"


def unknown_codec(c: Any, stream: Any) -> str:
    """A name for a codec the decoder does not know: the image format, or who wrote it."""
    if c.format.name.endswith("_pipe"):
        return c.format.name.removesuffix("_pipe")
    encoder = str(stream.metadata.get("ENCODER") or stream.metadata.get("encoder") or "")
    return f"an unknown codec (written by {encoder.split()[-1]})" if encoder else "an unknown codec"


def _first_frame(c: Any, stream: Any, path: Path, field: str) -> av.VideoFrame:
    """The template's first picture; a codec that fails to decode is named, not traced."""
    name = stream.codec_context.name
    try:
        first = next(c.decode(stream), None)
    except av.FFmpegError as e:
        raise _refuse(
            field,
            path,
            f"is {name} video that does not decode here: {_short(e)}",
            code="template_codec",
            hint="check that it plays; else " + REENCODE,
        ) from e
    if first is None:
        raise _refuse(field, path, "has no decodable frame")
    return first


def _describe(c: Any, stream: Any, first: av.VideoFrame, is_image: bool) -> VisualInfo:
    cc = stream.codec_context
    w, h = first.width or cc.width, first.height or cc.height
    rotation, sar = display_rotation(first, stream), pixel_aspect(stream)
    dw, dh = display_size(w, h, sar, rotation)
    extra = dict(
        coded_width=w,
        coded_height=h,
        rotation=rotation,
        sar=f"{sar.numerator}:{sar.denominator}" if sar else None,
        pix_fmt=first.format.name,
        interlaced=bool(first.interlaced_frame) and not is_image,
        alpha=has_alpha(first.format.name),
        colour=(colour := Colour.of_frame(first)).describe(),
        transfer=colour.transfer,
    )
    if is_image:
        return VisualInfo("image", dw, dh, None, None, 1, cc.name, c.format.name, **extra)
    rate = stream.average_rate or stream.guessed_rate or Fraction(0)
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif c.duration:
        duration = float(c.duration / av.time_base)
    frames = stream.frames or (round(duration * float(rate)) if duration else None)
    return VisualInfo(
        "video", dw, dh, float(rate), duration, frames, cc.name, c.format.name, **extra
    )


def _check_video(info: VisualInfo, path: Path, limits: LimitsConfig, field: str) -> None:
    if not 0 < (info.fps or 0) <= limits.max_fps:
        raise _refuse(
            field,
            path,
            f"has a frame rate of {info.fps or 0:g}, outside 0..{limits.max_fps:g}",
            hint="re-encode it at 25 or 30 frames per second",
        )
    if info.duration and info.duration > limits.max_template_seconds:
        raise _refuse(
            field,
            path,
            f"lasts {info.duration:.0f} s, over the limit of {limits.max_template_seconds:.0f} s",
            code="template_too_long",
            hint="trim the template; it is looped to the audio's length anyway",
        )


def probe_visual(path: Path, limits: LimitsConfig, field: str = "template") -> VisualInfo:
    """Open a template (video or image) and decode its first frame; RejectedDrop otherwise.

    The size reported is the one a player shows (display rotation, pixel aspect); a photo
    over max_pixels is accepted up to max_image_pixels (it is scaled down), a video is not."""
    _check_declared(path, limits, field)
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.video:
                raise _refuse(field, path, f"has no picture (it is {c.format.name})")
            stream = c.streams.video[0]
            cc = stream.codec_context
            if cc is None:
                raise _refuse(
                    field,
                    path,
                    f"uses {unknown_codec(c, stream)}, a video codec this decoder cannot read",
                    code="template_codec",
                    hint=REENCODE,
                )
            w, h = cc.width, cc.height
            if w <= 0 or h <= 0:
                raise _refuse(
                    field, path, f"has no picture size ({w}x{h}): it is truncated or damaged"
                )
            is_image = c.format.name in IMAGE_FORMATS or c.format.name.endswith("_pipe")
            ceiling = limits.max_image_pixels if is_image else limits.max_pixels
            if w * h > ceiling:
                raise _refuse(
                    field,
                    path,
                    f"is {w}x{h} pixels, over the limit of {ceiling}",
                    code="too_many_pixels",
                    hint="scale it down (e.g. to 1920x1080) or raise [limits] "
                    + ("max_image_pixels" if is_image else "max_pixels"),
                )
            info = _describe(c, stream, _first_frame(c, stream, path, field), is_image)
            if not is_image:
                _check_video(info, path, limits, field)
            return info
    except RejectedDrop:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError, StopIteration) as e:
        raise _refuse(field, path, f"is not a readable image or video: {_short(e)}") from e


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
