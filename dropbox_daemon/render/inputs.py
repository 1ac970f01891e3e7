"""Step 1: the job's inputs, checked by content (the worker, not the daemon, opens them: a
crash in a decoder on hostile media takes down only the worker)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dropbox_daemon import access
from dropbox_daemon.boundary import READ_FLAGS
from dropbox_daemon.claims import DROP_SUBDIR
from dropbox_daemon.config import Config, LimitsConfig
from dropbox_daemon.errors import EngineError, RejectedDrop
from dropbox_daemon.protocol import JobSpec
from dropbox_daemon.render.engines.base import Engine, RenderContext
from dropbox_daemon.render.media.probe import (
    AudioInfo,
    VisualInfo,
    probe_audio,
    probe_visual,
    sha256_file,
)

Emit = Callable[[dict[str, Any]], None]  # stage changes, progress, inputs and log lines


@dataclass(frozen=True)
class Inputs:
    """The audio and the template of one job, as probed."""

    drop: Path  # the claim's drop folder, where the manifest's files are
    audio_path: Path
    template_path: Path
    audio: AudioInfo
    visual: VisualInfo
    template_sha: str

    def log_line(self) -> str:
        a, v = self.audio, self.visual
        return (
            f"inputs: audio {a.duration:.3f} s {a.codec} {a.sample_rate} Hz; "
            f"template {v.kind} {v.width}x{v.height} {v.codec}"
            + (f" {v.fps:g} fps" if v.fps else "")
            + shown_as(v)
        )


def prepare_inputs(job: JobSpec, cfg: Config, emit: Emit) -> Inputs:
    """Probe and hash the job's audio and template; emit their record and a log line.
    Raises RejectedDrop (field, code, hint) for a file that is not what it must be."""
    drop = Path(job.claim_dir or "") / DROP_SUBDIR
    manifest = job.manifest
    audio_path, template_path = drop / manifest["audio"], drop / manifest["template"]
    must_read("audio", audio_path)
    must_read("template", template_path)
    found = Inputs(
        drop=drop,
        audio_path=audio_path,
        template_path=template_path,
        audio=probe_audio(audio_path, cfg.limits),
        visual=probe_visual(template_path, cfg.limits),
        template_sha=sha256_file(template_path),
    )
    emit({"type": "inputs", "inputs": input_records(found, manifest)})
    emit({"type": "log", "message": found.log_line()})
    return found


def must_read(field: str, path: Path) -> None:
    """RejectedDrop where the daemon's user may not read a file of the drop (its writer made it
    for itself alone): said as such, not as media that does not decode."""
    try:
        os.close(os.open(path, READ_FLAGS))
    except OSError as e:
        if access.denied(e):
            raise RejectedDrop(
                f"{field}: {path.name!r} cannot be read by the daemon ({access.who(path)})",
                code="permission_denied",
                field=field,
                stage="preparing",
                hint="let the daemon's user read it: " + access.WRITER_FIX,
            ) from e
        # anything else is the probe's to say


def input_records(found: Inputs, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """task.json's `inputs`: name, size, hash and what probing found, per field."""
    return [
        {
            "field": "audio",
            "name": manifest["audio"],
            "bytes": found.audio_path.stat().st_size,
            "sha256": sha256_file(found.audio_path),
            **found.audio.to_dict(),
        },
        {
            "field": "template",
            "name": manifest["template"],
            "bytes": found.template_path.stat().st_size,
            "sha256": found.template_sha,
            **found.visual.to_dict(),
        },
    ]


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


def engine_source(
    found: Inputs, engine: Engine, ctx: RenderContext, limits: LimitsConfig
) -> Inputs:
    """The inputs with the template replaced by the video a remote engine rendered, if it
    renders the whole video elsewhere (the http engine); unchanged otherwise."""
    remote = engine.source_video(ctx, found.audio_path, found.template_path)
    if remote is None:
        return found
    visual = check_engine_video(remote, found.audio.duration, limits)
    return replace(found, template_path=remote, visual=visual)


def check_engine_video(path: Path, audio_duration: float, limits: LimitsConfig) -> VisualInfo:
    """Probe a video an engine made elsewhere; EngineError unless it is a video as long as the audio."""
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
