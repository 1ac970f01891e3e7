"""The arithmetic of template frames, pure and exact: which source frame each output frame
shows (looped forwards and backwards, resampled to the output's rate), how many frames a
duration makes, the output's size, a background colour."""

from __future__ import annotations

import math

EPS = 1e-9


def pingpong_index(i: int, n: int) -> int:
    """Index into n source frames for output frame i, bouncing at both ends without repeats.

    n=4 gives 0 1 2 3 2 1 0 1 2 3 ...
    """
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    k = i % period
    return k if k < n else period - k


def resampled_range(k: int, src_fps: float, out_fps: float) -> range:
    """Output-rate frame indices j that show source frame k (j/out_fps falls in frame k's span)."""
    ratio = out_fps / src_fps
    return range(math.ceil(k * ratio - EPS), math.ceil((k + 1) * ratio - EPS))


def frame_count(duration: float, fps: float) -> int:
    """Frames needed to cover `duration` seconds at `fps` (at least one)."""
    return max(1, math.ceil(duration * fps - 1e-6))


def output_size(
    width: int, height: int, target_height: int | None, max_pixels: int | None = None
) -> tuple[int, int]:
    """(w, h) of the output: scaled to target_height keeping aspect, both even (yuv420p).

    Without a target height, a picture over `max_pixels` (a large photo) is scaled down to fit."""
    if target_height is None:
        if max_pixels and width * height > max_pixels:
            scale = math.sqrt(max_pixels / (width * height))
            width, height = int(width * scale), int(height * scale)
        return max(2, width - width % 2), max(2, height - height % 2)
    h = target_height - target_height % 2
    w = max(2, round(width * h / height / 2) * 2)
    return w, h


def parse_colour(hex_rgb: str) -> tuple[int, int, int]:
    """'#rrggbb' as a BGR triple."""
    r, g, b = (int(hex_rgb[i : i + 2], 16) for i in (1, 3, 5))
    return b, g, r
