"""Acceptance: drops of every shape end `done` with a playable video as long as the audio."""

from __future__ import annotations

import av
import pytest
from support import put_file, put_manifest

from dropbox_daemon.render.media.encode import NVIDIA_DEVICE as NVIDIA

TASK_FIELDS = {
    "job_id",
    "trace_id",
    "inbox",
    "state",
    "stage",
    "progress",
    "attempts",
    "engine",
    "device",
    "config_hash",
    "created_at",
    "started_at",
    "finished_at",
    "timings",
    "inputs",
    "output",
    "error",
    "meta",
    "version",
}


def assert_good_result(daemon, job_id: str, audio_seconds: float, fps: float = 25.0) -> dict:  # noqa: ANN001
    task = daemon.wait_state(job_id, timeout=90)
    assert task["state"] == "done", task
    assert TASK_FIELDS <= set(task), TASK_FIELDS - set(task)
    folder = daemon.outbox / job_id
    result = folder / task["output"]["name"]
    with av.open(str(result)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert v.codec_context.pix_fmt == "yuv420p"
        duration = float(c.duration / av.time_base)
        decoded = sum(1 for _ in c.decode(video=0))
    assert abs(duration - audio_seconds) <= 1 / fps + 1e-3, (duration, audio_seconds)
    assert decoded == task["output"]["frames"]
    assert (folder / "poster.jpg").stat().st_size > 0
    assert (folder / "log.txt").read_text().count(task["trace_id"]) >= 6
    assert {i["field"] for i in task["inputs"]} == {"audio", "template"}
    assert all(len(i["sha256"]) == 64 for i in task["inputs"])
    assert not list(folder.glob(".*"))  # no temporary leftovers
    return task


def test_loose_json_manifest_by_rename(daemon, media) -> None:  # noqa: ANN001
    put_file(daemon.inbox / "a.wav", media.tone)
    put_file(daemon.inbox / "t.mp4", media.video)
    put_manifest(
        daemon.inbox / "j1.json",
        {
            "job_id": "j1",
            "audio": "a.wav",
            "template": "t.mp4",
            "engine": "passthrough",
            "meta": {"k": [1, 2]},
        },
    )
    task = assert_good_result(daemon, "j1", 2.0)
    assert task["meta"] == {"k": [1, 2]}
    assert task["engine"] == "passthrough" and task["attempts"] == 1
    # the drop's files left the inbox and are kept in the claim folder
    assert not (daemon.inbox / "a.wav").exists() and not (daemon.inbox / "j1.json").exists()
    kept = list((daemon.inbox / ".dropbox" / "claimed").glob("*/drop/a.wav"))
    assert len(kept) == 1
    # the job's log says which H.264 encoder ran and why
    log = (daemon.outbox / "j1" / "log.txt").read_text()
    # by what a real test encode says here, not by /dev/nvidiactl: A100/H100/H200 have a
    # device node and no NVENC
    from dropbox_daemon.render.media.encode import ffmpeg_binary, nvenc_problem

    problem = nvenc_problem(ffmpeg_binary(None))
    want = f"video encoder libx264: {problem}" if problem else "video encoder h264_nvenc"
    assert want in log, log


@pytest.mark.skipif(NVIDIA.exists(), reason="NVENC may work on this host")
def test_forced_nvenc_without_a_gpu_fails_the_job_with_the_cause(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(sections={"media": {"video_encoder": "h264_nvenc"}}).start()
    put_file(d.inbox / "a.wav", media.tone)
    put_file(d.inbox / "t.mp4", media.video)
    put_manifest(d.inbox / "nv.json", {"job_id": "nv", "audio": "a.wav", "template": "t.mp4"})
    task = d.wait_state("nv", timeout=60)
    assert task["state"] == "failed" and task["error"]["code"] == "encoder_unavailable", task
    assert "/dev/nvidiactl is absent" in task["error"]["message"]
    assert 'video_encoder = "auto"' in task["error"]["hint"]
    assert (d.outbox / "nv" / "input" / "a.wav").exists() and d.alive()  # nothing lost


def test_toml_manifest_with_image_template_and_output_options(daemon, media) -> None:  # noqa: ANN001
    put_file(daemon.inbox / "v.mp3", media.tone_44k)
    put_file(daemon.inbox / "face.png", media.image)
    put_manifest(
        daemon.inbox / "j2.toml",
        {
            "job_id": "j2",
            "audio": "v.mp3",
            "template": "face.png",
            "output": {"height": 120, "fps": 30, "name": "clip.mp4"},
        },
    )
    task = assert_good_result(daemon, "j2", task_audio := 1.5, fps=30)
    assert (task["output"]["width"], task["output"]["height"]) == (160, 120)
    assert task["output"]["name"] == "clip.mp4" and task["output"]["fps"] == 30
    assert task_audio == 1.5


def test_job_folder_json_and_toml(daemon, media) -> None:  # noqa: ANN001
    for name, suffix in (("folder-json", "json"), ("folder-toml", "toml")):
        tmp = daemon.inbox / f".{name}.partial"
        tmp.mkdir()
        put_file(tmp / "speech.wav", media.tone)
        put_file(tmp / "clip.mp4", media.video)
        put_manifest(tmp / f"job.{suffix}", {"audio": "speech.wav", "template": "clip.mp4"})
        tmp.rename(daemon.inbox / name)
    for name in ("folder-json", "folder-toml"):
        ids = [t["job_id"] for t in daemon.tasks() if t["job_id"].startswith(name)]
        if not ids:
            from support import wait_for

            ids = wait_for(
                lambda n=name: [t["job_id"] for t in daemon.tasks() if t["job_id"].startswith(n)],
                30,
                name,
                daemon,
            )
        assert_good_result(daemon, ids[0], 2.0)
        assert not (daemon.inbox / name).exists()


def test_template_shorter_than_audio_loops_back_and_forth(daemon, media) -> None:  # noqa: ANN001
    import numpy as np

    put_file(daemon.inbox / "a.wav", media.tone)  # 2 s = 50 frames over a 25-frame template
    put_file(daemon.inbox / "t.mp4", media.video)
    put_manifest(
        daemon.inbox / "loop.json", {"job_id": "loop", "audio": "a.wav", "template": "t.mp4"}
    )
    task = assert_good_result(daemon, "loop", 2.0)
    with av.open(str(daemon.outbox / "loop" / task["output"]["name"])) as c:
        frames = [f.to_ndarray(format="gray").astype(np.int16) for f in c.decode(video=0)]
    # frame 24 is the template's last; 23 and 25 both show template frame 23 (no jump cut)
    assert np.abs(frames[23] - frames[25]).mean() < 2.0
    assert np.abs(frames[22] - frames[26]).mean() < 2.0
    assert np.abs(frames[0] - frames[48]).mean() < 2.0


@pytest.mark.parametrize("replace", [False, True])
def test_same_job_id_twice(daemon, media, replace: bool) -> None:  # noqa: ANN001
    for n in (1, 2):
        put_file(daemon.inbox / f"a{n}.wav", media.tone)
        put_file(daemon.inbox / f"t{n}.png", media.image)
        m = {"job_id": "same", "audio": f"a{n}.wav", "template": f"t{n}.png"}
        if n == 2 and replace:
            m["replace"] = True
        put_manifest(daemon.inbox / f"same{n}.json", m)
        first = daemon.wait_state("same", "done", timeout=60)
        if n == 1:
            first_trace = first["trace_id"]
    if replace:
        from support import wait_for

        task = wait_for(
            lambda: (
                (t := daemon.task("same"))
                and t["trace_id"] != first_trace
                and t["state"] == "done"
                and t
            ),
            60,
            "the replaced run",
            daemon,
        )
        assert task["inputs"][0]["name"] == "a2.wav"
        assert not (daemon.outbox / "same.dup-1").exists()
    else:
        dup = daemon.wait_state("same.dup-1", "duplicate", timeout=30)
        assert dup["duplicate_of"] == "same"
        assert (daemon.outbox / "same.dup-1" / "input" / "same2.json").exists()
        assert (daemon.outbox / "same.dup-1" / "input" / "a2.wav").exists()
        assert daemon.task("same")["trace_id"] == first_trace
        assert daemon.task("same")["inputs"][0]["name"] == "a1.wav"
