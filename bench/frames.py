"""The decode side of a first job at 720p: what the colour conversion of a frame costs by the
template's colour (SDR tagged, HLG, PQ tone-mapped), and what face detection costs on every
frame against one frame in three (with the track's distance between the two)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from common import write_section
from render import presenter_clip
from support import ffmpeg

from dropbox_daemon.render.faces import HaarDetector, TrackSettings, TrackStream
from dropbox_daemon.render.media.frames import to_bgr

SIZE = (1280, 720)
REPEATS = 3


def clip(root: Path, name: str, transfer: str) -> Path:
    """2 s of the presenter at 720p: SDR BT.709 as made, or converted to BT.2020 HLG/PQ
    (10-bit HEVC, as phones write them) by the bundled ffmpeg's zscale."""
    sdr = presenter_clip(root / "sdr.mp4", *SIZE, seconds=2)
    if transfer == "sdr":
        return sdr
    out = root / f"{name}.mp4"
    vf = (
        "zscale=tin=bt709:min=bt709:pin=bt709:rin=tv:t=linear:p=bt709:npl=203,format=gbrpf32le,"
        f"zscale=p=bt2020:t={transfer}:m=bt2020nc:r=tv:npl=203,format=yuv420p10le"
    )
    tags = ["-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc"]
    ffmpeg("-i", str(sdr), "-vf", vf, "-c:v", "libx265", "-x265-params", "log-level=error",
           *tags, str(out))  # fmt: skip
    return out


def ms_per_frame(path: Path) -> float:
    """Milliseconds to turn one decoded frame into the pipeline's BGR (decoding excluded)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    t = time.perf_counter()
    for f in frames:
        to_bgr(f, SIZE)
    return (time.perf_counter() - t) / len(frames) * 1000


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def tracks(path: Path) -> dict[int, tuple[float, int, list]]:
    """Detection seconds, detector calls and the track, on every frame and on one in three."""
    with av.open(str(path)) as c:
        frames = [to_bgr(f, SIZE) for f in c.decode(video=0)]
    out = {}
    for every in (1, 3):
        stream = TrackStream(HaarDetector(), TrackSettings(every=every))
        t = time.perf_counter()
        for f in frames:
            stream.push(f)
        stream.finish()
        out[every] = (time.perf_counter() - t, stream.detections, stream.track)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = {name: clip(root, name, t) for name, t in
                 [("sdr", "sdr"), ("hlg", "arib-std-b67"), ("pq", "smpte2084")]}  # fmt: skip
        cost = {name: [] for name in clips}
        for _ in range(REPEATS):
            for name, path in clips.items():
                cost[name].append(ms_per_frame(path))
        long = presenter_clip(root / "long.mp4", *SIZE, seconds=10)
        runs = [tracks(long) for _ in range(REPEATS)]
    med = {k: statistics.median(v) for k, v in cost.items()}
    one = statistics.median(r[1][0] for r in runs)
    three = statistics.median(r[3][0] for r in runs)
    n = len(runs[0][1][2])
    worst = min(iou(a, b) for a, b in zip(runs[0][1][2], runs[0][3][2], strict=True) if a and b)
    lines = [
        "## The decode side of a first job at 720p (bench/frames.py)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| colour conversion of a decoded frame to BGR, SDR BT.709 (swscale, by its tags) | {med['sdr']:.1f} ms |",
        f"| the same, HLG tone-mapped to SDR BT.709 (numpy) | {med['hlg']:.1f} ms |",
        f"| the same, PQ tone-mapped to SDR BT.709 (numpy) | {med['pq']:.1f} ms |",
        f"| face detection on every frame of {n} (Haar at 480 px, around the last face) | {one:.2f} s, {runs[0][1][1]} calls |",
        f"| face detection on one frame in three (`[faces] detect_every = 3`) | {three:.2f} s, {runs[0][3][1]} calls, {one / three:.1f}× less |",
        f"| the two tracks' distance: the worst frame's IoU | {worst:.3f} (tolerance 0.85) |",
        "",
        f"Each figure: the median of {REPEATS} runs. HLG and PQ clips are the SDR presenter "
        "converted by the bundled ffmpeg's zscale (SDR white at 203 cd/m2), 10-bit HEVC; the "
        "tone-mapped frame is once per template where the template cache keeps its frames.",
    ]
    write_section("frames", "\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
