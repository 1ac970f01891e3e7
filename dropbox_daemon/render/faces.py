"""Face detection, tracking over a template's frames, and the template cache.

A track is one box (or None) per template frame at the output size and rate.
Detection runs once per template and settings; the track is cached in the
state folder under the template's content hash, so the next job on the same
template skips detection entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dropbox_daemon.errors import RenderError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in output pixels
TRACK_VERSION = 4  # bump when detection or the tracking arithmetic changes: old caches are ignored
REFRESH_EVERY = (
    25  # frames: a whole-frame search at least this often, even while the face is followed
)
AROUND = 0.6  # the search window around the previous face: this share of its size on every side
CUT_LEVEL = 24.0  # mean absolute change of a coarse grid of pixels (0..255) that is a scene cut
CUT_GRID = 16  # every this many pixels, each way, are compared for a cut


class Detector(ABC):
    """Finds faces in one frame; a stronger detector can replace the default."""

    name = "detector"

    @abstractmethod
    def detect(self, bgr: np.ndarray, near: Box | None = None) -> list[Box]:
        """Boxes of the faces in `bgr`, in its pixel coordinates, most confident first; `near`
        (the face in the previous frame) lets a detector look around it first."""


MAX_UPSCALE = 2.0


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (shipped in cv2.data), run on a downscaled frame."""

    name = "haar"

    def __init__(self, detect_width: int = 480, min_face: float = 0.08) -> None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RenderError(
                f"cannot load the Haar cascade {path}", code="detector", stage="faces"
            )
        self.detect_width = detect_width
        self.min_face = min_face  # smallest face, as a share of the frame's width

    def detect(self, bgr: np.ndarray, near: Box | None = None) -> list[Box]:
        # a small picture is enlarged (up to 2x): the cascade misses faces under ~50 px
        scale = min(MAX_UPSCALE, self.detect_width / bgr.shape[1])
        if near is not None:
            # a followed face is searched for in a window around it, at sizes close to its
            # own: a few times cheaper than the whole frame; the whole frame when it is not there
            found = self._around(bgr, scale, near)
            if found:
                return found
        small = _scaled(bgr, scale)
        side = max(20, int(self.min_face * small.shape[1]))
        return self._search(small, scale, (0, 0), (side, side), None)

    def _around(self, bgr: np.ndarray, scale: float, near: Box) -> list[Box]:
        """Only the window is scaled down, not the whole frame (a 720p frame to 480 wide
        took 4.3 ms, as long as the search in the window)."""
        x0, y0, x1, y1 = near
        size = max(x1 - x0, y1 - y0)
        m = AROUND * size
        h, w = bgr.shape[:2]
        ax, ay = max(0, int(x0 - m)), max(0, int(y0 - m))
        bx, by = min(w, int(x1 + m) + 1), min(h, int(y1 + m) + 1)
        lo, hi = max(20, int(size * scale * 0.6)), int(size * scale * 1.6) + 1
        if min(bx - ax, by - ay) * scale < lo:
            return []
        part = _scaled(bgr[ay:by, ax:bx], scale)
        return self._search(part, scale, (ax * scale, ay * scale), (lo, lo), (hi, hi))

    def _search(
        self,
        part: np.ndarray,
        scale: float,
        offset: tuple[float, float],
        min_size: tuple[int, int],
        max_size: tuple[int, int] | None,
    ) -> list[Box]:
        gray = cv2.equalizeHist(cv2.cvtColor(part, cv2.COLOR_BGR2GRAY))
        found, _levels, weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=1.1,
            minNeighbors=5,
            minSize=min_size,
            maxSize=max_size or (0, 0),
            outputRejectLevels=True,
        )
        ranked = sorted(zip(list(found), list(weights), strict=True), key=lambda t: -float(t[1]))
        # most confident first: the cascade's stage weight separates faces from face-like clutter
        ox, oy = offset
        return [
            (
                int((ox + x) / scale),
                int((oy + y) / scale),
                int((ox + x + fw) / scale),
                int((oy + y + fh) / scale),
            )
            for (x, y, fw, fh), _w in ranked
        ]


def _scaled(bgr: np.ndarray, scale: float) -> np.ndarray:
    h, w = bgr.shape[:2]
    if scale == 1:
        return bgr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class TrackSettings:
    detector: str = "haar"
    max_gap: int = 12  # frames: a face missed this long or shorter is carried over
    smooth: int = 5  # frames in the moving average of box coordinates
    # top, bottom, left, right as shares of the box: Haar boxes end at the lower lip, the chin is below
    pad: tuple[float, float, float, float] = (0.0, 0.15, 0.0, 0.0)
    every: int = 1  # frames: detect on one in `every`, the boxes between interpolated

    def key(self) -> str:
        return json.dumps(
            [TRACK_VERSION, self.detector, self.max_gap, self.smooth, list(self.pad), self.every]
        )


def pick_face(boxes: list[Box], previous: Box | None) -> Box | None:
    """The face to follow: the one overlapping the previous face, else the most confident."""
    if not boxes:
        return None
    if previous is not None:
        px, py = (previous[0] + previous[2]) / 2, (previous[1] + previous[3]) / 2
        size = max(previous[2] - previous[0], previous[3] - previous[1])
        near = [
            b for b in boxes if abs((b[0] + b[2]) / 2 - px) + abs((b[1] + b[3]) / 2 - py) < size
        ]
        if near:
            return near[0]
    return boxes[0]


def fill_gaps(raw: list[Box | None], max_gap: int) -> list[Box | None]:
    """Interpolate boxes across runs of misses no longer than `max_gap` between two hits."""
    out = list(raw)
    hits = [i for i, b in enumerate(raw) if b is not None]
    for a, b in zip(hits, hits[1:], strict=False):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            ba, bb = np.array(raw[a], float), np.array(raw[b], float)
            for k in range(1, gap + 1):
                t = k / (gap + 1)
                out[a + k] = tuple(int(round(v)) for v in ba + (bb - ba) * t)  # type: ignore[assignment]
    return out


def smooth_runs(boxes: list[Box | None], window: int) -> list[Box | None]:
    """Centred moving average of each coordinate within every run of consecutive boxes."""
    return [smooth_at(boxes, k, window) for k in range(len(boxes))]


def smooth_at(boxes: list[Box | None], k: int, window: int) -> Box | None:
    """smooth_runs at one index: the mean of the boxes within `window`//2 of k on each side
    that are in k's run of consecutive boxes (None where k has no box)."""
    if boxes[k] is None:
        return None
    half = window // 2
    lo, hi = k, k + 1
    while lo > max(0, k - half) and boxes[lo - 1] is not None:
        lo -= 1
    while hi < min(len(boxes), k + half + 1) and boxes[hi] is not None:
        hi += 1
    return tuple(int(round(v)) for v in np.array(boxes[lo:hi], float).mean(axis=0))  # type: ignore[return-value]


def pad_box(box: Box, pad: tuple[float, float, float, float], size: tuple[int, int]) -> Box:
    """Grow a box by shares of its size (top, bottom, left, right), clipped to the frame."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    w, h = size
    return (
        max(0, int(x0 - pad[2] * bw)),
        max(0, int(y0 - pad[0] * bh)),
        min(w, int(x1 + pad[3] * bw)),
        min(h, int(y1 + pad[1] * bh)),
    )


def _alike(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).mean()) <= CUT_LEVEL


class TrackStream:
    """The face track built as frames arrive: push() each frame in order, and get back the
    boxes that are final (index, box), finish() at the end for the rest. A box is final once
    the frames after it that its gap filling and smoothing look at have been seen
    (max_gap + smooth/2 frames, and one more: a cut can fill in the frame before it), so
    frames can flow on while detection runs.

    Detection runs on one frame in `settings.every` (the frames between are looked up by the
    gap filling, as a missed frame is), on every frame while the face is lost, on the first
    frame of a new shot (a scene cut: the picture changes as a whole) and on the frame before
    it, so no box is interpolated across a cut, and on the last frame. With `every` = 1 this
    is detecting every frame first and filling and smoothing after, each shot on its own."""

    def __init__(self, detector: Detector, settings: TrackSettings) -> None:
        self.detector, self.settings = detector, settings
        self.raw: list[Box | None] = []
        self.looked: list[bool] = []  # whether detection ran on that frame
        self.track: list[Box | None] = []  # the final boxes so far
        self.previous: Box | None = None
        self.size: tuple[int, int] = (0, 0)
        self.reach = settings.max_gap + settings.smooth // 2 + 1  # frames a box depends on
        self.last_frame: np.ndarray | None = None
        self.grids: list[np.ndarray] = []  # the coarse grids of the last two frames
        self.lost = False  # the last detection found no face
        self.cuts: list[int] = []  # the first frame of each shot after the first
        self.detections = 0

    def push(self, frame: np.ndarray) -> list[tuple[int, Box | None]]:
        """Detect where due (around the previous face, the whole frame every REFRESH_EVERY
        frames)."""
        i = len(self.raw)
        self.size = (frame.shape[1], frame.shape[0])
        cut = self._cut(frame)
        if cut:
            self.cuts.append(i)
            if self.looked and not self.looked[-1] and self.last_frame is not None:
                self._look(i - 1, self.last_frame)  # the last frame of the shot before
        self.raw.append(None)
        self.looked.append(False)
        if cut or self.lost or i % self.settings.every == 0:
            self._look(i, frame, whole=cut)
        self.last_frame = frame
        return self._final(len(self.raw) - self.reach - 1)

    def _cut(self, frame: np.ndarray) -> bool:
        """Whether this frame starts a new shot. A frame unlike the one before whose next
        frame is like the one before it (a flash, a dropped frame, a hand across the lens)
        was no cut: it is taken back, and its face filled from its neighbours."""
        grid = frame[::CUT_GRID, ::CUT_GRID].astype(np.int16)
        before, self.grids = self.grids, [*self.grids[-1:], grid]
        if not before:
            return False
        if not _alike(grid, before[-1]):
            if (
                len(before) == 2
                and self.cuts[-1:] == [len(self.raw) - 1]
                and _alike(grid, before[0])
            ):
                self.cuts.pop()  # back to the picture before the last frame: no cut at all
                return False
            return True
        return False

    def _look(self, i: int, frame: np.ndarray, whole: bool = False) -> None:
        near = None if whole or i % REFRESH_EVERY == 0 else self.previous
        box = pick_face(self.detector.detect(frame, near), None if whole else self.previous)
        self.raw[i], self.looked[i] = box, True
        self.lost = box is None
        self.detections += 1
        if box is not None:
            self.previous = box

    def _shot(self, i: int, lo: int, hi: int) -> tuple[int, int]:
        for c in reversed(self.cuts):
            if c <= i:
                return max(lo, c), hi
            hi = min(hi, c)
        return lo, hi

    def finish(self) -> list[tuple[int, Box | None]]:
        if self.looked and not self.looked[-1] and self.last_frame is not None:
            self._look(len(self.raw) - 1, self.last_frame)  # the track ends on a detection
        return self._final(len(self.raw))

    def _final(self, upto: int) -> list[tuple[int, Box | None]]:
        out = []
        s = self.settings
        for i in range(len(self.track), upto):
            # a box depends on the raw boxes up to `reach` frames on either side of it: gaps
            # filled up to max_gap + 1 frames away, for the boxes within smooth/2 of it
            lo, hi = max(0, i - self.reach), min(len(self.raw), i + self.reach + 1)
            lo, hi = self._shot(i, lo, hi)  # nothing is filled or smoothed across a cut
            box = smooth_at(fill_gaps(self.raw[lo:hi], s.max_gap), i - lo, s.smooth)
            box = pad_box(box, s.pad, self.size) if box is not None else None
            self.track.append(box)
            out.append((i, box))
        return out


def build_track(
    frames: Iterable[np.ndarray], detector: Detector, settings: TrackSettings
) -> list[Box | None]:
    """Detect, follow, fill and smooth: one box or None per frame."""
    stream = TrackStream(detector, settings)
    for frame in frames:
        stream.push(frame)
    stream.finish()
    return stream.track


def face_share(track: list[Box | None]) -> float:
    return sum(b is not None for b in track) / max(1, len(track))


def faceless_ranges(track: list[Box | None]) -> list[tuple[int, int]]:
    """[first, last] frame ranges without a face."""
    out, start = [], None
    for i, b in enumerate(track):
        if b is None and start is None:
            start = i
        elif b is not None and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(track) - 1))
    return out


class TrackCache:
    """Tracks on disk, keyed by template content hash, output size, rate and settings."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def key(
        self, template_sha256: str, size: tuple[int, int], fps: float, settings: TrackSettings
    ) -> str:
        blob = json.dumps([template_sha256, list(size), round(fps, 6), settings.key()])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str, needed: int) -> list[Box | None] | None:
        """A cached track covering `needed` frames (or the whole template), else None."""
        try:
            data = json.loads((self.folder / f"{key}.json").read_text())
            boxes = [tuple(b) if b is not None else None for b in data["boxes"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(boxes) < needed and not data.get("complete"):
            return None  # made for a shorter job: detect again over more frames
        return boxes  # type: ignore[return-value]

    def put(self, key: str, track: list[Box | None], *, complete: bool) -> None:
        """Store a track; `complete` when it covers every frame of the template."""
        from dropbox_daemon.outbox import atomic_write_json

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.folder / f"{key}.json",
            {"complete": complete, "boxes": [list(b) if b else None for b in track]},
        )
