"""Daemon overhead per job: a passthrough of a 1 s clip, end to end minus ffmpeg's own time.

ffmpeg's time is one ffmpeg command doing the same media work on its own
(decode the template, encode H.264 + AAC with the same settings, mux); the
daemon's time runs from the rename of the manifest to `done` in task.json.
The two are measured alternately (this 2-core VM is noisy) and the overhead is
the median of the paired differences.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import DaemonProc, make_tone, make_video, put_file, wait_for, write_section

from dropbox_daemon.render.media.encode import ffmpeg_binary

RUNS = 20


def ffmpeg_alone(audio: Path, template: Path, out: Path) -> float:
    args = [
        ffmpeg_binary(None),
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(template),
        "-i",
        str(audio),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "20",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "192k",
        "-movflags",
        "+faststart",
        "-t",
        "1",
        str(out),
    ]
    t = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t


def iso(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio = make_tone(root / "a.wav", 1.0)
        template = make_video(root / "t.mp4", 1.0, size="640x360")
        alone = []
        d = DaemonProc(root / "d", inbox={"engine": "passthrough"})
        d.start()
        e2e, stages, dispatch = [], {"prepare": [], "render": [], "encode": []}, []
        try:
            for n in range(RUNS):
                alone.append(ffmpeg_alone(audio, template, root / "o.mp4"))
                job = f"o{n:02d}"
                put_file(d.inbox / f"{job}.wav", audio)
                put_file(d.inbox / f"{job}.mp4", template)
                tmpm = d.inbox / f".{job}.json.tmp"
                tmpm.write_text(
                    json.dumps({"job_id": job, "audio": f"{job}.wav", "template": f"{job}.mp4"})
                )
                t0 = time.time()
                os.rename(tmpm, d.inbox / f"{job}.json")
                task = wait_for(
                    lambda j=job: (t := d.task(j)) and t["state"] == "done" and t, 60, job, d
                )
                e2e.append(iso(task["finished_at"]) - t0)
                dispatch.append(iso(task["started_at"]) - iso(task["queued_at"]))
                for k in stages:
                    stages[k].append(task["timings"][k])
        finally:
            d.stop()
    med = statistics.median(e2e)
    overhead = statistics.median(a - b for a, b in zip(e2e, alone, strict=True))
    body = "\n".join(
        [
            "## Daemon overhead per job (passthrough, 1 s clip at 640x360)",
            "",
            f"`bench/overhead.py`: {RUNS} jobs one after another; medians.",
            "",
            "| measure | ms |",
            "|---|---|",
            f"| rename → `done`, end to end | {med * 1000:.0f} |",
            f"| one ffmpeg command doing the same decode + encode + mux | {statistics.median(alone) * 1000:.0f} |",
            f"| **overhead (median of paired differences)** | **{overhead * 1000:.0f}** |",
            f"| of which queued → preparing (dispatch) | {statistics.median(dispatch) * 1000:.1f} |",
            f"| of which prepare (probe by decoding, sha256) | {statistics.median(stages['prepare']) * 1000:.1f} |",
            f"| render (decode template, frames to ffmpeg) | {statistics.median(stages['render']) * 1000:.0f} |",
            f"| encode tail + check + publish | {statistics.median(stages['encode']) * 1000:.0f} |",
            "",
            "Aim: overhead under 100 ms.",
        ]
    )
    write_section("overhead", body)


if __name__ == "__main__":
    main()
