"""One job, inside the worker, as the steps in dropbox_daemon/render/ take it:

  prepare the inputs (render/inputs.py) -> plan the output (render/plan.py) ->
  the face track (render/track.py: from the cache, or detected as frames flow through) ->
  the render chain (render/chain.py) -> check and publish (render/publish.py)

The pipeline reports through `emit` (stage changes, progress, inputs, log lines) and
returns the output record and timings; errors are DaemonError values that the daemon
turns into the job's final state.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dropbox_daemon.config import Config
from dropbox_daemon.protocol import JobSpec
from dropbox_daemon.render.chain import StageChain
from dropbox_daemon.render.engines.base import AudioFeatures, Engine
from dropbox_daemon.render.inputs import Emit, Inputs, engine_source, prepare_inputs
from dropbox_daemon.render.media.audio import load_mono16k
from dropbox_daemon.render.media.frame_store import FrameStore
from dropbox_daemon.render.media.frames import TemplateFrames, View
from dropbox_daemon.render.plan import (
    Plan,
    encoder_args,
    options_for,
    plan_output,
    render_context,
)
from dropbox_daemon.render.publish import check_result, publish_result
from dropbox_daemon.render.track import FaceBoxes

__all__ = ["options_for", "run"]


def run(
    job: JobSpec, cfg: Config, engine: Engine, emit: Emit, cancel: threading.Event
) -> dict[str, Any]:
    """Render one job; returns {"output": ..., "timings": ...}; raises DaemonError."""
    t0 = time.monotonic()
    found = prepare_inputs(job, cfg, emit)
    opts = options_for(job)
    found = engine_source(found, engine, render_context(job, found, opts, emit, cancel), cfg.limits)
    plan = plan_output(job, found, cfg, emit)
    source = template_source(found, plan, job, cfg, emit)
    features = AudioFeatures(
        load_mono16k(found.audio_path) if engine.needs_faces else np.zeros(0, np.float32),
        plan.fps,
        plan.n_frames,
    )
    timings = {"prepare": time.monotonic() - t0}
    boxes = None
    if engine.needs_faces:  # a cached track, else detected as the frames flow
        boxes = FaceBoxes(source, found.template_sha, plan.n_frames, cfg, emit, plan.out_dir)

    emit({"type": "stage", "stage": "rendering"})
    for stale in plan.out_dir.glob(".*.partial"):  # left by a worker that was killed
        stale.unlink(missing_ok=True)
    args = encoder_args(plan, found, cfg, emit, engine.model_on_cpu)
    chain = StageChain(
        source, boxes, engine, features, render_context(job, found, plan.opts, emit, cancel, plan),
        plan.overlays,
    )  # fmt: skip
    try:
        rendered = chain.run(args, Path(job.claim_dir or "") / "ffmpeg.log", emit, cancel)
        info = check_result(
            plan.partial, found.audio.duration, plan.fps, plan.n_frames, args.colour.pix_fmt
        )
        output = publish_result(job, plan, info, rendered.poster)
    except BaseException:
        plan.partial.unlink(missing_ok=True)
        raise
    if boxes is not None:
        timings["faces"] = boxes.seconds
    timings["render"] = rendered.render_seconds
    timings["encode"] = time.monotonic() - rendered.close_started
    timings["total"] = time.monotonic() - t0
    return {
        "output": output,
        "timings": {**{k: round(v, 4) for k, v in timings.items()}, **rendered.busy},
    }


def template_source(
    found: Inputs, plan: Plan, job: JobSpec, cfg: Config, emit: Emit
) -> TemplateFrames:
    """The template's frames at the output size and rate, shown as a player shows them
    (rotation, pixel aspect, deinterlaced, transparency over [media] background); a video's
    decoded frames are kept in the template cache for the next job on the same template."""
    view = View.of(found.visual, cfg.media.background, plan.opts.get("hdr", "tonemap"))
    return TemplateFrames(
        found.template_path,
        found.visual,
        plan.size,
        plan.fps,
        plan.n_frames,
        Path(job.claim_dir or "") / "loop-cache.raw",
        cfg.limits.max_loop_cache_bytes,
        view,
        store=FrameStore(cfg.daemon.state_dir / "templates", cfg.media.template_cache_bytes),
        store_key=FrameStore.key(found.template_sha, repr(view), plan.size, plan.fps),
        note=lambda message: emit({"type": "log", "message": message}),
    )
