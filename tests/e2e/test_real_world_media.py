"""Acceptance: templates and audio as people really have them (tests/corpus/realworld.py).

Every case is dropped into one daemon running the preview engine (face track and
audio-driven mouth, no weights), as a job folder. A case that must render ends
`done` with: the result at the size a player shows the template, the presenter
upright in it (the face detector finds the face in the result, which it cannot in
a picture turned sideways), and the result as long as the audio within one frame.
A case that must be refused ends with its code, the field and a hint, the message
naming the cause.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest
from corpus.realworld import Case, cases, default_audio
from support import wait_for

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.render.faces import HaarDetector
from dropbox_daemon.render.media.probe import probe_audio

TERMINAL = ("done", "failed", "rejected")
# [limits] max_pixels for the corpus daemon: the 35-megapixel photo is scaled down to this
# (the same code path as to the default 8.3 MP, at a size the test encodes in a blink)
CORPUS_MAX_PIXELS = 1_000_000


def make_drop(inbox: Path, staging: Path, case: Case, fallback_audio: Path) -> None:
    folder = staging / (case.job_folder or case.name)
    folder.mkdir(parents=True)
    template = case.template(folder)
    audio = case.audio(folder) if case.audio else shutil.copy(fallback_audio, folder / "tone.wav")
    manifest = {"job_id": case.name, "audio": Path(audio).name, "template": template.name}
    (folder / "job.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    folder.rename(inbox / folder.name)


def result_frames(path: Path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def upright_share(frames: list) -> float:
    """Share of sampled frames (first, middle, last) in which the product's face detector finds
    an upright face (it enlarges the small corpus pictures 2x itself); a picture turned
    sideways scores 0."""
    det = HaarDetector(480)
    sample = [frames[0], frames[len(frames) // 2], frames[-1]]
    return sum(bool(det.detect(f)) for f in sample) / len(sample)


def check_done(case: Case, task: dict, outbox: Path, audio_seconds: float) -> None:
    result = outbox / case.name / "result.mp4"
    with av.open(str(result)) as c:
        v = c.streams.video[0]
        size, fps = (v.codec_context.width, v.codec_context.height), float(v.average_rate)
        duration = float(c.duration / av.time_base)
        audio_streams = len(c.streams.audio)
    if case.size is not None:
        assert size == case.size, (case.name, size)
    assert size[0] * size[1] <= CORPUS_MAX_PIXELS
    assert abs(duration - audio_seconds) <= 1 / fps + 1e-3, (case.name, duration, audio_seconds)
    assert audio_streams == 1, case.name
    frames = result_frames(result)
    assert abs(len(frames) - math.ceil(audio_seconds * fps - 1e-6)) <= 1, (case.name, len(frames))
    assert upright_share(frames) >= 0.5, f"{case.name}: the presenter is not upright in the result"
    log = (outbox / case.name / "log.txt").read_text(encoding="utf-8")
    assert "face in 100%" in log or "cache hit" in log, case.name
    for words in case.text:
        assert words in log, (case.name, words)


def check_refused(case: Case, task: dict) -> None:
    err = task["error"]
    assert task["state"] in ("rejected", "failed") and err["code"] == case.expect, (case.name, err)
    assert err["hint"], (case.name, err)
    if task["state"] == "rejected":
        assert err.get("field") in ("template", "audio"), (case.name, err)
    for words in case.text:
        assert words in err["message"] + " " + err["hint"], (case.name, words, err)


def ended(task: dict | None) -> dict | None:
    return task if task and task["state"] in TERMINAL else None


def check_case(case: Case, task: dict, outbox: Path) -> None:
    if case.expect == "done":
        assert task["state"] == "done", (case.name, task.get("error"))
        audio = next(i for i in task["inputs"] if i["field"] == "audio")
        check_done(case, task, outbox, audio["duration"])
    else:
        check_refused(case, task)


@pytest.mark.timeout(600)
def test_real_world_templates_and_audio(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    d = daemon_factory(inbox={"engine": "preview"}, limits={"max_pixels": CORPUS_MAX_PIXELS})
    d.start()
    staging = tmp_path / "staging"
    staging.mkdir()
    fallback = default_audio(tmp_path)
    table = cases()
    problems = []
    # two at a time: the builders mostly wait on ffmpeg; each drop lands as soon as it is
    # made, and each case is checked as soon as it ends, while the daemon works on the next
    with ThreadPoolExecutor(2) as pool:
        made = [pool.submit(make_drop, d.inbox, staging, case, fallback) for case in table]
        for case, drop in zip(table, made, strict=True):
            drop.result()
            task = wait_for(lambda c=case: ended(d.task(c.name)), 120, f"case {case.name}", d)
            try:
                check_case(case, task, d.outbox)
            except AssertionError as e:
                problems.append(str(e))
    assert not problems, "\n".join(problems)
    assert d.alive()


def test_the_result_of_a_transparent_template_shows_the_background(
    daemon_factory, tmp_path
) -> None:  # noqa: ANN001
    d = daemon_factory(
        inbox={"engine": "passthrough"}, sections={"media": {"background": "#00ff00"}}
    )
    d.start()
    case = next(c for c in cases() if c.name == "png-rgba")
    make_drop(d.inbox, tmp_path / "staging", case, default_audio(tmp_path))
    assert d.wait_state(case.name, timeout=60)["state"] == "done"
    frames = result_frames(d.outbox / case.name / "result.mp4")
    top = (
        frames[len(frames) // 2][2:16, 40:100].reshape(-1, 3).mean(axis=0)
    )  # transparent rows: the background
    assert top[1] > 200 and top[0] < 60 and top[2] < 60, top


def test_audio_given_as_a_video_uses_its_first_audio_stream(tmp_path) -> None:  # noqa: ANN001
    from corpus.realworld import audio_in_video

    clip = audio_in_video(tmp_path)
    info = probe_audio(clip, LimitsConfig())
    assert info.channels == 2 and info.sample_rate == 48000
