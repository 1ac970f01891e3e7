"""preview: audio-driven mouth motion drawn into the template's own lower face, no weights.

The jaw and lower lip are pulled down by a smooth displacement field whose
size follows the loudness of the speech; the gap that opens between the lips
is shaded as the inside of a mouth. Only the lower face moves; everything
else, the rest of the face included, stays the presenter's own pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import cv2
import numpy as np

from dropbox_daemon.render.engines.base import (
    AudioFeatures,
    Engine,
    FaceFrame,
    Patch,
    RenderContext,
)

MOUTH_Y = 0.70  # mouth line, as a share of the (chin-padded) face box height
JAW_DROP = 0.09  # largest jaw drop, as a share of the box height
MOUTH_HALF_WIDTH = 0.12  # of the box width
INSIDE_ALPHA = 0.75  # how dark the opening gets at its centre
INSIDE_BGR = np.array([28, 22, 48], np.float32)  # the dark red-brown of an open mouth


@lru_cache(maxsize=16)
def _geometry(w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel grids and the displacement profile (0..1) of a w x h face box."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = (w - 1) / 2, MOUTH_Y * h
    across = np.exp(
        -(((xs - mx) / (0.22 * w)) ** 2)
    )  # strongest under the mouth, none at the cheeks
    below = np.clip((ys - my) / max(1.0, h - my), 0, 1)
    down = np.where(
        ys >= my, 1 - below * below * (3 - 2 * below), 0
    )  # smoothstep to 0 at the bottom
    profile = (across * down).astype(np.float32)
    mask = np.clip(across * 1.4, 0, 1) * np.clip((ys - (my - 0.2 * h)) / (0.1 * h), 0, 1)
    return xs, ys, profile, cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, 0.03 * w))


def open_mouth(face: np.ndarray, opening: float) -> tuple[np.ndarray, np.ndarray]:
    """The face crop with its mouth opened by `opening` (0..1), and the blend mask."""
    h, w = face.shape[:2]
    xs, ys, profile, mask = _geometry(w, h)
    drop = JAW_DROP * h * opening
    if drop < 0.5:
        return face, mask
    warped = cv2.remap(
        face, xs, ys - drop * profile, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # the inside of the mouth, where the lips parted
    my = MOUTH_Y * h
    inside = np.zeros((h, w), np.float32)
    half_w = int(MOUTH_HALF_WIDTH * w * (0.7 + 0.3 * opening))
    cv2.ellipse(
        inside,
        (int((w - 1) / 2), int(my + drop / 2)),
        (max(1, half_w), max(1, int(drop / 2))),
        0,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    inside = cv2.GaussianBlur(inside, (0, 0), max(0.8, drop / 5))[..., None] * INSIDE_ALPHA
    out = warped.astype(np.float32) * (1 - inside) + INSIDE_BGR * inside
    return np.clip(out, 0, 255).astype(np.uint8), mask


class PreviewEngine(Engine):
    name = "preview"

    def render(
        self, frames: Iterator[FaceFrame], audio: AudioFeatures, ctx: RenderContext
    ) -> Iterator[Patch | None]:
        opening = audio.opening
        for ff in frames:
            if ff.box is None:
                yield None
                continue
            x0, y0, x1, y1 = ff.box
            o = float(opening[ff.index]) if ff.index < len(opening) else 0.0
            pixels, mask = open_mouth(ff.frame[y0:y1, x0:x1], o)
            yield Patch(ff.box, pixels, mask)
