"""A 10-minute portrait phone clip (variable frame rate, display rotation, 48 kHz stereo AAC)
dropped as the template and (a copy) as the audio, rendered by a daemon with the preview engine.

Measured: the result's duration against the audio, the video's frame count and last
timestamp, both streams' start, and the lips at the end: the audio is silent but for a
half-second syllable burst every 10 s, the last at 599.0 s; the mouth's motion in the result
(the result against the template's own frame at the same index) is lined up with the sound's
loudness in the first and the last minute: the lag must not change over the job (drift).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from common import DaemonProc, wait_for, write_section
from corpus.realworld import h264, run_ffmpeg

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.render.media.audio import SAMPLE_RATE, load_mono16k
from dropbox_daemon.render.media.frames import TemplateFrames
from dropbox_daemon.render.media.probe import probe_visual

MINUTES = 10
BURST = 0.5  # seconds of sound every 10 s
LAST_BURST = MINUTES * 60 - 1.0
WINDOW = 60  # seconds compared at the start and at the end (six bursts each)


def phone_clip(folder: Path) -> Path:
    """10 s of the upright presenter looped to 10 minutes, stored sideways with a display
    rotation, frame times jittered around 30 fps, bursts of syllables on a stereo AAC track."""
    loop = h264(folder / "loop.mp4", "-pix_fmt", "yuv420p", rate="30", seconds=10)
    # a burst in [9, 9 + BURST) s of every 10 s: the last starts at LAST_BURST
    voice = f"0.6*sin(2*PI*170*t)*abs(sin(2*PI*6*t))*gte(mod(t,10),9)*lt(mod(t,10),{9 + BURST})"
    stored = folder / "stored.mp4"
    run_ffmpeg(
        "-stream_loop", str(MINUTES * 6 - 1), "-i", str(loop),
        "-f", "lavfi", "-i", f"aevalsrc='{voice}|{voice}':s=48000:d={MINUTES * 60}",
        "-map", "0:v", "-map", "1:a",
        "-vf", "transpose=cclock,setpts='(N/30+0.006*sin(N*1.7))/TB'", "-fps_mode", "passthrough",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-ar", "48000", "-ac", "2", "-t", str(MINUTES * 60), str(stored),
    )  # fmt: skip
    phone = folder / "PXL_10min.mp4"
    run_ffmpeg("-display_rotation", "-90", "-i", str(stored), "-c", "copy", str(phone))
    return phone


def streams(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        pts = [f.time for f in c.decode(v)]
        out = {
            "duration": float(c.duration / av.time_base),
            "fps": float(v.average_rate),
            "frames": len(pts),
            "last_pts": pts[-1],
            "video_start": float(v.start_time * v.time_base),
            "audio_start": float(a.start_time * a.time_base),
        }
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        out["audio_seconds"] = sum(f.samples for f in c.decode(a)) / a.rate
    return out


def mouth_motion(result: Path, template: Path, fps: float, first: int) -> list[float]:
    """Per output frame from `first` on: how far the result's picture is from the template's
    own frame at that index (the mouth is all the preview engine changes; the label's rows
    at the bottom are left out)."""
    info = probe_visual(template, LimitsConfig())
    size = (info.width, info.height)
    n = 10**9
    src = TemplateFrames(template, info, size, fps, n, template.with_suffix(".raw"), 1 << 34)
    rows = int(size[1] * 0.8)
    motion = []
    with av.open(str(result)) as c:
        pairs = zip(src.template_frames(n), c.decode(video=0), strict=False)
        for i, (want, got) in enumerate(pairs):
            if i >= first:
                arr = got.to_ndarray(format="bgr24")[:rows].astype(np.int16)
                motion.append(float(np.abs(arr - want[:rows]).mean()))
    return motion


def envelope(audio: Path, fps: float, n: int) -> np.ndarray:
    """The sound's loudness (RMS) per output frame, as the pipeline reads the audio."""
    y = load_mono16k(audio)
    per = SAMPLE_RATE / fps
    return np.array(
        [
            float(np.sqrt(np.mean(y[int(i * per) : int((i + 1) * per)] ** 2) + 1e-12))
            for i in range(n)
        ]
    )


def best_lag(motion: np.ndarray, loudness: np.ndarray, reach: int = 8) -> int:
    """The shift in frames (motion later: positive) that lines the mouth's motion up best with
    the loudness: the peak of their normalised cross-correlation."""
    m = (motion - motion.mean()) / (motion.std() + 1e-9)
    a = (loudness - loudness.mean()) / (loudness.std() + 1e-9)

    def corr(k: int) -> float:
        return float(np.mean(m[k:] * a[: len(a) - k])) if k >= 0 else corr_neg(-k)

    def corr_neg(k: int) -> float:
        return float(np.mean(m[: len(m) - k] * a[k:]))

    return max(range(-reach, reach + 1), key=corr)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    t = time.monotonic()
    clip = phone_clip(root)
    made = time.monotonic() - t
    d = DaemonProc(root / "d", inbox={"engine": "preview"}, daemon={"hang_seconds": 600.0})
    d.start()
    try:
        job = root / "stage" / "phone-10min"
        job.mkdir(parents=True)
        # the same clip twice: a drop's audio and template must be two files
        (job / clip.name).write_bytes(clip.read_bytes())
        (job / "voice.mp4").write_bytes(clip.read_bytes())
        (job / "job.json").write_text(
            json.dumps({"job_id": "phone-10min", "audio": "voice.mp4", "template": clip.name})
        )
        t = time.monotonic()
        job.rename(d.inbox / job.name)
        task = wait_for(
            lambda: (
                (x := d.task("phone-10min")) and x["state"] in ("done", "failed", "rejected") and x
            ),
            3600,
            "the 10-minute job",
            d,
        )
        wall = time.monotonic() - t
    finally:
        d.stop()
    assert task["state"] == "done", task.get("error")
    result = d.outbox / "phone-10min" / "result.mp4"
    s = streams(result)
    audio = next(i for i in task["inputs"] if i["field"] == "audio")["duration"]
    fps = s["fps"]
    motion = np.array(mouth_motion(result, clip, fps, 0))
    loudness = envelope(clip, fps, len(motion))  # voice.mp4 is a copy of the clip
    window = int(WINDOW * fps)
    lag_start = best_lag(motion[:window], loudness[:window])
    lag_end = best_lag(motion[-window:], loudness[-window:])
    body = f"""## Sync over a 10-minute phone clip (bench/sync.py)

A {MINUTES}-minute portrait phone clip: pixels stored sideways with a display rotation,
frame times jittered around 30 fps (variable frame rate), 48 kHz stereo AAC, dropped as
template and (a copy) as audio; preview engine, {task["output"]["width"]}x{task["output"]["height"]}.

| | |
|---|---|
| audio (decoded) | {audio:.3f} s |
| result duration | {s["duration"]:.3f} s ({(s["duration"] - audio) * fps:+.2f} frames) |
| result audio track | {s["audio_seconds"]:.3f} s, starts at {s["audio_start"]:.3f} s |
| video | {s["frames"]} frames at {fps:.3f} fps, first at {s["video_start"]:.3f} s, last at {s["last_pts"]:.3f} s (expected {(s["frames"] - 1) / fps:.3f} s) |
| frames expected from the audio | {math.ceil(audio * fps - 1e-6)} |
| lips against the sound, first {WINDOW} s | mouth motion lags the loudness by {lag_start:+d} frames |
| lips against the sound, last {WINDOW} s | {lag_end:+d} frames: drift over the job {lag_end - lag_start:+d} frames |
| job wall time | {wall:.0f} s (making the clip: {made:.0f} s) |
"""
    write_section("sync", body)
    ok = abs(s["duration"] - audio) * fps <= 1 and abs(lag_end - lag_start) <= 1
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
