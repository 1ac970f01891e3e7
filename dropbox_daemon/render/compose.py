"""Compositing: generated face patches blended into the frame, watermark and AI label on top.

Everything here is per-pixel numpy/OpenCV on small regions; overlays are
rendered once per job and only alpha-blended per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from dropbox_daemon.errors import MediaError
from dropbox_daemon.render.engines.base import Patch
from dropbox_daemon.render.media.frame_pool import FramePool


@lru_cache(maxsize=32)
def feathered_box(w: int, h: int, feather: float = 0.12) -> np.ndarray:
    """A w x h mask: 1 inside, falling smoothly to 0 over `feather` of each side at the edges."""
    fx, fy = max(1.0, feather * w), max(1.0, feather * h)
    ramp_x = np.clip(np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / fx, 0, 1)
    ramp_y = np.clip(np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / fy, 0, 1)
    m = np.outer(ramp_y, ramp_x)
    return (m * m * (3 - 2 * m)).astype(np.float32)


def blend(frame: np.ndarray, patch: Patch, pool: FramePool | None = None) -> np.ndarray:
    """A copy of `frame` (in a buffer of `pool`, where given) with `patch` composited in
    through its (feathered) mask."""
    return blend_into(pool.copy_of(frame) if pool is not None else frame.copy(), patch)


def blend_into(out: np.ndarray, patch: Patch) -> np.ndarray:
    """`patch` composited into the writable frame `out` itself; `out` returned."""
    x0, y0, x1, y1 = patch.box
    region = out[y0:y1, x0:x1]
    h, w = region.shape[:2]
    mask = patch.mask if patch.mask is not None else feathered_box(w, h)
    m = np.ascontiguousarray(mask[:h, :w], np.float32)
    region[:] = mix(region, np.ascontiguousarray(patch.pixels[:h, :w]), m, inverse(m))
    return out


def mix(under: np.ndarray, over: np.ndarray, w: np.ndarray, w_under: np.ndarray) -> np.ndarray:
    """under * w_under + over * w (w_under = 1 - w), rounded: OpenCV's blend, a quarter of
    numpy's float arithmetic on the same pixels (this runs beside the model, on its cores)."""
    if under.size == 0:
        return under
    return cv2.blendLinear(np.ascontiguousarray(under), over, w_under, w)


def inverse(w: np.ndarray) -> np.ndarray:
    return np.subtract(1.0, w, dtype=np.float32)


@dataclass
class Overlay:
    """A pre-rendered image with alpha, placed at (x, y) of every frame."""

    x: int
    y: int
    bgr: np.ndarray  # uint8
    alpha: np.ndarray  # float32, (h, w)

    def __post_init__(self) -> None:
        self.under = inverse(self.alpha)

    def apply(self, frame: np.ndarray) -> None:
        """Alpha-blend onto `frame` in place (whatever falls outside the frame is dropped)."""
        roi = frame[self.y : self.y + self.bgr.shape[0], self.x : self.x + self.bgr.shape[1]]
        h, w = roi.shape[:2]
        a, under = self.alpha[:h, :w], self.under[:h, :w]
        if (h, w) != self.alpha.shape:
            a, under = np.ascontiguousarray(a), np.ascontiguousarray(under)
        roi[:] = mix(roi, np.ascontiguousarray(self.bgr[:h, :w]), a, under)


def watermark_overlay(
    path: Path, size: tuple[int, int], *, width_share: float, margin_share: float, opacity: float
) -> Overlay:
    """The watermark image scaled to `width_share` of the frame, bottom-right with a margin."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 and img.ndim != 2:
        raise MediaError(
            f"watermark {path.name!r} is not a readable image",
            code="watermark_invalid",
            stage="preparing",
            hint="use a PNG (with transparency) or JPEG file",
        )
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    fw, fh = size
    target_w = max(8, int(fw * width_share))
    target_h = max(1, round(img.shape[0] * target_w / img.shape[1]))
    target_h = min(target_h, fh // 2)
    img = cv2.resize(img, (target_w, target_h), interpolation=cv2.INTER_AREA)
    alpha = (
        img[..., 3].astype(np.float32) / 255
        if img.shape[2] == 4
        else np.ones((target_h, target_w), np.float32)
    )
    margin = int(margin_share * fw)
    x, y = max(0, fw - target_w - margin), max(0, fh - target_h - margin)
    return Overlay(x, y, np.ascontiguousarray(img[..., :3]), alpha * np.float32(opacity))


def label_overlay(text: str, size: tuple[int, int], *, margin_share: float) -> Overlay:
    """The visible AI-generated mark: white text on a translucent dark box, bottom-left."""
    fw, fh = size
    scale = max(0.35, fw / 1600)
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(3, int(th * 0.4))
    w, h = min(fw, tw + 2 * pad), min(fh, th + base + 2 * pad)
    bgr = np.zeros((h, w, 3), np.uint8)
    cv2.putText(
        bgr,
        text,
        (pad, pad + th),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thick,
        cv2.LINE_AA,
    )
    text_alpha = bgr.max(axis=2).astype(np.float32) / 255
    alpha = np.maximum(np.float32(0.45), text_alpha)  # the box itself at 45%, the text opaque
    margin = int(margin_share * fw)
    return Overlay(margin, max(0, fh - h - margin), bgr, alpha)
