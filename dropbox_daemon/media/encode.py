"""The H.264 + AAC encoder: raw BGR frames on ffmpeg's stdin, the original audio muxed.

Command lines are built with ffmpeg-python and run without a shell; ffmpeg's
stderr goes to a log file whose tail becomes the error message on failure.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import ffmpeg
import numpy as np

from dropbox_daemon.errors import MediaError, RenderError

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


@functools.cache
def nvenc_problem(ffmpeg_bin: str) -> str | None:
    """None when a short test encode with h264_nvenc succeeds here, else why not (once per
    process: the worker decides at its first job and keeps the answer)."""
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


def video_encoder(ffmpeg_bin: str, wanted: str) -> tuple[str, str]:
    """The H.264 encoder to use and why: `auto` takes h264_nvenc where a test encode works,
    else libx264; a forced h264_nvenc that cannot work here is a RenderError naming why."""
    if wanted == "libx264":
        return "libx264", 'forced by [media] video_encoder = "libx264"'
    problem = nvenc_problem(ffmpeg_bin)
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
) -> list[str]:
    """The argument list of one encode (no shell ever sees it)."""
    video = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{size[0]}x{size[1]}", framerate=fps
    )
    audio = ffmpeg.input(str(audio_path))
    quality: dict[str, object] = (
        # constant quality on NVENC: -rc vbr -cq N -b:v 0 is its counterpart of -crf N
        {"rc": "vbr", "cq": crf, "video_bitrate": 0, "preset": NVENC_PRESETS.get(preset, "p4")}
        if vcodec == "h264_nvenc"
        else {"crf": crf, "preset": preset}
    )
    opts: dict[str, object] = {
        "vcodec": vcodec,
        "pix_fmt": "yuv420p",
        **quality,
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


class Encoder:
    """One running ffmpeg encode; write() frames in order, then close()."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()/kill()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(frame.data)
        except BrokenPipeError as e:
            self.proc.wait()
            raise self._error("ffmpeg stopped while taking frames") from e
        self.frames += 1

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
        self._log.close()
        if rc != 0:
            raise self._error(f"ffmpeg exited with status {rc}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def _error(self, what: str) -> MediaError:
        try:
            tail = self.log_path.read_text(errors="replace")[-STDERR_TAIL:].strip()
        except OSError:
            tail = ""
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
