"""Step 5: the rendered file is checked before anyone can see it, published only while the
job is still this instance's, and described for task.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from dropbox_daemon.errors import MediaError, RenderError
from dropbox_daemon.outbox import POSTER, atomic_write, publish
from dropbox_daemon.protocol import JobSpec
from dropbox_daemon.render.media.probe import ResultInfo, probe_result, sha256_file

if TYPE_CHECKING:
    from dropbox_daemon.render.plan import Plan


def write_poster(out_dir: Path, frame: np.ndarray) -> None:
    """outbox/<job>/poster.jpg: one frame of the result, or the frame a no_face is about."""
    ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if ok:
        atomic_write(out_dir / POSTER, jpg.tobytes())


def check_result(
    path: Path, audio_duration: float, fps: float, n_frames: int, pix_fmt: str = "yuv420p"
) -> ResultInfo:
    """Probe the rendered file before anyone can see it; MediaError (file removed) if it is off."""
    info = probe_result(path)
    problems = []
    if info.video_codec != "h264" or info.audio_codec != "aac":
        problems.append(f"codecs {info.video_codec}/{info.audio_codec}, expected h264/aac")
    if info.pix_fmt not in (pix_fmt, None):
        problems.append(f"pixel format {info.pix_fmt}, expected {pix_fmt}")
    if abs(info.duration - audio_duration) > 1.0 / fps + 0.03:
        problems.append(f"duration {info.duration:.3f} s, audio is {audio_duration:.3f} s")
    if abs(info.frames - n_frames) > 1:
        problems.append(f"{info.frames} frames, expected {n_frames}")
    if problems:
        path.unlink(missing_ok=True)
        raise MediaError(
            "the rendered video failed its check: " + "; ".join(problems),
            code="output_check",
            stage="encoding",
            hint="retry the job; if it repeats, report it",
        )
    return info


def still_ours(job: JobSpec, partial: Path) -> None:
    """The fence where a result is published: a claim folder renamed by a peer's takeover
    means this render was given up on; its result must not replace the peer's."""
    claim = job.claim_dir
    if claim and not os.path.isdir(claim):
        partial.unlink(missing_ok=True)
        raise RenderError(
            f"job {job.job_id} was taken over by another instance while this one was silent; "
            "its result is not published",
            code="taken_over",
            stage="encoding",
            hint="nothing to do: the instance that took it over renders it",
        )


def publish_result(
    job: JobSpec, plan: Plan, info: ResultInfo, poster: np.ndarray | None
) -> dict[str, Any]:
    """Write the poster and rename the checked file to its name in the outbox, if the job is
    still ours; task.json's `output` record."""
    final = plan.final
    still_ours(job, plan.partial)
    if poster is not None:
        write_poster(plan.out_dir, poster)
    publish(plan.partial, final)
    return {
        "name": final.name,
        "bytes": os.path.getsize(final),
        "sha256": sha256_file(final),
        "duration": round(info.duration, 4),
        "width": info.width,
        "height": info.height,
        "fps": plan.fps,
        "frames": info.frames,
        "ai_label": bool(plan.opts["ai_label"]),
    }
