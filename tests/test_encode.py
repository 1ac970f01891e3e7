"""The encoder's command line: libx264 by default, NVENC's counterparts of crf/preset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dropbox_daemon.errors import RenderError
from dropbox_daemon.media import encode as E

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
    E.nvenc_problem.cache_clear()
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
        E.nvenc_problem.cache_clear()
