"""The encoder's command line: libx264 by default, NVENC's counterparts of crf/preset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from dropbox_daemon.errors import MediaError, RenderError
from dropbox_daemon.render.media import encode as E

FFMPEG = E.ffmpeg_binary(None)


def args(vcodec: str, preset: str = "veryfast") -> list[str]:
    return E.encode_args(
        FFMPEG,
        Path("out.mp4"),
        size=(64, 64),
        fps=25.0,
        audio_path=Path("a.wav"),
        duration=1.0,
        crf=21,
        preset=preset,
        audio_bitrate="128k",
        metadata={},
        vcodec=vcodec,
    )


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_libx264_uses_crf_and_its_preset() -> None:
    a = args("libx264")
    assert option(a, "-vcodec") == "libx264" and option(a, "-crf") == "21"
    assert option(a, "-preset") == "veryfast" and "-cq" not in a


def test_nvenc_gets_constant_quality_and_a_p_preset() -> None:
    a = args("h264_nvenc", preset="slow")
    assert option(a, "-vcodec") == "h264_nvenc" and "-crf" not in a
    assert (option(a, "-rc"), option(a, "-cq"), option(a, "-b:v")) == ("vbr", "21", "0")
    assert option(a, "-preset") == "p5"


def test_the_bundled_ffmpeg_has_nvenc() -> None:
    """pyproject's imageio-ffmpeg floor is a release whose binary has h264_nvenc (0.8; the
    binaries of 0.5 to 0.7 have none): a GPU host needs no other ffmpeg."""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("imageio-ffmpeg's NVENC build is x86_64's")
    r = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True)
    assert " h264_nvenc " in r.stdout and " libx264 " in r.stdout
    floor = next(
        line
        for line in (Path(__file__).parents[1] / "pyproject.toml").read_text().splitlines()
        if '"imageio-ffmpeg' in line
    )
    assert '"imageio-ffmpeg>=0.8"' in floor, floor


def test_ffmpeg_accepts_the_nvenc_options() -> None:
    """Parsed by the real ffmpeg: without a GPU it stops at loading CUDA, after the options."""
    a = args("h264_nvenc")
    keep = [x for x in a[a.index("-map") :] if x not in ("0:v", "1:a", "-map")]
    cmd = [FFMPEG, "-hide_banner", "-f", "lavfi", "-i", "color=s=64x64:d=0.2", *keep[:-1]]
    r = subprocess.run([*cmd, "-f", "null", "-"], capture_output=True, text=True, timeout=60)
    for bad in ("Unrecognized option", "Unable to parse", "Error setting option"):
        assert bad not in r.stderr, r.stderr


def test_auto_without_an_nvidia_device_is_libx264_and_forced_nvenc_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(E, "NVIDIA_DEVICE", tmp_path / "nvidiactl")
    E._probed.clear()
    try:
        assert E.video_encoder(FFMPEG, "auto") == (
            "libx264",
            f"no NVIDIA device ({tmp_path / 'nvidiactl'} is absent)",
        )
        assert E.video_encoder(FFMPEG, "libx264")[0] == "libx264"
        with pytest.raises(RenderError) as e:
            E.video_encoder(FFMPEG, "h264_nvenc")
        assert e.value.code == "encoder_unavailable" and "is absent" in e.value.message
    finally:
        E._probed.clear()


def test_a_failed_test_encode_is_tried_again_later_a_success_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter(["a test encode with h264_nvenc failed: OpenEncodeSessionEx failed", None])
    calls = []
    monkeypatch.setattr(E, "_test_encode", lambda exe: calls.append(exe) or next(answers))
    E._probed.clear()
    try:
        assert "OpenEncodeSessionEx" in E.nvenc_problem(FFMPEG, now=0.0)
        assert "OpenEncodeSessionEx" in E.nvenc_problem(FFMPEG, now=60.0)  # remembered a while
        assert E.nvenc_problem(FFMPEG, now=E.NVENC_RETRY_SECONDS + 1) is None  # tried again
        assert E.nvenc_problem(FFMPEG, now=10 * E.NVENC_RETRY_SECONDS) is None  # kept
        assert len(calls) == 2
    finally:
        E._probed.clear()


def test_sizes_nvenc_cannot_encode_go_to_libx264(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "nvenc_problem", lambda exe: None)  # a GPU whose NVENC works
    assert E.video_encoder(FFMPEG, "auto", (1280, 720))[0] == "h264_nvenc"
    for size in ((64, 48), (144, 720), (8192, 4320)):
        codec, why = E.video_encoder(FFMPEG, "auto", size)
        assert codec == "libx264" and "outside NVENC's H.264 sizes" in why, why
    with pytest.raises(RenderError, match="outside NVENC"):
        E.video_encoder(FFMPEG, "h264_nvenc", (64, 48))


@pytest.mark.parametrize("frames", [3, 60])  # a job shorter than the pipe, and a longer one
def test_an_nvenc_that_does_not_open_falls_back_to_libx264(tmp_path: Path, frames: int) -> None:
    """The real ffmpeg's h264_nvenc cannot open on this host (no GPU, or no session free on
    one): the kept frames go to libx264 and the file is whole."""
    import av

    def cmd(codec: str) -> list[str]:
        return E.encode_args(
            FFMPEG, tmp_path / "out.mp4", size=(320, 240), fps=25.0,
            audio_path=tmp_path / "a.wav", duration=frames / 25, crf=23, preset="veryfast",
            audio_bitrate="64k", metadata={}, vcodec=codec,
        )  # fmt: skip

    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=d=3", "-y", str(tmp_path / "a.wav")],
        check=True,
    )
    said: list[str] = []
    enc = E.Encoder(cmd("h264_nvenc"), tmp_path / "ffmpeg.log", cmd("libx264"), said.append)
    for i in range(frames):
        enc.write(np.full((240, 320, 3), i % 255, np.uint8))
    enc.close()
    assert len(said) == 1 and said[0], said  # ffmpeg's own words for why
    with av.open(str(tmp_path / "out.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in c.decode(video=0)) == frames


def test_without_a_fallback_an_encoder_that_fails_is_the_jobs_error(tmp_path: Path) -> None:
    args = E.encode_args(
        FFMPEG, tmp_path / "out.mp4", size=(320, 240), fps=25.0, audio_path=tmp_path / "none.wav",
        duration=1.0, crf=23, preset="veryfast", audio_bitrate="64k", metadata={},
    )  # fmt: skip
    enc = E.Encoder(args, tmp_path / "ffmpeg.log")
    with pytest.raises(MediaError) as e:
        for _ in range(200):
            enc.write(np.zeros((240, 320, 3), np.uint8))
        enc.close()
    assert e.value.code == "encode_failed"


def test_the_frame_pipe_is_widened_to_a_mebibyte(tmp_path) -> None:  # noqa: ANN001
    import fcntl
    import subprocess

    from dropbox_daemon.render.media.encode import PIPE_BYTES, widen_pipe

    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None
        cap = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        widen_pipe(proc.stdin)
        after = fcntl.fcntl(proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        assert after == min(PIPE_BYTES, cap) or (cap < PIPE_BYTES and after < PIPE_BYTES)
        widen_pipe(None)  # no pipe: nothing to do
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()


def bt709_limited(bgr: np.ndarray) -> np.ndarray:
    """The published BT.709 Y'CbCr (limited range) of 8-bit BGR, in floats, per pixel."""
    b, g, r = (bgr[..., k].astype(np.float64) / 255 for k in range(3))
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    cb, cr = (b - y) / 1.8556, (r - y) / 1.5748
    return np.stack([16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr], -1)


def test_the_packer_makes_bt709_limited_range_4_2_0() -> None:
    """Luma per pixel and chroma as the mean of each 2x2 block, within 1 code value of the
    published formula, on noise (every rounding case) and on saturated colours."""
    from dropbox_daemon.render.media.colour import I420Packer

    bgr = np.random.default_rng(7).integers(0, 256, (48, 64, 3), np.uint8)
    bgr[:8] = [(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255)] * 16  # edge colours
    planes = np.frombuffer(I420Packer(64, 48)(bgr), np.uint8)
    want = bt709_limited(bgr)
    y = planes[: 64 * 48].reshape(48, 64)
    cb = planes[64 * 48 : 64 * 48 + 32 * 24].reshape(24, 32)
    cr = planes[64 * 48 + 32 * 24 :].reshape(24, 32)
    chroma = want[..., 1:].reshape(24, 2, 32, 2, 2).mean(axis=(1, 3))
    assert np.abs(y - want[..., 0]).max() <= 1
    assert np.abs(cb - chroma[..., 0]).max() <= 1 and np.abs(cr - chroma[..., 1]).max() <= 1
    assert y.min() >= 16 and y.max() <= 235
    with pytest.raises(ValueError, match="even frame size"):
        I420Packer(63, 48)


def test_a_packed_encode_comes_back_as_its_colour_tagged_bt709(tmp_path: Path) -> None:
    """Frames written as BGR into a packed encode (the SDR path of every job) decode to the
    same Y'CbCr, tagged BT.709 limited range with centre-sited chroma."""
    import av

    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-y", str(tmp_path / "a.wav")],
        check=True,
    )
    args = E.encode_args(
        FFMPEG, tmp_path / "out.mp4", size=(64, 48), fps=25.0, audio_path=tmp_path / "a.wav",
        duration=0.4, crf=18, preset="veryfast", audio_bitrate="64k", metadata={}, packed=True,
    )  # fmt: skip
    assert option(args, "-pix_fmt") == "yuv420p" and "scale=" not in option(args, "-vf")
    enc = E.Encoder(args, tmp_path / "ffmpeg.log", packed=True)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = (40, 160, 220)  # BGR: an orange, and a blue beside it
    frame[:, 32:] = (200, 60, 30)
    for _ in range(10):
        enc.write(frame)
    enc.close()
    with av.open(str(tmp_path / "out.mp4")) as c:
        got = next(c.decode(video=0))
    assert (got.colorspace, got.color_range, got.color_trc, got.color_primaries) == (1, 1, 1, 1)
    planes = [np.frombuffer(got.planes[k], np.uint8).reshape(-1, got.planes[k].line_size) for k in range(3)]  # fmt: skip
    want = bt709_limited(frame)
    for x in (8, 56):  # inside each colour, away from the edge between them
        have = (planes[0][24, x], planes[1][12, x // 2], planes[2][12, x // 2])
        assert np.abs(np.array(have, float) - want[24, x]).max() <= 3, (x, have, want[24, x])
    headers = subprocess.run(
        [FFMPEG, "-hide_banner", "-i", str(tmp_path / "out.mp4"), "-c", "copy", "-bsf:v",
         "trace_headers", "-f", "null", "-"], capture_output=True, text=True,
    ).stderr  # fmt: skip
    import re

    assert re.search(r"chroma_sample_loc_type_top_field +\d+ = 1\n", headers), headers[-2000:]
