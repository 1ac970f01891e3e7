"""Image sizes read from headers, before any decoder allocates the picture."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest
from corpus.hostile import png_bomb
from support import FFMPEG

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.errors import RejectedDrop
from dropbox_daemon.render.media.probe import image_header_size, probe_visual


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "bmp"])
def test_header_size_of_real_images(tmp_path, ext: str) -> None:  # noqa: ANN001
    p = tmp_path / f"i.{ext}"
    cv2.imwrite(str(p), np.zeros((45, 123, 3), np.uint8))
    assert image_header_size(p) == (123, 45)


def test_header_size_of_gif_and_non_images(tmp_path) -> None:  # noqa: ANN001
    gif = tmp_path / "i.gif"
    subprocess.run(
        [
            FFMPEG,
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=s=123x45:d=0.1",
            "-frames:v",
            "1",
            str(gif),
        ],
        check=True,
    )
    assert image_header_size(gif) == (123, 45)
    (tmp_path / "t.txt").write_text("hello")
    assert image_header_size(tmp_path / "t.txt") is None


def test_decompression_bomb_is_refused_before_decoding(tmp_path) -> None:  # noqa: ANN001
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb(30000, 30000))
    assert p.stat().st_size < 100_000
    with pytest.raises(RejectedDrop) as e:
        probe_visual(p, LimitsConfig())
    assert e.value.code == "too_many_pixels" and "30000x30000" in e.value.message
