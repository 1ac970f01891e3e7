"""Templates and audio as people really have them, each made here with the bundled ffmpeg.

A phone stores a portrait video's pixels sideways and says how to turn them
(a display matrix); a camera stores JPEG pixels as the sensor saw them and an
EXIF orientation; PAL DV has non-square pixels; phones record at a variable
frame rate; editors export HEVC, VP9, AV1, ProRes with alpha. Every builder
here starts from one upright presenter (the astronaut on a portrait canvas) and
stores it the way such a file would, so that a template shown right is upright
again and one shown wrong has no findable face. Small and short: the whole
corpus renders in well under a minute.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from support import FFMPEG, astronaut

W, H = 144, 256  # the presenter's portrait canvas (display size)
SECONDS = 1.0


@dataclass
class Case:
    """One drop: what to make, and what must come of it."""

    name: str
    template: Callable[[Path], Path]  # (folder) -> the template file it wrote
    audio: Callable[[Path], Path] | None = None  # None: the plain 1 s speech-like tone
    size: tuple[int, int] | None = (W, H)  # the result's display size (None: not checked)
    expect: str = "done"  # or the error code of a refusal
    text: tuple[str, ...] = ()  # words the error message (or the job's log) must contain
    job_folder: str | None = None  # the job folder's name (default: the case's name)
    extra: dict = field(default_factory=dict)


def presenter(w: int = W, h: int = H, t: float = 0.0) -> np.ndarray:
    """The upright presenter: the astronaut's head and shoulders on a gray portrait canvas,
    drifting a little with time so that a video has motion."""
    import cv2

    side = min(w, h)
    face = astronaut(side)
    canvas = np.full((h, w, 3), 118, np.uint8)
    dx = int(round(0.03 * side * np.sin(2 * np.pi * t)))
    y = (h - side) // 3
    x0 = (w - side) // 2 + dx
    lo, hi = max(0, x0), min(w, x0 + side)
    canvas[y : y + side, lo:hi] = face[:, lo - x0 : hi - x0]
    return cv2.GaussianBlur(canvas, (3, 3), 0) if side < 64 else canvas


def run_ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        input=stdin,
        check=True,
        capture_output=True,
    )


def frames(w: int, h: int, rate: float, seconds: float = SECONDS) -> Iterator[np.ndarray]:
    for i in range(round(seconds * rate)):
        yield presenter(w, h, i / rate)


def encode(
    path: Path,
    *out_args: str,
    size: tuple[int, int] = (W, H),
    rate: str = "25",
    seconds: float = SECONDS,
    pre: tuple[str, ...] = (),
) -> Path:
    """The upright presenter as raw BGR through ffmpeg with `out_args` (filters, codec)."""
    w, h = size
    raw = b"".join(f.tobytes() for f in frames(w, h, float(Fraction(rate)), seconds))
    run_ffmpeg(
        *pre,
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-framerate", rate,
        "-i", "pipe:", *out_args, str(path),
        stdin=raw,
    )  # fmt: skip
    return path


def h264(path: Path, *extra: str, **kw) -> Path:  # noqa: ANN003
    return encode(path, *extra, "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", **kw)


def rotated(turn: str, display: int) -> Callable[[Path], Path]:
    """Pixels stored turned by the `turn` filter, the display rotation set to undo it, as a
    phone writes them (`display`: counter-clockwise degrees, ffmpeg's -display_rotation)."""

    def make(folder: Path) -> Path:
        stored = h264(folder / "stored.mp4", "-vf", turn, "-pix_fmt", "yuv420p")
        out = folder / "phone.mp4"
        run_ffmpeg("-display_rotation", str(display), "-i", str(stored), "-c", "copy", str(out))
        stored.unlink()
        return out

    return make


def legacy_rotate_tag(folder: Path) -> Path:
    """A Matroska file with the old `rotate` tag instead of a display matrix."""
    return h264(
        folder / "tagged.mkv",
        "-vf", "transpose=cclock", "-pix_fmt", "yuv420p", "-metadata:s:v:0", "rotate=90",
    )  # fmt: skip


def exif_photo(orientation: int) -> Callable[[Path], Path]:
    """A JPEG whose pixels are stored as the sensor saw them, with an EXIF orientation."""

    def make(folder: Path) -> Path:
        from PIL import Image

        store = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}
        store[8] = Image.Transpose.ROTATE_270
        img = Image.fromarray(presenter()[:, :, ::-1]).transpose(store[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        out = folder / f"IMG_{orientation}.jpg"
        img.save(out, exif=exif, quality=92)
        return out

    return make


def pil_image(name: str, mode: str, **save) -> Callable[[Path], Path]:  # noqa: ANN003
    """The presenter saved by Pillow in an image mode cameras and editors write."""

    def make(folder: Path) -> Path:
        from PIL import Image

        rgb = presenter()[:, :, ::-1]
        if mode == "RGBA":  # the top rows transparent: they must show the background
            img = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
            a = np.array(img)
            a[:20, :, 3] = 0
            img = Image.fromarray(a)
        elif mode == "I;16":
            gray = np.array(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257
            img = Image.fromarray(gray)
        elif mode == "P":
            img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
        else:
            img = Image.fromarray(rgb).convert(mode)
        out = folder / name
        img.save(out, **save)
        return out

    return make


def animated(name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        from PIL import Image

        imgs = [Image.fromarray(f[:, :, ::-1]) for f in frames(W, H, 10)]
        out = folder / name
        imgs[0].save(out, save_all=True, append_images=imgs[1:], duration=100, loop=0)
        return out

    return make


def big_photo(folder: Path) -> Path:
    """A 35-megapixel phone photo (7000x5000)."""
    import cv2
    from PIL import Image

    img = cv2.resize(presenter(700, 500), (7000, 5000), interpolation=cv2.INTER_LINEAR)
    out = folder / "PXL_35mp.jpg"
    Image.fromarray(img[:, :, ::-1]).save(out, quality=85)
    return out


def alpha_prores(folder: Path) -> Path:
    """ProRes 4444 with an alpha channel whose top rows are transparent."""
    return encode(
        folder / "keyed.mov",
        "-vf", "format=yuva444p10le,geq=lum='lum(X,Y)':cb='cb(X,Y)':cr='cr(X,Y)':a='if(lt(Y,20),0,1023)'",
        "-c:v", "prores_ks", "-profile:v", "4444",
    )  # fmt: skip


def vfr_phone(folder: Path, seconds: float = SECONDS) -> Path:
    """Variable frame rate as phones record: 30 fps nominal, frame times jittered."""
    return h264(
        folder / "vfr.mp4",
        "-vf", "setpts='(N/30+0.006*sin(N*1.7))/TB'", "-fps_mode", "passthrough",
        "-pix_fmt", "yuv420p", rate="30", seconds=seconds,
    )  # fmt: skip


def with_own_audio(folder: Path) -> Path:
    """A template with a 4 s audio track of its own (it must not reach the result)."""
    silent = h264(folder / "v.mp4", "-pix_fmt", "yuv420p")
    out = folder / "with-audio.mp4"
    run_ffmpeg(
        "-i", str(silent), "-f", "lavfi", "-i", "sine=f=900:d=4", "-map", "0:v", "-map", "1:a",
        "-c:v", "copy", "-c:a", "aac", str(out),
    )  # fmt: skip
    silent.unlink()
    return out


def tone(
    name: str, *args: str, seconds: float = SECONDS, rate: int = 48000
) -> Callable[[Path], Path]:
    """A speech-like tone (syllables), written with `args` (codec, rate, layout)."""
    expr = f"0.5*sin(2*PI*170*t)*abs(sin(2*PI*3*t)):s={rate}:d={seconds}"

    def make(folder: Path) -> Path:
        out = folder / name
        run_ffmpeg("-f", "lavfi", "-i", f"aevalsrc='{expr}'", *args, str(out))
        return out

    return make


def audio_in_video(folder: Path) -> Path:
    """A phone clip given as the audio: its first audio stream (48 kHz stereo AAC) is used."""
    out = folder / "clip.mp4"
    expr = "0.5*sin(2*PI*170*t)*abs(sin(2*PI*3*t))"
    run_ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=s=96x64:r=30:d={SECONDS}",
        "-f", "lavfi", "-i", f"aevalsrc='{expr}|{expr}':s=48000:d={SECONDS}",
        "-f", "lavfi", "-i", f"sine=f=1000:d={SECONDS}",
        "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-c:a", "aac", str(out),
    )  # fmt: skip
    return out


def undecodable(folder: Path) -> Path:
    """AVS2 video: the bundled ffmpeg can write it, the decoder library cannot read it."""
    return encode(folder / "broadcast.mkv", "-c:v", "libxavs2", size=(64, 48), seconds=0.2)


def cases() -> list[Case]:
    sixteen_nine = (1024, 576)
    return [
        # -- orientation
        Case("phone-rot90", rotated("transpose=cclock", -90), text=("turned 90 degrees",)),
        Case("phone-rot270", rotated("transpose=clock", 90), text=("turned 270 degrees",)),
        Case("rot180", rotated("hflip,vflip", 180), text=("turned 180 degrees",)),
        Case("rotate-tag", legacy_rotate_tag, text=("turned 90 degrees",)),
        Case(
            "sideways-no-flag",  # an editor's export that dropped the rotation: named, not guessed
            lambda d: h264(d / "export.mp4", "-vf", "transpose=cclock", "-pix_fmt", "yuv420p"),
            size=None,
            expect="no_face",
            text=("looks turned", "90 degrees clockwise", "upright"),
        ),
        Case("exif-3", exif_photo(3)),
        Case("exif-6", exif_photo(6)),
        Case("exif-8", exif_photo(8)),
        # -- geometry and timing
        Case(
            "pal-sar",
            lambda d: h264(d / "dv.mp4", "-vf", "scale=720:576,setsar=64/45", "-pix_fmt",
                           "yuv420p", size=sixteen_nine),  # fmt: skip
            size=sixteen_nine,
            text=("pixel aspect 64:45",),
        ),
        Case("odd-size", lambda d: h264(d / "odd.mp4", "-pix_fmt", "yuv444p", size=(145, 257))),
        Case("vfr", vfr_phone),
        Case("ntsc-23.976", lambda d: h264(d / "film.mp4", "-pix_fmt", "yuv420p", rate="24000/1001")),
        Case("ntsc-29.97", lambda d: h264(d / "tv.mp4", "-pix_fmt", "yuv420p", rate="30000/1001")),
        Case("ntsc-59.94", lambda d: h264(d / "fast.mp4", "-pix_fmt", "yuv420p", rate="60000/1001")),
        Case(
            "interlaced",
            lambda d: h264(d / "576i.mp4", "-vf", "tinterlace=4", "-flags", "+ildct+ilme",
                           "-x264-params", "interlaced=1", "-pix_fmt", "yuv420p", rate="50"),  # fmt: skip
            text=("deinterlaced",),
        ),
        # -- codecs and pixel formats
        Case("hevc", lambda d: encode(d / "hevc.mp4", "-c:v", "libx265", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p", "-tag:v", "hvc1")),
        Case("hevc-10bit", lambda d: encode(d / "hdr.mov", "-c:v", "libx265", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p10le")),
        Case("vp9", lambda d: encode(d / "web.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")),
        Case("av1", lambda d: encode(d / "av1.mp4", "-c:v", "libsvtav1", "-preset", "12", "-pix_fmt", "yuv420p")),
        Case("prores", lambda d: encode(d / "edit.mov", "-c:v", "prores_ks", "-profile:v", "2")),
        Case("prores-alpha", alpha_prores, text=("transparency flattened",)),
        Case("mjpeg", lambda d: encode(d / "cam.avi", "-c:v", "mjpeg", "-pix_fmt", "yuvj422p", "-q:v", "3")),
        Case("h264-444", lambda d: h264(d / "444.mp4", "-pix_fmt", "yuv444p")),
        Case("h264-fullrange", lambda d: h264(d / "full.mp4", "-pix_fmt", "yuvj420p")),
        Case("h264-10bit", lambda d: h264(d / "ten.mp4", "-pix_fmt", "yuv420p10le")),
        Case("template-audio", with_own_audio),
        Case("undecodable", undecodable, size=None, expect="template_codec", text=("xavs2", "H.264")),
        # -- images
        Case("jpeg-cmyk", pil_image("print.jpg", "CMYK", quality=92)),
        Case("jpeg-gray", pil_image("gray.jpg", "L", quality=92)),
        Case("png-16bit", pil_image("deep.png", "I;16")),
        Case("png-palette", pil_image("pal.png", "P")),
        Case("png-rgba", pil_image("cutout.png", "RGBA"), text=("transparency flattened",)),
        Case("webp", pil_image("still.webp", "RGB", quality=90)),
        Case("gif-animated", animated("wave.gif")),
        Case("webp-animated", animated("wave.webp"), size=None, expect="template_invalid", text=("animated WebP", "mp4")),
        Case("photo-35mp", big_photo, size=None, text=("7000x5000 scaled down",)),
        # -- audio
        Case("aac-48k-stereo", h264_still, tone("a.m4a", "-ac", "2", "-c:a", "aac")),
        Case("flac-5.1", h264_still, tone("a.flac", "-af", "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0", "-c:a", "flac")),
        Case("aac-5.1", h264_still, tone("a.m4a", "-af", "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0", "-c:a", "aac")),
        Case("wav-ulaw-8k", h264_still, tone("a.wav", "-c:a", "pcm_mulaw", rate=8000)),
        Case("wav-alaw-8k", h264_still, tone("a.wav", "-c:a", "pcm_alaw", rate=8000)),
        Case("wav-192k-24bit", h264_still, tone("a.wav", "-c:a", "pcm_s24le", rate=192000)),
        Case("wav-32bit", h264_still, tone("a.wav", "-c:a", "pcm_s32le")),
        Case("wav-float", h264_still, tone("a.wav", "-c:a", "pcm_f32le")),
        Case("wav-8bit", h264_still, tone("a.wav", "-c:a", "pcm_u8", rate=11025)),
        Case("mp3", h264_still, tone("a.mp3", "-c:a", "libmp3lame")),
        Case("opus-ogg", h264_still, tone("a.ogg", "-c:a", "libopus")),
        Case("vorbis-webm", h264_still, tone("a.webm", "-c:a", "libvorbis")),
        Case("audio-from-video", h264_still, audio_in_video),
        Case("silence", h264_still, silence),
        Case("short-0.3s", h264_still, tone("a.wav", "-c:a", "pcm_s16le", seconds=0.3, rate=16000)),
        Case("too-short", h264_still, tone("a.wav", "-c:a", "pcm_s16le", seconds=0.01, rate=16000), size=None, expect="audio_empty", text=("holds no sound",)),
        # -- names
        Case(
            "names",
            lambda d: h264(d / "Präsentation Ü 01 – 東京.mp4", "-pix_fmt", "yuv420p"),
            tone("Grüße aus Köln – 音声.wav", "-c:a", "pcm_s16le"),
            job_folder="Jöb Ördner – 2026",
        ),
    ]  # fmt: skip


def h264_still(folder: Path) -> Path:
    """The plain template of the audio cases: a short upright H.264 clip."""
    return h264(folder / "t.mp4", "-pix_fmt", "yuv420p")


def silence(folder: Path) -> Path:
    out = folder / "silence.wav"
    run_ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(SECONDS), str(out))
    return out


def default_audio(folder: Path) -> Path:
    return tone("tone.wav", "-c:a", "pcm_s16le", rate=16000)(folder)
