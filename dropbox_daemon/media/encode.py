"""The H.264 + AAC encoder: raw BGR frames on ffmpeg's stdin, the original audio muxed.

Command lines are built with ffmpeg-python and run without a shell; ffmpeg's
stderr goes to a log file whose tail becomes the error message on failure.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import ffmpeg
import numpy as np

from dropbox_daemon.errors import MediaError

STDERR_TAIL = 1500  # characters of ffmpeg's log quoted in an error


def ffmpeg_binary(configured: str | None) -> str:
    """The ffmpeg to run: the configured one, else the binary shipped with imageio-ffmpeg."""
    if configured:
        return configured
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


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
) -> list[str]:
    """The argument list of one encode (no shell ever sees it)."""
    video = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{size[0]}x{size[1]}", framerate=fps
    )
    audio = ffmpeg.input(str(audio_path))
    opts: dict[str, object] = {
        "vcodec": "libx264",
        "pix_fmt": "yuv420p",
        "crf": crf,
        "preset": preset,
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
    args = ffmpeg.output(video.video, audio.audio, str(out_path), **opts).compile(
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
