"""Step 3: the template's face track, one box (or None) per template frame at the output
rate: from the cache (by template content, view, size, rate and settings), or detected as
the frames flow through the render chain. Too few faces is no_face, with where they are
missing and what a closer look found."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropbox_daemon.config import Config
from dropbox_daemon.errors import RenderError
from dropbox_daemon.render import faces
from dropbox_daemon.render.engines.base import FaceFrame
from dropbox_daemon.render.inputs import Emit
from dropbox_daemon.render.media.frames import TemplateFrames
from dropbox_daemon.render.publish import write_poster

Track = list[faces.Box | None]


def track_settings(cfg: Config) -> faces.TrackSettings:
    fc = cfg.faces
    return faces.TrackSettings(
        detector=f"{fc.detector}@{fc.detect_width}",
        max_gap=fc.max_gap,
        smooth=fc.smooth,
        pad=(0.0, fc.pad_bottom, 0.0, 0.0),
        every=max(1, min(fc.detect_every, fc.max_gap + 1)),  # the gaps between must be filled
    )


class FaceBoxes:
    """One face box per output frame for the render chain. A cached track is looked up by the
    template frame's index; otherwise the track is detected as the frames flow (TrackStream:
    each frame goes on once its box is final), and once the template has been seen through it
    is cached and checked: too few faces is no_face, with the numbers."""

    def __init__(
        self, source: TemplateFrames, sha: str, needed: int, cfg: Config, emit: Emit, out_dir: Path
    ) -> None:
        self.source, self.cfg, self.emit, self.out_dir = source, cfg, emit, out_dir
        settings = track_settings(cfg)
        self.cache = faces.TrackCache(cfg.daemon.state_dir / "faces")
        self.key = self.cache.key(f"{sha}:{source.view.key()}", source.size, source.fps, settings)
        t = time.perf_counter()
        image = source.info.kind == "image"
        self.known: Track | None = self.cache.get(self.key, 1 if image else needed)
        self.seconds = time.perf_counter() - t  # spent reading the cache, then detecting
        if self.known is not None:
            self._log(f"cache hit {self.key[:12]} ({len(self.known)} frames), detection skipped")
            self._check(self.known)
        else:  # the detector is loaded only when there is something to detect
            detector = faces.HaarDetector(cfg.faces.detect_width)
            self.stream = faces.TrackStream(detector, settings)
            if image:  # one picture: its face is found before anything else starts
                self._push(next(iter(source.template_frames(1))))
                self.known = self._seen_through(complete=True)

    @property
    def streaming(self) -> bool:
        return self.known is None

    def over(self, frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[FaceFrame]:
        """(template index, picture) in output order -> FaceFrame with its box."""
        if self.known is not None:
            known = self.known
            for i, (src, frame) in enumerate(frames):
                yield FaceFrame(i, frame, known[min(src, len(known) - 1)], src)
            return
        pending: deque[tuple[int, int, np.ndarray]] = deque()  # frames whose box is not final
        seeing, last = True, -1
        for i, (src, frame) in enumerate(frames):
            if seeing and src <= last:  # the template ended and loops: it has been seen through
                seeing = False
                self._seen_through(complete=True)
            last = src
            if seeing:
                self._push(frame)
            pending.append((i, src, frame))
            yield from self._ready(pending)
        if seeing:
            self._seen_through(complete=False)
        yield from self._ready(pending)

    def _push(self, frame: np.ndarray) -> None:
        t = time.perf_counter()
        self.stream.push(frame)
        self.seconds += time.perf_counter() - t

    def _ready(self, pending: deque[tuple[int, int, np.ndarray]]) -> Iterator[FaceFrame]:
        track = self.stream.track
        while pending and pending[0][1] < len(track):
            i, src, frame = pending.popleft()
            yield FaceFrame(i, frame, track[src], src)

    def _seen_through(self, *, complete: bool) -> Track:
        """The whole track is known: cache it (`complete`: it covers the whole template), say
        so, and check it."""
        t = time.perf_counter()
        self.stream.finish()
        track = self.stream.track
        self.cache.put(self.key, track, complete=complete)
        self.seconds += time.perf_counter() - t
        self._log(
            f"cache miss {self.key[:12]}, detected on {len(track)} frames in "
            f"{self.seconds:.2f} s, face in {faces.face_share(track):.0%}"
        )
        self._check(track)
        return track

    def _log(self, what: str) -> None:
        self.emit({"type": "log", "message": f"face track: {what}"})

    def _check(self, track: Track) -> None:
        share = faces.face_share(track)
        if share < self.cfg.faces.min_share or not any(track):
            raise no_face(self.source, track, share, self.cfg, self.out_dir)


def no_face(
    source: TemplateFrames, track: Track, share: float, cfg: Config, out_dir: Path
) -> RenderError:
    """no_face with the numbers: where faces are missing, and what a closer look at the worst
    frame finds (a face in a turned picture, a face too small); poster.jpg shows that frame."""
    ranges = faces.faceless_ranges(track)
    worst = max(ranges, key=lambda r: r[1] - r[0]) if ranges else (0, 0)
    frame = None
    for i, frame in enumerate(source.template_frames(worst[0] + 1)):  # noqa: B007
        if i == worst[0]:
            break
    finding = Finding(None, "")
    if frame is not None:
        write_poster(out_dir, frame)
        finding = look_closer(frame, cfg.faces.detect_width)
    shown = ", ".join(f"{a}-{b}" for a, b in ranges[:5]) + (" ..." if len(ranges) > 5 else "")
    return RenderError(
        f"no usable face in the template: a face was found in {share:.0%} of its "
        f"{len(track)} frames (needed {cfg.faces.min_share:.0%}); frames without a face: {shown}"
        + (f"; {finding.what}" if finding.what else ""),
        code="no_face",
        stage="preparing",
        hint=finding.hint
        or "use a template where one face looks at the camera, well lit and at least "
        "1/10 of the picture wide; poster.jpg shows the worst frame",
    )


@dataclass(frozen=True)
class Finding:
    """What a closer look at a frame without a usable face found, for the no_face error."""

    what: str | None  # the measured cause, or None when nothing more was found
    hint: str


def look_closer(bgr: np.ndarray, detect_width: int = 480) -> Finding:
    """Search a frame where the track has no face for a face in a turned picture (a template
    stored sideways without a rotation flag), then for faces smaller than the track accepts."""
    detector = faces.HaarDetector(detect_width)
    for turns, degrees in ((-1, 90), (2, 180), (1, 270)):
        turned = np.ascontiguousarray(np.rot90(bgr, turns))
        if detector.detect(turned):
            return Finding(
                f"the template looks turned: a face is found once the picture is turned "
                f"{degrees} degrees clockwise, and the file carries no rotation for it",
                "turn the template upright (e.g. ffmpeg -i in.mp4 -vf transpose=... out.mp4) or "
                "set its display rotation; poster.jpg shows it as the file says",
            )
    w = bgr.shape[1]
    small = faces.HaarDetector(min(w, 4 * detect_width), min_face=0.0).detect(bgr)
    if small:
        x0, _, x1, _ = small[0]
        need = detector.min_face
        return Finding(
            f"the only faces are small: the clearest is {(x1 - x0) / w:.1%} of the picture "
            f"wide ({x1 - x0} px of {w}); at least {need:.0%} is needed",
            "crop or zoom the template so the face fills at least 1/10 of its width; "
            "poster.jpg shows the frame",
        )
    return Finding(None, "")
