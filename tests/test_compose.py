"""Compositing: the patch and the overlays blended by their masks, to the rounding."""

from __future__ import annotations

import cv2
import numpy as np

from dropbox_daemon.render import compose
from dropbox_daemon.render.engines.base import Patch


def reference(under: np.ndarray, over: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (under * (1 - w[..., None]) + over * w[..., None] + 0.5).astype(np.uint8)


def test_a_patch_is_blended_through_its_mask_and_the_frame_is_left_alone() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (120, 160, 3), np.uint8)
    frame.flags.writeable = False  # a cached template frame: never written to
    pixels = rng.integers(0, 256, (50, 60, 3), np.uint8)
    mask = compose.feathered_box(60, 50)
    out = compose.blend(frame, Patch((30, 40, 90, 90), pixels, mask))
    want = reference(frame[40:90, 30:90], pixels, mask)
    assert np.abs(out[40:90, 30:90].astype(int) - want).max() <= 1
    assert np.array_equal(out[:40], frame[:40]) and np.array_equal(out[90:], frame[90:])


def test_a_patch_past_the_frame_edge_is_cut_to_it() -> None:
    frame = np.zeros((40, 40, 3), np.uint8)
    out = compose.blend(frame, Patch((20, 20, 60, 60), np.full((40, 40, 3), 200, np.uint8), None))
    assert out[39, 39].tolist() != [0, 0, 0] and out.shape == frame.shape


def test_overlays_blend_by_their_alpha_and_clip_to_the_frame(tmp_path) -> None:  # noqa: ANN001
    logo = np.zeros((20, 40, 4), np.uint8)
    logo[..., 2], logo[..., 3] = 255, 128  # red at half opacity
    cv2.imwrite(str(tmp_path / "logo.png"), logo)
    frame = np.full((90, 160, 3), 100, np.uint8)
    ov = compose.watermark_overlay(
        tmp_path / "logo.png", (160, 90), width_share=0.25, margin_share=0.0, opacity=1.0
    )
    ov.apply(frame)
    a = 128 / 255
    assert (
        np.abs(frame[-1, -1].astype(int) - [100 * (1 - a), 100 * (1 - a), 100 + 155 * a]).max() <= 1
    )
    assert frame[0, 0].tolist() == [100, 100, 100]
    label = compose.label_overlay("AI-generated", (160, 90), margin_share=0.02)
    small = np.full((10, 10, 3), 100, np.uint8)  # most of the label falls outside
    label.apply(small)
    label.x = 500  # wholly outside: nothing to draw, nothing raised
    label.apply(small)
