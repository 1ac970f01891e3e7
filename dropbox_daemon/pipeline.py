"""One job, inside the worker: inputs -> template frames -> engine -> encode -> check -> publish.

The pipeline reports through `emit` (stage changes, progress, inputs, log
lines) and returns the output record; errors are DaemonError values that the
daemon turns into the job's final state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dropbox_daemon.config import Config
from dropbox_daemon.drops import DROP_SUBDIR
from dropbox_daemon.engines.base import Engine, RenderContext
from dropbox_daemon.errors import JobCancelled, MediaError
from dropbox_daemon.media.encode import Encoder, encode_args, ffmpeg_binary
from dropbox_daemon.media.frames import TemplateFrames, frame_count, output_size
from dropbox_daemon.media.probe import probe_audio, probe_result, probe_visual, sha256_file
from dropbox_daemon.outbox import POSTER, atomic_write, publish

Emit = Callable[[dict[str, Any]], None]
PROGRESS_EVERY = 0.5  # seconds between progress messages
AI_TAGS = {
    "comment": "AI-generated video (lip-synced by dropbox-daemon)",
    "description": "AI-generated",
}


def options_for(job: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The job's output options: the manifest's [output], then the inbox's, then defaults."""
    inbox = cfg.inbox_by_name(job["inbox"])
    opts = inbox.output.model_dump()
    given = {
        k: v for k, v in ((job.get("manifest") or {}).get("output") or {}).items() if v is not None
    }
    opts.update(given)
    return opts


def run(
    job: dict[str, Any], cfg: Config, engine: Engine, emit: Emit, cancel: threading.Event
) -> dict[str, Any]:
    """Render one job; returns {"output": ..., "timings": ...}; raises DaemonError."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    claim_dir = Path(job["claim_dir"])
    drop = claim_dir / DROP_SUBDIR
    manifest = job["manifest"]
    opts = options_for(job, cfg)
    limits = cfg.limits

    # -- preparing: inputs checked by content ---------------------------------
    audio_path = drop / manifest["audio"]
    template_path = drop / manifest["template"]
    audio = probe_audio(audio_path, limits)
    visual = probe_visual(template_path, limits)
    inputs = [
        {
            "field": "audio",
            "name": manifest["audio"],
            "bytes": audio_path.stat().st_size,
            "sha256": sha256_file(audio_path),
            **audio.to_dict(),
        },
        {
            "field": "template",
            "name": manifest["template"],
            "bytes": template_path.stat().st_size,
            "sha256": sha256_file(template_path),
            **visual.to_dict(),
        },
    ]
    emit({"type": "inputs", "inputs": inputs})
    emit(
        {
            "type": "log",
            "message": (
                f"inputs: audio {audio.duration:.3f} s {audio.codec} {audio.sample_rate} Hz; "
                f"template {visual.kind} {visual.width}x{visual.height} {visual.codec}"
                + (f" {visual.fps:g} fps" if visual.fps else "")
            ),
        }
    )
    fps = float(opts["fps"] or visual.fps or cfg.media.default_fps)
    fps = min(fps, limits.max_fps)
    size = output_size(visual.width, visual.height, opts["height"])
    if size[0] * size[1] > limits.max_pixels:
        raise MediaError(
            f"output of {size[0]}x{size[1]} pixels is over the limit of {limits.max_pixels}",
            code="too_many_pixels",
            stage="preparing",
            hint="set a smaller output.height",
        )
    n_frames = frame_count(audio.duration, fps)
    timings["prepare"] = time.monotonic() - t0

    # -- rendering: frames stream through the engine into the encoder ---------
    emit({"type": "stage", "stage": "rendering"})
    t1 = time.monotonic()
    out_dir = Path(job["outbox_dir"])
    final = out_dir / opts["name"]
    for stale in out_dir.glob(".*.partial"):  # left by a worker that was killed
        stale.unlink(missing_ok=True)
    partial = out_dir / f".{opts['name']}.{os.getpid()}.partial"
    metadata = dict(AI_TAGS) if opts["ai_label"] else {}
    args = encode_args(
        ffmpeg_binary(cfg.media.ffmpeg),
        partial,
        size=size,
        fps=fps,
        audio_path=audio_path,
        duration=audio.duration,
        crf=opts["crf"],
        preset=opts["preset"],
        audio_bitrate=cfg.media.audio_bitrate,
        metadata=metadata,
        threads=cfg.media.encode_threads,
    )
    ctx = RenderContext(
        job_id=job["job_id"],
        audio_path=audio_path,
        audio_duration=audio.duration,
        fps=fps,
        n_frames=n_frames,
        size=size,
        work_dir=claim_dir,
        options=opts,
        log=lambda m: emit({"type": "log", "message": m}),
    )
    source = TemplateFrames(
        template_path,
        visual,
        size,
        fps,
        n_frames,
        claim_dir / "loop-cache.raw",
        limits.max_loop_cache_bytes,
    )
    encoder = Encoder(args, claim_dir / "ffmpeg.log")
    poster: np.ndarray | None = None
    poster_at = n_frames // 2
    done = 0
    last = time.monotonic()
    try:
        for frame in engine.render(iter(source), ctx):
            if cancel.is_set():
                raise JobCancelled("cancelled by an operator while rendering", stage="rendering")
            encoder.write(frame)
            if done == poster_at:
                poster = frame.copy()
            done += 1
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                emit(
                    {
                        "type": "progress",
                        "progress": done / n_frames * 0.95,
                        "frames": done,
                        "fps": done / max(now - t1, 1e-6),
                    }
                )
        timings["render"] = time.monotonic() - t1
        emit({"type": "stage", "stage": "encoding"})
        t2 = time.monotonic()
        encoder.close()
    except BaseException:
        encoder.kill()
        partial.unlink(missing_ok=True)
        raise
    if done != n_frames:
        partial.unlink(missing_ok=True)
        raise MediaError(
            f"the engine produced {done} frames, {n_frames} were needed",
            code="frame_count",
            stage="rendering",
            hint="this is a bug in the engine; report it",
        )

    # -- check the result before anyone can see it ------------------------------
    info = probe_result(partial)
    problems = []
    if info.video_codec != "h264" or info.audio_codec != "aac":
        problems.append(f"codecs {info.video_codec}/{info.audio_codec}, expected h264/aac")
    if info.pix_fmt not in ("yuv420p", None):
        problems.append(f"pixel format {info.pix_fmt}, expected yuv420p")
    if abs(info.duration - audio.duration) > 1.0 / fps + 0.03:
        problems.append(f"duration {info.duration:.3f} s, audio is {audio.duration:.3f} s")
    if abs(info.frames - n_frames) > 1:
        problems.append(f"{info.frames} frames, expected {n_frames}")
    if problems:
        partial.unlink(missing_ok=True)
        raise MediaError(
            "the rendered video failed its check: " + "; ".join(problems),
            code="output_check",
            stage="encoding",
            hint="retry the job; if it repeats, report it",
        )
    if poster is not None:
        ok, jpg = cv2.imencode(".jpg", poster, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            atomic_write(out_dir / POSTER, jpg.tobytes())
    publish(partial, final)
    timings["encode"] = time.monotonic() - t2
    timings["total"] = time.monotonic() - t0
    output = {
        "name": final.name,
        "bytes": os.path.getsize(final),
        "sha256": sha256_file(final),
        "duration": round(info.duration, 4),
        "width": info.width,
        "height": info.height,
        "fps": fps,
        "frames": info.frames,
    }
    return {"output": output, "timings": {k: round(v, 4) for k, v in timings.items()}}
