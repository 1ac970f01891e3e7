"""One job, inside the worker: inputs -> face track -> frames -> engine -> blend -> encode -> check.

Stages overlap in a bounded producer/consumer chain (stages.py): template
decoding, the engine, compositing and the encoder each run in their own
thread, so memory stays flat and the encoder is never starved by a stage
that could have run ahead. The pipeline reports through `emit` (stage changes,
progress, inputs, log lines) and returns the output record; errors are
DaemonError values that the daemon turns into the job's final state.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dropbox_daemon import compose, faces
from dropbox_daemon.config import Config
from dropbox_daemon.drops import DROP_SUBDIR
from dropbox_daemon.engines.base import AudioFeatures, Engine, FaceFrame, Patch, RenderContext
from dropbox_daemon.errors import JobCancelled, MediaError, RenderError
from dropbox_daemon.media.audio import load_mono16k
from dropbox_daemon.media.encode import Encoder, encode_args, ffmpeg_binary, video_encoder
from dropbox_daemon.media.frames import TemplateFrames, View, frame_count, output_size
from dropbox_daemon.media.probe import (
    VisualInfo,
    probe_audio,
    probe_result,
    probe_visual,
    sha256_file,
)
from dropbox_daemon.outbox import POSTER, atomic_write, publish
from dropbox_daemon.stages import Meter, Threaded

Emit = Callable[[dict[str, Any]], None]
PROGRESS_EVERY = 0.5  # seconds between progress messages
QUEUE_FRAMES = 6  # frames buffered between two stages


def options_for(job: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The job's output options: the manifest's [output], then the inbox's, then defaults."""
    inbox = cfg.inbox_by_name(job["inbox"])
    opts = inbox.output.model_dump()
    manifest_out = (job.get("manifest") or {}).get("output") or {}
    opts.update({k: v for k, v in manifest_out.items() if v is not None})
    return opts


def _jpeg(path: Path, frame: np.ndarray) -> None:
    ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if ok:
        atomic_write(path, jpg.tobytes())


def face_track(
    source: TemplateFrames, sha: str, needed: int, cfg: Config, emit: Emit, out_dir: Path
) -> list[faces.Box | None]:
    """The template's face track, from the cache or by detection; RenderError no_face if too few faces."""
    fc = cfg.faces
    settings = faces.TrackSettings(
        detector=f"{fc.detector}@{fc.detect_width}",
        max_gap=fc.max_gap,
        smooth=fc.smooth,
        pad=(0.0, fc.pad_bottom, 0.0, 0.0),
    )
    cache = faces.TrackCache(cfg.daemon.state_dir / "faces")
    key = cache.key(f"{sha}:{source.view.key()}", source.size, source.fps, settings)
    needed = 1 if source.info.kind == "image" else needed
    cached = cache.get(key, needed)
    if cached is not None:
        track = cached
        emit(
            {
                "type": "log",
                "message": f"face track: cache hit {key[:12]} ({len(track)} frames), detection skipped",
            }
        )
    else:
        t = time.monotonic()
        track = faces.build_track(
            source.template_frames(needed), faces.HaarDetector(fc.detect_width), settings
        )
        cache.put(key, track, complete=len(track) < needed)  # shorter: the whole template was seen
        emit(
            {
                "type": "log",
                "message": (
                    f"face track: cache miss {key[:12]}, detected on {len(track)} frames in "
                    f"{time.monotonic() - t:.2f} s, face in {faces.face_share(track):.0%}"
                ),
            }
        )
    share = faces.face_share(track)
    if share < fc.min_share or not any(track):
        raise _no_face(source, track, share, cfg, out_dir)
    return track


def _no_face(
    source: TemplateFrames, track: list[faces.Box | None], share: float, cfg: Config, out_dir: Path
) -> RenderError:
    """no_face with the numbers: where faces are missing, and what a closer look at the worst
    frame finds (a face in a turned picture, a face too small); poster.jpg shows that frame."""
    ranges = faces.faceless_ranges(track)
    worst = max(ranges, key=lambda r: r[1] - r[0]) if ranges else (0, 0)
    frame = None
    for i, frame in enumerate(source.template_frames(worst[0] + 1)):  # noqa: B007
        if i == worst[0]:
            break
    finding = faces.Finding(None, "")
    if frame is not None:
        _jpeg(out_dir / POSTER, frame)
        finding = faces.look_closer(frame, cfg.faces.detect_width)
    shown = ", ".join(f"{a}-{b}" for a, b in ranges[:5]) + (" ..." if len(ranges) > 5 else "")
    return RenderError(
        f"no usable face in the template: a face was found in {share:.0%} of its "
        f"{len(track)} frames (needed {cfg.faces.min_share:.0%}); frames without a face: {shown}"
        + (f"; {finding.what}" if finding.what else ""),
        code="no_face",
        stage="preparing",
        hint=finding.hint
        or "use a template where one face looks at the camera, well lit and at least "
        "1/10 of the picture wide; poster.jpg shows the worst frame",
    )


def shown_as(v: VisualInfo) -> str:
    """How the stored template differs from what is shown, for the job's log ('' if not)."""
    notes = [f"stored {v.coded_width}x{v.coded_height} {v.pix_fmt}"]
    if v.rotation:
        notes.append(f"turned {v.rotation} degrees clockwise")
    if v.sar:
        notes.append(f"pixel aspect {v.sar}")
    if v.interlaced:
        notes.append("deinterlaced")
    if v.alpha:
        notes.append("transparency flattened")
    return f" ({'; '.join(notes)})" if len(notes) > 1 else ""


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
    out_dir = Path(job["outbox_dir"])

    # -- preparing: inputs checked by content ---------------------------------
    audio_path = drop / manifest["audio"]
    template_path = drop / manifest["template"]
    audio = probe_audio(audio_path, limits)
    visual: VisualInfo = probe_visual(template_path, limits)
    template_sha = sha256_file(template_path)
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
            "sha256": template_sha,
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
                + shown_as(visual)
            ),
        }
    )
    remote = engine.source_video(
        RenderContext(
            job_id=job["job_id"],
            audio_path=audio_path,
            audio_duration=audio.duration,
            fps=0.0,
            n_frames=0,
            size=(0, 0),
            work_dir=claim_dir,
            options=opts,
            trace_id=job.get("trace_id", "-"),
            log=lambda m: emit({"type": "log", "message": m}),
            cancel=cancel,
        ),
        audio_path,
        template_path,
    )
    if remote is not None:
        template_path, visual = remote, check_engine_video(remote, audio.duration, limits)
    fps = min(float(opts["fps"] or visual.fps or cfg.media.default_fps), limits.max_fps)
    size = output_size(visual.width, visual.height, opts["height"], limits.max_pixels)
    if not opts["height"] and size[0] * size[1] < visual.width * visual.height // 2:
        emit(
            {
                "type": "log",
                "message": f"output {size[0]}x{size[1]}: the template's {visual.width}x"
                f"{visual.height} scaled down to fit [limits] max_pixels ({limits.max_pixels})",
            }
        )
    if size[0] * size[1] > limits.max_pixels:
        raise MediaError(
            f"output of {size[0]}x{size[1]} pixels is over the limit of {limits.max_pixels}",
            code="too_many_pixels",
            stage="preparing",
            hint="set a smaller output.height",
        )
    n_frames = frame_count(audio.duration, fps)
    overlays: list[compose.Overlay] = []
    if opts.get("watermark"):
        probe_visual(drop / opts["watermark"], limits, field="output.watermark")
        ov = cfg.overlay
        overlays.append(
            compose.watermark_overlay(
                drop / opts["watermark"],
                size,
                width_share=ov.watermark_width,
                margin_share=ov.margin,
                opacity=ov.watermark_opacity,
            )
        )
    if opts["ai_label"]:
        overlays.append(
            compose.label_overlay(cfg.overlay.label_text, size, margin_share=cfg.overlay.margin)
        )
    source = TemplateFrames(
        template_path,
        visual,
        size,
        fps,
        n_frames,
        claim_dir / "loop-cache.raw",
        limits.max_loop_cache_bytes,
        View.of(visual, cfg.media.background),
    )
    features = AudioFeatures(
        load_mono16k(audio_path) if engine.needs_faces else np.zeros(0, np.float32), fps, n_frames
    )
    timings["prepare"] = time.monotonic() - t0
    track = None
    if engine.needs_faces:
        t = time.monotonic()
        track = face_track(source, template_sha, n_frames, cfg, emit, out_dir)
        timings["faces"] = time.monotonic() - t

    # -- rendering: a chain of threads from the decoder to the encoder --------
    emit({"type": "stage", "stage": "rendering"})
    t1 = time.monotonic()
    for stale in out_dir.glob(".*.partial"):  # left by a worker that was killed
        stale.unlink(missing_ok=True)
    final = out_dir / opts["name"]
    partial = out_dir / f".{opts['name']}.{os.getpid()}.partial"
    metadata = (
        {"comment": cfg.overlay.metadata_tag, "ai_generated": "true"} if opts["ai_label"] else {}
    )
    ffmpeg_bin = ffmpeg_binary(cfg.media.ffmpeg)
    vcodec, why = video_encoder(ffmpeg_bin, cfg.media.video_encoder)
    emit({"type": "log", "message": f"video encoder {vcodec}: {why}"})
    args = encode_args(
        ffmpeg_bin,
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
        vcodec=vcodec,
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
        trace_id=job.get("trace_id", "-"),
        cancel=cancel,
    )
    meter = Meter()

    def decoded() -> Iterator[FaceFrame]:
        for i, (src, frame) in enumerate(meter.timed("decode", iter(source))):
            box = track[min(src, len(track) - 1)] if track else None
            yield FaceFrame(i, frame, box)

    stage1 = Threaded(decoded(), "decode", QUEUE_FRAMES)
    in_flight: deque[FaceFrame] = deque()  # frames the engine took and has not answered yet

    def feed() -> Iterator[FaceFrame]:
        for ff in meter.waiting("engine", iter(stage1)):
            in_flight.append(ff)
            yield ff

    def generated() -> Iterator[tuple[FaceFrame, Patch | None]]:
        for patch in meter.timed("engine", engine.render(feed(), features, ctx)):
            yield in_flight.popleft(), patch

    stage2 = Threaded(generated(), "engine", QUEUE_FRAMES)

    def composed() -> Iterator[np.ndarray]:
        for ff, patch in stage2:
            t = time.perf_counter()
            frame = compose.blend(ff.frame, patch) if patch is not None else ff.frame
            if overlays:
                if not frame.flags.writeable:
                    frame = frame.copy()
                for ov in overlays:
                    ov.apply(frame)
            meter.add("compose", time.perf_counter() - t)
            yield frame

    stage3 = Threaded(composed(), "compose", QUEUE_FRAMES)
    encoder = Encoder(args, claim_dir / "ffmpeg.log")
    poster: np.ndarray | None = None
    done, last = 0, time.monotonic()
    try:
        for frame in stage3:
            if cancel.is_set():
                raise JobCancelled("cancelled by an operator while rendering", stage="rendering")
            t = time.perf_counter()
            encoder.write(frame)
            meter.add("encode", time.perf_counter() - t)
            if done == n_frames // 2:
                poster = frame.copy()
            done += 1
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                emit(
                    {
                        "type": "progress",
                        "progress": done / n_frames * 0.97,
                        "frames": done,
                        "fps": done / max(now - t1, 1e-6),
                    }
                )
        timings["render"] = time.monotonic() - t1
        emit({"type": "stage", "stage": "encoding"})
        t2 = time.monotonic()
        encoder.close()
        meter.add("encode", time.monotonic() - t2)
    except BaseException:
        for st in (stage3, stage2, stage1):
            st.close()
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
    info = check_result(partial, audio.duration, fps, n_frames)
    _still_ours(job, partial)
    if poster is not None:
        _jpeg(out_dir / POSTER, poster)
    publish(partial, final)
    timings["encode"] = time.monotonic() - t2
    timings["total"] = time.monotonic() - t0
    busy = {f"busy_{k}": round(v, 4) for k, v in meter.busy.items()}
    output = {
        "name": final.name,
        "bytes": os.path.getsize(final),
        "sha256": sha256_file(final),
        "duration": round(info.duration, 4),
        "width": info.width,
        "height": info.height,
        "fps": fps,
        "frames": info.frames,
        "ai_label": bool(opts["ai_label"]),
    }
    return {"output": output, "timings": {**{k: round(v, 4) for k, v in timings.items()}, **busy}}


def _still_ours(job: dict[str, Any], partial: Path) -> None:
    """The fence where a result is published: a claim folder renamed by a peer's takeover
    means this render was given up on; its result must not replace the peer's."""
    claim = job.get("claim_dir")
    if claim and not os.path.isdir(claim):
        partial.unlink(missing_ok=True)
        raise RenderError(
            f"job {job['job_id']} was taken over by another instance while this one was silent; "
            "its result is not published",
            code="taken_over",
            stage="encoding",
            hint="nothing to do: the instance that took it over renders it",
        )


def check_engine_video(path: Path, audio_duration: float, limits) -> VisualInfo:  # noqa: ANN001
    """Probe a video an engine made elsewhere; EngineError unless it is a video as long as the audio."""
    from dropbox_daemon.errors import EngineError, RejectedDrop

    try:
        info = probe_visual(path, limits, field="engine output")
    except RejectedDrop as e:
        raise EngineError(
            f"the engine's video is not usable: {e.message}",
            code="engine_output",
            stage="rendering",
            hint="look at the service's log for this task",
        ) from e
    tolerance = 0.5 + 2 / (info.fps or 25)
    if (
        info.kind != "video"
        or info.duration is None
        or abs(info.duration - audio_duration) > tolerance
    ):
        raise EngineError(
            f"the engine's video lasts {info.duration} s, the audio {audio_duration:.2f} s",
            code="engine_output",
            stage="rendering",
            hint="the service must render the whole audio; look at its log for this task",
        )
    return info


def check_result(path: Path, audio_duration: float, fps: float, n_frames: int):  # noqa: ANN201
    """Probe the rendered file before anyone can see it; MediaError (file removed) if it is off."""
    info = probe_result(path)
    problems = []
    if info.video_codec != "h264" or info.audio_codec != "aac":
        problems.append(f"codecs {info.video_codec}/{info.audio_codec}, expected h264/aac")
    if info.pix_fmt not in ("yuv420p", None):
        problems.append(f"pixel format {info.pix_fmt}, expected yuv420p")
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
