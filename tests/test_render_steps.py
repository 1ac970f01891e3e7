"""Unit tests of the render path's steps (dropbox_daemon/render/), each on real files:
prepare the inputs, plan the output, the face track, the stage chain, publish. The
end-to-end tests drive the same steps through a daemon."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import av
import pytest

from dropbox_daemon import config
from dropbox_daemon.claims import DROP_SUBDIR
from dropbox_daemon.errors import ConfigError, JobCancelled, MediaError, RenderError
from dropbox_daemon.protocol import JobSpec, resolve_output
from dropbox_daemon.render import chain, inputs, plan, publish, track
from dropbox_daemon.render.engines.base import AudioFeatures
from dropbox_daemon.render.engines.passthrough import PassthroughEngine
from dropbox_daemon.render.engines.preview import PreviewEngine
from dropbox_daemon.render.media.audio import load_mono16k
from dropbox_daemon.render.pipeline import template_source


def make_cfg(tmp_path: Path, **sections: dict) -> config.Config:
    data = {
        "daemon": {"state_dir": str(tmp_path / "state"), "outbox": str(tmp_path / "outbox")},
        "inbox": [{"name": "default", "path": str(tmp_path / "inbox")}],
        **sections,
    }
    return config.from_dict(data, source=tmp_path / "config.toml", env={})


def make_job(
    tmp_path: Path, audio: Path, template: Path, cfg: config.Config | None = None, **output: object
) -> JobSpec:
    """A claimed job as the worker receives it: its files in the claim's drop folder, its
    output options resolved as the daemon resolves them (cfg's first inbox's defaults)."""
    drop = tmp_path / "claim" / DROP_SUBDIR
    drop.mkdir(parents=True)
    shutil.copy(audio, drop / audio.name)
    shutil.copy(template, drop / template.name)
    out = tmp_path / "outbox" / "j1"
    out.mkdir(parents=True)
    manifest = {"audio": audio.name, "template": template.name, "output": output}
    defaults = (cfg.inbox[0].output if cfg else config.OutputDefaults()).model_dump()
    return JobSpec(
        job_id="j1",
        inbox="default",
        manifest=manifest,
        claim_dir=str(tmp_path / "claim"),
        outbox_dir=str(out),
        output=resolve_output(defaults, manifest),
    )


class Said:
    """An emit that keeps what the steps said."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def __call__(self, msg: dict) -> None:
        self.messages.append(msg)

    def logs(self) -> str:
        return "\n".join(m["message"] for m in self.messages if m["type"] == "log")


def test_prepare_inputs_probes_hashes_and_logs_both_files(tmp_path, media) -> None:  # noqa: ANN001
    job = make_job(tmp_path, media.tone, media.face_video)
    said = Said()
    found = inputs.prepare_inputs(job, make_cfg(tmp_path), said)
    assert found.audio.duration == pytest.approx(2.0, abs=0.01)
    assert (found.visual.kind, found.visual.width, found.visual.height) == ("video", 256, 256)
    record = next(m for m in said.messages if m["type"] == "inputs")["inputs"]
    assert [r["field"] for r in record] == ["audio", "template"]
    assert record[1]["sha256"] == found.template_sha and len(found.template_sha) == 64
    assert "inputs: audio 2.000 s" in said.logs() and "template video 256x256 h264" in said.logs()


def test_shown_as_names_what_differs_from_the_stored_picture(tmp_path, media) -> None:  # noqa: ANN001
    job = make_job(tmp_path, media.tone, media.face_video)
    v = inputs.prepare_inputs(job, make_cfg(tmp_path), Said()).visual
    assert inputs.shown_as(v) == ""
    from dataclasses import replace

    turned = replace(v, rotation=90, interlaced=True)
    assert (
        inputs.shown_as(turned)
        == " (stored 256x256 yuv420p; turned 90 degrees clockwise; deinterlaced)"
    )


def test_options_come_from_the_manifest_then_the_inbox_then_defaults(tmp_path, media) -> None:  # noqa: ANN001
    cfg = make_cfg(
        tmp_path,
        inbox=[
            {"name": "default", "path": str(tmp_path / "inbox"), "output": {"crf": 30, "fps": 20}}
        ],
    )
    job = make_job(tmp_path, media.tone, media.image, cfg, fps=12, height=None)
    opts = plan.options_for(job)
    assert (opts["fps"], opts["crf"], opts["name"]) == (12, 30, "result.mp4")
    gone = job.model_copy(update={"output": None})  # its inbox left the config meanwhile
    with pytest.raises(ConfigError, match="no longer in this daemon's config"):
        plan.options_for(gone)


def test_the_plan_scales_a_large_template_down_and_refuses_a_size_over_the_limit(
    tmp_path, media
) -> None:  # noqa: ANN001
    cfg = make_cfg(tmp_path, limits={"max_pixels": 300_000})
    job = make_job(tmp_path, media.tone, media.big_image)
    said = Said()
    found = inputs.prepare_inputs(job, cfg, said)
    p = plan.plan_output(job, found, cfg, said)
    assert p.size[0] * p.size[1] <= 300_000 and p.size[0] / p.size[1] == pytest.approx(
        16 / 9, rel=0.02
    )
    assert p.n_frames == 50 and p.fps == 25.0  # 2 s at the default rate of a still
    assert "scaled down to fit [limits] max_pixels (300000)" in said.logs()
    assert p.partial.parent == p.final.parent and p.partial.name.startswith(".")
    job = job.model_copy(update={"output": job.output.model_copy(update={"height": 720})})
    with pytest.raises(MediaError) as e:
        plan.plan_output(job, found, cfg, said)
    assert e.value.code == "too_many_pixels" and "output.height" in e.value.hint


def test_overlays_follow_the_ai_label_option(tmp_path, media) -> None:  # noqa: ANN001
    cfg = make_cfg(tmp_path)
    drop = tmp_path
    assert len(plan.overlays_for({"ai_label": True}, drop, (320, 240), cfg)) == 1
    assert plan.overlays_for({"ai_label": False}, drop, (320, 240), cfg) == []


def planned(tmp_path: Path, media, template: Path, **sections: dict):  # noqa: ANN001, ANN201
    cfg = make_cfg(tmp_path, **sections)
    job = make_job(tmp_path, media.tone, template)
    said = Said()
    found = inputs.prepare_inputs(job, cfg, said)
    p = plan.plan_output(job, found, cfg, said)
    return cfg, job, found, p, template_source(found, p, job, cfg, said), said


def test_the_face_track_is_detected_as_frames_flow_then_read_from_the_cache(
    tmp_path, media
) -> None:  # noqa: ANN001
    cfg, _job, found, p, source, said = planned(tmp_path, media, media.face_video)
    first = track.FaceBoxes(source, found.template_sha, p.n_frames, cfg, said, p.out_dir)
    assert first.streaming
    flowed = list(first.over(iter(source)))
    assert [f.index for f in flowed] == list(range(50)) and all(f.box for f in flowed)
    assert "cache miss" in said.logs() and "face in 100%" in said.logs()
    again = track.FaceBoxes(source, found.template_sha, p.n_frames, cfg, said, p.out_dir)
    assert not again.streaming and "cache hit" in said.logs().splitlines()[-1]
    assert [f.box for f in again.over(iter(source))] == [f.box for f in flowed]


def test_no_face_in_a_picture_is_found_before_anything_starts(tmp_path, media) -> None:  # noqa: ANN001
    cfg, _job, found, p, source, said = planned(tmp_path, media, media.image)
    with pytest.raises(RenderError) as e:
        track.FaceBoxes(source, found.template_sha, p.n_frames, cfg, said, p.out_dir)
    assert e.value.code == "no_face" and "a face was found in 0% of its 1 frames" in e.value.message
    assert (p.out_dir / "poster.jpg").stat().st_size > 0


def test_no_face_in_a_video_is_found_once_it_has_been_seen_through(tmp_path, media) -> None:  # noqa: ANN001
    cfg, _job, found, p, source, said = planned(tmp_path, media, media.video)  # 1 s, no face
    boxes = track.FaceBoxes(source, found.template_sha, p.n_frames, cfg, said, p.out_dir)
    with pytest.raises(RenderError) as e:
        list(boxes.over(iter(source)))
    assert e.value.code == "no_face" and "of its 25 frames (needed 20%)" in e.value.message
    assert (p.out_dir / "poster.jpg").stat().st_size > 0


def run_chain(  # noqa: ANN201
    tmp_path: Path,
    media,  # noqa: ANN001
    engine,  # noqa: ANN001
    cancel: threading.Event | None = None,
    keep_source: list | None = None,
    on_disk: bool = True,
):
    """Plan a job on the face video and run its chain; `keep_source` gets the frames' source,
    `on_disk=False` keeps every frame in memory (none read back from the cache file)."""
    cfg, job, found, p, source, said = planned(tmp_path, media, media.face_video)
    if keep_source is not None:
        keep_source.append(source)
    if not on_disk:
        source.disk.adopt = lambda *_a, **_k: None  # type: ignore[method-assign]
    cancel = cancel or threading.Event()
    tr = (
        track.FaceBoxes(source, found.template_sha, p.n_frames, cfg, said, p.out_dir)
        if engine.needs_faces
        else None
    )
    features = AudioFeatures(load_mono16k(found.audio_path), p.fps, p.n_frames)
    ctx = plan.render_context(job, found, p.opts, said, cancel, p)
    sc = chain.StageChain(source, tr, engine, features, ctx, p.overlays)
    args = plan.encoder_args(p, found, cfg, said)
    return sc.run(args, tmp_path / "ffmpeg.log", said, cancel), p, said


def test_the_stage_chain_writes_every_frame_and_says_where_the_time_went(tmp_path, media) -> None:  # noqa: ANN001
    rendered, p, said = run_chain(tmp_path, media, PreviewEngine())
    assert rendered.frames == p.n_frames == 50
    assert rendered.poster is not None and rendered.poster.shape == (256, 256, 3)
    assert set(rendered.busy) >= {"busy_decode", "busy_engine", "busy_compose", "busy_encode"}
    with av.open(str(p.partial)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 50
    assert {"type": "stage", "stage": "encoding"} in said.messages


class Short(PassthroughEngine):
    """An engine with a bug: one frame short."""

    def render(self, frames, audio, ctx):  # noqa: ANN001, ANN201
        frames = iter(frames)
        next(frames)
        yield from super().render(frames, audio, ctx)


def test_an_engine_short_of_frames_fails_the_chain_with_frame_count(tmp_path, media) -> None:  # noqa: ANN001
    with pytest.raises(MediaError) as e:
        run_chain(tmp_path, media, Short())
    assert e.value.code == "frame_count" and "49 frames, 50 were needed" in e.value.message


def test_a_cancel_stops_the_chain(tmp_path, media) -> None:  # noqa: ANN001
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCancelled):
        run_chain(tmp_path, media, PassthroughEngine(), cancel)


def test_a_result_off_its_audio_is_refused_and_removed(tmp_path, media) -> None:  # noqa: ANN001
    clip = tmp_path / "clip.mp4"
    shutil.copy(media.video, clip)  # 1 s of video with no audio stream
    with pytest.raises(MediaError) as e:
        publish.check_result(clip, 2.0, 25.0, 50)
    assert e.value.code == "output_check" and not clip.exists()


def test_publish_renames_the_checked_file_and_a_taken_over_job_is_not_published(
    tmp_path, media
) -> None:  # noqa: ANN001
    rendered, p, _said = run_chain(tmp_path, media, PassthroughEngine())
    info = publish.check_result(p.partial, 2.0, p.fps, p.n_frames)
    job = JobSpec(
        job_id="j1", inbox="default", claim_dir=str(tmp_path / "claim"), outbox_dir=str(p.out_dir)
    )
    out = publish.publish_result(job, p, info, rendered.poster)
    assert p.final.exists() and not p.partial.exists() and out["frames"] == 50
    assert (p.out_dir / "poster.jpg").exists() and out["bytes"] == p.final.stat().st_size
    other = p.out_dir / ".other.partial"
    other.write_bytes(b"x")
    with pytest.raises(RenderError) as e:
        publish.still_ours(job.model_copy(update={"claim_dir": str(tmp_path / "gone")}), other)
    assert e.value.code == "taken_over" and not other.exists()
