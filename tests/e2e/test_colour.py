"""Acceptance: colour. Templates of colour bars whose code values the test computes itself
from known sRGB-like 8-bit colours, with the published formulas (BT.601 / BT.709 / BT.2020
matrices, limited and full range, BT.2100 PQ and HLG at BT.2408's 203 cd/m2 reference white),
are rendered through a daemon (passthrough engine: the template's pictures as they are) and
the result is read back plane by plane: its tags must say BT.709 limited range, and each
bar must come back as the colour it was made from.

Tolerance: 4 code values (of 255) per channel for SDR templates (x264 at the default crf on
flat bars, one rounding each way), 7 for HLG and PQ (10-bit code values; the tone-map's
roll-off starts at 90 % of SDR white, which these bars stay under). A channel that should be
0 in an HDR bar may read up to BLACK_SLACK: BT.2020 -> BT.709 cancels two large values there,
and gamma 2.4's steep start turns the 10-bit code's rounding (0.05 % of white in light) into
a code value of 10-20 (ffmpeg's zscale gives the same: red 191,0,0 as 190,7,8); in light that
is under 0.3 % of white.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from corpus.realworld import default_audio
from support import ffmpeg

BARS = [  # (R, G, B) 8-bit display code values, each under the roll-off knee
    (191, 191, 191),
    (191, 191, 0),
    (0, 191, 191),
    (0, 191, 0),
    (191, 0, 191),
    (191, 0, 0),
    (0, 0, 191),
    (230, 180, 150),
    (120, 80, 60),
    (24, 24, 24),
]
BAR_W, H = 32, 48
SDR_TOLERANCE, HDR_TOLERANCE, BLACK_SLACK = 4, 7, 24
KR_KB = {"bt470bg": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020nc": (0.2627, 0.0593)}
BT709_TO_BT2020 = np.array(
    [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]
)


def ycbcr(rgb: np.ndarray, matrix: str, full: bool, bits: int) -> np.ndarray:
    """R'G'B' 0..1 -> integer Y'CbCr code values."""
    kr, kb = KR_KB[matrix]
    y = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    cb, cr = (rgb[..., 2] - y) / (2 * (1 - kb)), (rgb[..., 0] - y) / (2 * (1 - kr))
    scale = 1 << (bits - 8)
    if full:
        out = np.stack([y * 255, cb * 255 + 128, cr * 255 + 128], -1) * scale
    else:
        out = np.stack([16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr], -1) * scale
    return np.round(out).astype(np.uint16)


def pq_signal(nits: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084's inverse EOTF."""
    m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
    y = np.power(nits / 10000, m1)
    return np.power((c1 + c2 * y) / (1 + c3 * y), m2)


def hlg_signal(display: np.ndarray) -> np.ndarray:
    """BT.2100 HLG: display light (cd/m2, BT.2020 RGB) -> inverse OOTF (1000 cd/m2, gamma
    1.2) -> OETF."""
    yd = display @ np.array([0.2627, 0.6780, 0.0593])
    scene = display / 1000 * np.power(np.maximum(yd / 1000, 1e-9), (1 - 1.2) / 1.2)[..., None]
    a = 0.17883277
    b, c = 1 - 4 * a, 0.5 - a * np.log(4 * a)
    return np.where(
        scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + c
    )


def signal(transfer: str) -> np.ndarray:
    """The bars' R'G'B' 0..1 as the template's transfer codes them."""
    rgb = np.array(BARS, np.float64) / 255
    if transfer == "sdr":
        return rgb
    display = (np.power(rgb, 2.4) * 203) @ BT709_TO_BT2020.T  # BT.2408: SDR white at 203
    return pq_signal(display) if transfer == "pq" else hlg_signal(display)


CASES = {  # name: (matrix, full range, transfer, -color_trc, -color_primaries)
    "bt601": ("bt470bg", False, "sdr", "smpte170m", "smpte170m"),
    "bt709": ("bt709", False, "sdr", "bt709", "bt709"),
    "bt709-full": ("bt709", True, "sdr", "bt709", "bt709"),
    "hlg": ("bt2020nc", False, "hlg", "arib-std-b67", "bt2020"),
    "pq": ("bt2020nc", False, "pq", "smpte2084", "bt2020"),
    # no tags at all, 720 lines: players (and the daemon) take it as BT.709 limited range
    "untagged-hd": ("bt709", False, "sdr", "", ""),
}


def template(folder: Path, name: str) -> tuple[Path, np.ndarray]:
    """A 2 s clip of the bars coded as CASES[name] says (lossless: H.264 8-bit, HEVC 10-bit
    for HDR as phones write it), and the bars' Y'CbCr code values."""
    matrix, full, transfer, trc, primaries = CASES[name]
    bits = 10 if transfer != "sdr" else 8
    h = height(name)
    codes = ycbcr(signal(transfer), matrix, full, bits)  # (bars, 3)
    w = BAR_W * len(BARS)
    y = np.repeat(np.repeat(codes[None, :, 0], BAR_W, 1), h, 0)
    cb = np.repeat(np.repeat(codes[None, :, 1], BAR_W // 2, 1), h // 2, 0)
    cr = np.repeat(np.repeat(codes[None, :, 2], BAR_W // 2, 1), h // 2, 0)
    dtype = np.uint16 if bits == 10 else np.uint8
    raw = folder / f"{name}.yuv"
    raw.write_bytes(b"".join(p.astype(dtype).tobytes() for p in (y, cb, cr)) * 50)
    fmt = "yuv420p10le" if bits == 10 else "yuv420p"
    tags = ["-color_range", "pc" if full else "tv", "-colorspace", matrix]
    tags += ["-color_trc", trc, "-color_primaries", primaries]
    if not trc:
        tags = []
    out = folder / f"{name}.mp4"
    codec = ["-c:v", "libx265", "-x265-params", "lossless=1:log-level=error"] if bits == 10 else ["-c:v", "libx264", "-qp", "0"]  # fmt: skip
    ffmpeg("-f", "rawvideo", "-pix_fmt", fmt, "-s", f"{w}x{h}", "-r", "25", *tags, "-i", str(raw),
           *codec, "-pix_fmt", fmt, *tags, str(out))  # fmt: skip
    raw.unlink()
    return out, codes


def height(name: str) -> int:
    return 720 if name == "untagged-hd" else H


def drop(inbox: Path, folder: Path, job_id: str, clip: Path, audio: Path, hdr: str) -> None:
    job = folder / job_id
    job.mkdir()
    clip.rename(job / "bars.mp4")
    audio_copy = job / "tone.wav"
    audio_copy.write_bytes(audio.read_bytes())
    manifest = {"job_id": job_id, "audio": "tone.wav", "template": "bars.mp4"}
    manifest["output"] = {"hdr": hdr, "ai_label": False}  # the label would cover bars
    (job / "job.json").write_text(json.dumps(manifest), encoding="utf-8")
    job.rename(inbox / job_id)


def read_back(path: Path, h: int = H) -> tuple[av.VideoFrame, np.ndarray]:
    """The result's middle frame and each bar's Y'CbCr at its centre."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    f = frames[len(frames) // 2]
    dtype = np.uint16 if "10" in f.format.name else np.uint8
    planes = [np.frombuffer(p, dtype).reshape(p.height, -1) for p in f.planes]
    mid = [BAR_W * i + BAR_W // 2 for i in range(len(BARS))]
    yy = planes[0][h // 2, mid]
    cb, cr = planes[1][h // 4, [m // 2 for m in mid]], planes[2][h // 4, [m // 2 for m in mid]]
    return f, np.stack([yy, cb, cr], -1).astype(np.float64)


def bt709_rgb(codes: np.ndarray) -> np.ndarray:
    """8-bit limited-range BT.709 Y'CbCr -> R'G'B' 0..255."""
    kr, kb = KR_KB["bt709"]
    y, cb, cr = (codes[:, 0] - 16) / 219, (codes[:, 1] - 128) / 224, (codes[:, 2] - 128) / 224
    r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.stack([r, g, b], -1) * 255


@pytest.mark.timeout(300)
def test_tagged_templates_come_out_as_their_colours_in_bt709(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    d = daemon_factory(inbox={"engine": "passthrough"}).start()
    audio = default_audio(tmp_path)
    codes = {}
    for name in [*CASES, "hlg-keep"]:
        clip, codes[name] = template(tmp_path, name.removesuffix("-keep"))
        drop(d.inbox, tmp_path, name, clip, audio, "keep" if name.endswith("-keep") else "tonemap")
    problems = []
    for name in CASES:
        assert d.wait_state(name, timeout=120)["state"] == "done", d.log_tail()
        frame, got = read_back(d.outbox / name / "result.mp4", height(name))
        tags = (frame.colorspace, frame.color_range, frame.color_trc, frame.color_primaries)
        assert tags == (1, 1, 1, 1), f"{name}: not tagged BT.709 limited range: {tags}"
        assert frame.format.name == "yuv420p", name
        rgb = bt709_rgb(got)
        tolerance = SDR_TOLERANCE if CASES[name][2] == "sdr" else HDR_TOLERANCE
        for bar, want, have in zip(range(len(BARS)), BARS, rgb, strict=True):
            off = np.abs(have - want)
            if tolerance == HDR_TOLERANCE:
                off = np.where((np.array(want) == 0) & (have <= BLACK_SLACK), 0, off)
            if off.max() > tolerance:
                problems.append(f"{name} bar {bar}: {want} came out as {tuple(have.round(1))}")
        log = (d.outbox / name / "log.txt").read_text(encoding="utf-8")
        assert "result BT.709 SDR" in log, log
        if CASES[name][2] != "sdr":
            assert "tone-mapped" in log, log
    assert not problems, "\n".join(problems)
    # hdr = "keep": the HLG template's code values, 10-bit, tagged BT.2020 HLG
    assert d.wait_state("hlg-keep", timeout=120)["state"] == "done", d.log_tail()
    frame, got = read_back(d.outbox / "hlg-keep" / "result.mp4")
    assert frame.format.name == "yuv420p10le"
    assert (frame.colorspace, frame.color_range, frame.color_trc, frame.color_primaries) == (
        9,
        1,
        18,
        9,
    )
    # the pipeline works in 8-bit R'G'B': 2 bits of 10, and x264's rounding, may differ
    assert np.abs(got - codes["hlg-keep"]).max() <= 12, (got, codes["hlg-keep"])
