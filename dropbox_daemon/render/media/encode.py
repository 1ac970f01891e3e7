"""The H.264 + AAC encoder: raw frames on ffmpeg's stdin (BT.709 4:2:0 made in the worker
for SDR, BGR for a kept HDR template), the original audio muxed.

Command lines are built with ffmpeg-python and run without a shell; ffmpeg's
stderr goes to a log file whose tail becomes the error message on failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import ffmpeg
import numpy as np

from dropbox_daemon.errors import MediaError, RenderError
from dropbox_daemon.render.media.colour import I420Packer, OutputColour

STDERR_TAIL = 1500  # characters of ffmpeg's log quoted in an error
NVIDIA_DEVICE = Path("/dev/nvidiactl")
# libx264's presets as NVENC's p1 (fastest) .. p7 (best)
NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p2",
    "veryfast": "p3",
    "faster": "p3",
    "fast": "p4",
    "medium": "p4",
    "slow": "p5",
    "slower": "p6",
    "veryslow": "p7",
}


def ffmpeg_binary(configured: str | None) -> str:
    """The ffmpeg to run: the configured one, else the binary shipped with imageio-ffmpeg."""
    if configured:
        return configured
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# NVENC's H.264 frame sizes (NVIDIA's Video Codec SDK support matrix: 145x49 up to 4096x4096
# from Pascal on); outside them ffmpeg cannot open the encoder
NVENC_MIN, NVENC_MAX = (145, 49), (4096, 4096)
NVENC_RETRY_SECONDS = 600.0  # a failed test encode is tried again after this long
_probed: dict[str, tuple[str | None, float]] = {}  # ffmpeg -> (problem, when), per process


def nvenc_problem(ffmpeg_bin: str, now: float | None = None) -> str | None:
    """None when a short test encode with h264_nvenc succeeds here, else why not. A success
    holds for the worker's life; a failure (a busy GPU, the sessions of a GeForce card all
    taken) is tested again after NVENC_RETRY_SECONDS, so one bad moment does not pin libx264."""
    now = time.monotonic() if now is None else now
    seen = _probed.get(ffmpeg_bin)
    if seen is not None and (seen[0] is None or now - seen[1] < NVENC_RETRY_SECONDS):
        return seen[0]
    problem = _test_encode(ffmpeg_bin)
    _probed[ffmpeg_bin] = (problem, now)
    return problem


def _test_encode(ffmpeg_bin: str) -> str | None:
    if not NVIDIA_DEVICE.exists():
        return f"no NVIDIA device ({NVIDIA_DEVICE} is absent)"
    probe = [
        ffmpeg_bin,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=256x256:r=25:d=0.2",
        "-c:v",
        "h264_nvenc",
        "-f",
        "null",
        "-",
    ]
    try:
        r = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"the test encode did not run: {e}"
    if r.returncode != 0:
        words = " ".join(r.stderr.split())[:300] or f"exit status {r.returncode}"
        return f"a test encode with h264_nvenc failed: {words}"
    return None


def nvenc_size_problem(size: tuple[int, int] | None) -> str | None:
    if size is None:
        return None
    (w, h), (w0, h0), (w1, h1) = size, NVENC_MIN, NVENC_MAX
    if w < w0 or h < h0 or w > w1 or h > h1:
        return f"{w}x{h} is outside NVENC's H.264 sizes ({w0}x{h0} to {w1}x{h1})"
    return None


def video_encoder(
    ffmpeg_bin: str, wanted: str, size: tuple[int, int] | None = None
) -> tuple[str, str]:
    """The H.264 encoder to use and why: `auto` takes h264_nvenc where a test encode works
    and the frame size is one NVENC encodes, else libx264; a forced h264_nvenc that cannot
    work here is a RenderError naming why."""
    if wanted == "libx264":
        return "libx264", 'forced by [media] video_encoder = "libx264"'
    problem = nvenc_size_problem(size) or nvenc_problem(ffmpeg_bin)
    if problem is None:
        return "h264_nvenc", "GPU encode (a test encode works)"
    if wanted == "h264_nvenc":
        raise RenderError(
            f"[media] video_encoder is h264_nvenc, but {problem}",
            code="encoder_unavailable",
            stage="encoding",
            hint='set [media] video_encoder = "auto" (libx264 where NVENC cannot run), or fix the GPU driver; `dropbox-daemon doctor` shows the cause',
        )
    return "libx264", problem


def quality(vcodec: str, crf: int, preset: str) -> dict[str, object]:
    """The encoder's quality options: constant quality on NVENC (-rc vbr -cq N -b:v 0 is its
    counterpart of libx264's -crf N), its p1-p7 preset for libx264's name."""
    if vcodec == "h264_nvenc":
        return {
            "rc": "vbr",
            "cq": crf,
            "video_bitrate": 0,
            "preset": NVENC_PRESETS.get(preset, "p4"),
        }
    return {"crf": crf, "preset": preset}


def encode_args(
    ffmpeg_bin: str,
    out_path: Path,
    *,
    size: tuple[int, int],
    fps: float,
    audio_path: Path,
    duration: float,
    crf: int,
    preset: str,
    audio_bitrate: str,
    metadata: dict[str, str],
    threads: int = 0,
    vcodec: str = "libx264",
    colour: OutputColour | None = None,
    packed: bool = False,
) -> list[str]:
    """The argument list of one encode (no shell ever sees it): BGR in, Y'CbCr out by the
    result's matrix (BT.709 unless an HDR template is kept), the stream tagged to match;
    `packed`: the frames come as I420Packer's BT.709 4:2:0 instead of BGR."""
    colour = colour or OutputColour()
    video = ffmpeg.input(
        "pipe:",
        format="rawvideo",
        pix_fmt="yuv420p" if packed else "bgr24",
        s=f"{size[0]}x{size[1]}",
        framerate=fps,
    )
    audio = ffmpeg.input(str(audio_path))
    opts: dict[str, object] = {
        "vcodec": vcodec,
        "vf": colour.ffmpeg_filter(packed),
        "pix_fmt": colour.pix_fmt,
        "color_range": "tv",
        **colour.ffmpeg_tags(),
        **quality(vcodec, crf, preset),
        "acodec": "aac",
        "audio_bitrate": audio_bitrate,
        # use_metadata_tags: keep custom keys (ai_generated) that mp4 has no atom for
        "movflags": "+faststart+use_metadata_tags",
        "t": f"{duration:.6f}",
        "f": "mp4",
        "r": fps,
    }
    if threads:
        opts["threads"] = threads
    if packed:  # I420Packer's chroma is the mean of each 2x2 block
        opts["chroma_sample_location"] = "center"
    # the first audio stream only: a video file given as the audio may carry several
    args = ffmpeg.output(video.video, audio["a:0"], str(out_path), **opts).compile(
        cmd=ffmpeg_bin, overwrite_output=False
    )
    meta = []
    for key, value in metadata.items():
        meta += ["-metadata", f"{key}={value}"]
    # metadata options go right before the output path
    head = [ffmpeg_bin, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    return [*head, *args[1:-1], *meta, args[-1]]


@dataclass(frozen=True)
class EncodeCommand:
    """The result's ffmpeg command, and libx264's where `auto` chose NVENC (used if NVENC
    fails to open)."""

    args: list[str]
    fallback: list[str] | None = None
    colour: OutputColour = OutputColour()

    @property
    def packed(self) -> bool:
        """The frames go in as I420Packer's 4:2:0, not BGR (as encoder_args built `args`)."""
        return self.colour.packed_here


PIPE_BYTES = 1 << 20  # the frame pipe's buffer: Linux's largest for any user by default


def widen_pipe(pipe: IO[bytes] | None) -> None:
    """Give the pipe to ffmpeg a 1 MiB buffer instead of 64 KiB: a 720p frame then crosses
    in 3 wake-ups of the encoder instead of 43, and fewer switches leave the model's threads
    their cores (first 720p job 25.7-27.0 -> 23.4-24.0 s median, 2 A/B runs of 3 alternating
    rounds, 2 cores). Best effort: a host that caps pipe sizes keeps the default."""
    if pipe is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # F_SETPIPE_SZ: Linux only
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


HOLD_BYTES = 256 << 20  # frames kept for a fallback until the encoder has shown it opened


class Encoder:
    """One running ffmpeg encode; write() frames in order, then close().

    With `fallback` (libx264's command, where `auto` chose NVENC), the first frames are also
    kept until ffmpeg has written output: an NVENC that fails to open (no free session on a
    GeForce card, the GPU's memory full) is replaced by the fallback, the kept frames are
    replayed, and `on_fallback` is told why. A failure after that is the job's."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        fallback: list[str] | None = None,
        on_fallback: Callable[[str], None] | None = None,
        packed: bool = False,
    ) -> None:
        """`packed`: the commands take I420Packer's 4:2:0; write() still takes BGR frames."""
        self.args, self.log_path = args, log_path
        self.packed = packed
        self._packer: I420Packer | None = None
        self.fallback, self.on_fallback = fallback, on_fallback or (lambda why: None)
        self.held: list[np.ndarray] | None = [] if fallback else None
        self.held_bytes = 0
        self.frames = 0
        self._start(args)

    def _start(self, args: list[str]) -> None:
        self.args = args
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()/kill()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )
        widen_pipe(self.proc.stdin)

    def write(self, frame: np.ndarray) -> None:
        if self.held is not None:
            self.held.append(frame.copy())
            self.held_bytes += frame.nbytes
        try:
            self._put(frame)
        except BrokenPipeError as e:
            self.proc.wait()
            if not self._fall_back():
                raise self._error("ffmpeg stopped while taking frames") from e
            return
        if self.held is not None and (self._opened() or self.held_bytes > HOLD_BYTES):
            self.held = None  # it encodes: a failure from here on is the job's

    def _put(self, frame: np.ndarray) -> None:
        assert self.proc.stdin is not None
        if self.packed:
            if self._packer is None:
                self._packer = I420Packer(frame.shape[1], frame.shape[0])
            self.proc.stdin.write(self._packer(frame))  # written whole before it returns
        else:
            self.proc.stdin.write(frame.data)
        self.frames += 1

    def _opened(self) -> bool:
        try:
            return Path(self.args[-1]).stat().st_size > 0
        except OSError:
            return False

    def _fall_back(self) -> bool:
        """ffmpeg ended while frames were still kept: start the fallback and replay them."""
        if self.held is None or self.fallback is None:
            return False
        why = self._tail()[-300:] or f"exit status {self.proc.returncode}"
        held, fallback = self.held, self.fallback
        self.held, self.fallback = None, None
        self._log.close()
        Path(self.args[-1]).unlink(missing_ok=True)
        self.on_fallback(" ".join(why.split()))
        self._start(fallback)
        self.frames = 0
        try:
            for frame in held:
                self._put(frame)
        except BrokenPipeError as e:
            self.proc.wait()
            raise self._error("ffmpeg stopped while taking frames") from e
        return True

    def close(self, timeout: float = 600) -> None:
        """Finish the file; MediaError with ffmpeg's words if it failed."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            self.kill()
            raise self._error(f"ffmpeg did not finish within {timeout:.0f} s") from e
        if rc != 0 and self._fall_back():  # a short job: all its frames were still kept
            self.close(timeout)
            return
        self._log.close()
        if rc != 0:
            raise self._error(f"ffmpeg exited with status {rc}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-STDERR_TAIL:].strip()
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def _error(self, what: str) -> MediaError:
        tail = self._tail()
        if "No space left on device" in tail:
            return MediaError(
                f"{what}: the disk is full: {tail[-300:]}",
                code="disk_full",
                stage="encoding",
                hint="free space on the outbox's file system, then `dropbox-daemon retry` the job",
            )
        return MediaError(
            f"{what}: {tail or '(no output)'}",
            code="encode_failed",
            stage="encoding",
            hint="check free disk space; the full ffmpeg log is in the job's claim folder",
        )
