"""Step 2: plan the output: the options that apply, the rate, size and frame count, the
overlays, where the file is written and how it is encoded."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbox_daemon import cpus
from dropbox_daemon.config import Config
from dropbox_daemon.errors import ConfigError, MediaError
from dropbox_daemon.protocol import JobSpec
from dropbox_daemon.render import compose
from dropbox_daemon.render.engines.base import RenderContext
from dropbox_daemon.render.inputs import Emit, Inputs
from dropbox_daemon.render.media.colour import OutputColour
from dropbox_daemon.render.media.encode import (
    EncodeCommand,
    encode_args,
    ffmpeg_binary,
    video_encoder,
)
from dropbox_daemon.render.media.frame_math import frame_count, output_size
from dropbox_daemon.render.media.probe import probe_visual


@dataclass(frozen=True)
class Plan:
    """What the job's result will be, and where it is written until it is published."""

    opts: dict[str, Any]  # the job's output options (manifest, then inbox, then defaults)
    fps: float
    size: tuple[int, int]  # (width, height)
    n_frames: int
    overlays: list[compose.Overlay]
    out_dir: Path
    final: Path  # outbox/<job_id>/<name>
    partial: Path  # the hidden file ffmpeg writes; renamed to `final` when it checks out


def options_for(job: JobSpec) -> dict[str, Any]:
    """The job's output options as the daemon resolved them (manifest, inbox, defaults)."""
    if job.output is None:
        raise ConfigError(
            f"job {job.job_id}: its inbox {job.inbox!r} is no longer in this daemon's config, so "
            "its output options cannot be resolved",
            hint="put the inbox back in config.toml and `dropbox-daemon retry` the job",
        )
    return job.output.model_dump()


def plan_output(job: JobSpec, found: Inputs, cfg: Config, emit: Emit) -> Plan:
    """The output's rate, size (scaled down to [limits] max_pixels, said in the log) and frame
    count; MediaError too_many_pixels for a size asked for over the limit."""
    opts, limits, visual = options_for(job), cfg.limits, found.visual
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
    out_dir = Path(job.outbox_dir)
    return Plan(
        opts=opts,
        fps=fps,
        size=size,
        n_frames=frame_count(found.audio.duration, fps),
        overlays=overlays_for(opts, found.drop, size, cfg),
        out_dir=out_dir,
        final=out_dir / opts["name"],
        partial=out_dir / f".{opts['name']}.{os.getpid()}.partial",
    )


def overlays_for(
    opts: dict[str, Any], drop: Path, size: tuple[int, int], cfg: Config
) -> list[compose.Overlay]:
    """The watermark (checked like an input) and the AI label, in the order they are drawn."""
    overlays: list[compose.Overlay] = []
    ov = cfg.overlay
    if opts.get("watermark"):
        probe_visual(drop / opts["watermark"], cfg.limits, field="output.watermark")
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
        overlays.append(compose.label_overlay(ov.label_text, size, margin_share=ov.margin))
    return overlays


def encoder_args(
    plan: Plan, found: Inputs, cfg: Config, emit: Emit, beside_model: bool = False
) -> EncodeCommand:
    """ffmpeg's arguments for the result: the encoder chosen (and why, in the log), the
    job's audio muxed in, the AI-generated tag when the label is on; with `auto` choosing
    NVENC, libx264's too, for an NVENC that fails to open. `beside_model`: the engine's
    model runs on the CPU (libx264 gets fewer threads, cpus.encode_threads)."""
    ffmpeg_bin = ffmpeg_binary(cfg.media.ffmpeg)
    colour = output_colour(found, plan.opts, emit)
    if colour.ten_bit and cfg.media.video_encoder != "libx264":
        vcodec, why = "libx264", "10-bit HDR, which NVENC's H.264 does not encode"
    else:
        vcodec, why = video_encoder(ffmpeg_bin, cfg.media.video_encoder, plan.size)
    threads = cpus.encode_threads(
        cfg.media.encode_threads, cpus.this_share(), cpus.usable_cpus(), beside_model
    )
    if threads and vcodec == "libx264":
        why += f"; {threads} thread{'s' if threads > 1 else ''}"
        if beside_model and not cfg.media.encode_threads:
            why += " beside the model on the CPU ([media] encode_threads = 0)"
    emit({"type": "log", "message": f"video encoder {vcodec}: {why}"})
    tagged = plan.opts["ai_label"]

    def args(codec: str) -> list[str]:
        return encode_args(
            ffmpeg_bin,
            plan.partial,
            size=plan.size,
            fps=plan.fps,
            audio_path=found.audio_path,
            duration=found.audio.duration,
            crf=plan.opts["crf"],
            preset=plan.opts["preset"],
            audio_bitrate=cfg.media.audio_bitrate,
            metadata={"comment": cfg.overlay.metadata_tag, "ai_generated": "true"}
            if tagged
            else {},
            threads=threads,
            vcodec=codec,
            colour=colour,
            packed=colour.packed_here,
        )

    auto_nvenc = vcodec == "h264_nvenc" and cfg.media.video_encoder == "auto"
    fallback = args("libx264") if auto_nvenc else None
    return EncodeCommand(args(vcodec), fallback, colour)


def output_colour(found: Inputs, opts: dict[str, Any], emit: Emit) -> OutputColour:
    """The result's colour (BT.709 SDR, or a kept HDR template's), said in the log with how
    the template's colour is read."""
    visual = found.visual
    colour = OutputColour.for_template(visual.transfer, opts.get("hdr", "tonemap"))
    how = "kept" if colour.ten_bit else "converted"
    if visual.transfer != "sdr" and not colour.ten_bit:
        how = 'tone-mapped ([output] hdr = "keep" keeps it HDR)'
    said = visual.colour or "unknown"
    emit({"type": "log", "message": f"colour: template {said}, {how}; result {colour.describe()}"})
    return colour


def render_context(
    job: JobSpec,
    found: Inputs,
    opts: dict[str, Any],
    emit: Emit,
    cancel: threading.Event,
    plan: Plan | None = None,
) -> RenderContext:
    """What the engine is told about the job (rate, size and frame count once planned)."""
    return RenderContext(
        job_id=job.job_id,
        audio_path=found.audio_path,
        audio_duration=found.audio.duration,
        fps=plan.fps if plan else 0.0,
        n_frames=plan.n_frames if plan else 0,
        size=plan.size if plan else (0, 0),
        work_dir=Path(job.claim_dir or ""),
        options=opts,
        log=lambda m: emit({"type": "log", "message": m}),
        trace_id=job.trace_id,
        cancel=cancel,
        alive=lambda: emit({"type": "alive"}),
    )
