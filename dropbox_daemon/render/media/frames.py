"""Template frames for every output frame: resampled, scaled, looped back and forth.

A video template shorter than the audio plays forwards, then backwards, then
forwards again (never a jump cut); an image is held. Frames stream: the first
pass comes straight from the decoder, later passes from a raw-frame file, so
memory does not grow with the job's length. That file is the template cache's
entry where it fits its budget (frame_store.py: the next job on the template
reads its frames back instead of decoding), else a loop cache in the job's work
folder.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import av
import numpy as np

from dropbox_daemon.errors import RenderError
from dropbox_daemon.render.media.colour import Colour, HdrMode, tone_map
from dropbox_daemon.render.media.frame_math import (
    EPS,
    parse_colour,
    pingpong_index,
)
from dropbox_daemon.render.media.frame_pool import FramePool, FramesOnDisk
from dropbox_daemon.render.media.frame_store import FrameStore
from dropbox_daemon.render.media.probe import VisualInfo

T = TypeVar("T")


@dataclass(frozen=True)
class View:
    """How a decoded template frame is shown: turned upright as a player turns it, at its
    display aspect (the output size does that), deinterlaced, transparency flattened, its
    colours converted as its tags say (HDR tone-mapped to SDR unless `hdr` is "keep")."""

    rotation: int = 0  # degrees clockwise (VisualInfo.rotation)
    background: tuple[int, int, int] = (0, 0, 0)  # BGR under transparent pixels
    deinterlace: bool = False
    alpha: bool = False
    hdr: HdrMode = "tonemap"

    @classmethod
    def of(cls, info: VisualInfo, background: str = "#000000", hdr: HdrMode = "tonemap") -> View:
        return cls(info.rotation, parse_colour(background), info.interlaced, info.alpha, hdr)

    def key(self) -> str:
        """What changes the pictures (for the face-track cache key)."""
        return f"r{self.rotation}:d{int(self.deinterlace)}" + (":hdr" if self.hdr == "keep" else "")

    def stored_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size to scale a stored picture to, so that once turned it is `size`."""
        return (size[1], size[0]) if self.rotation in (90, 270) else size


def flatten(bgra: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """BGR of a BGRA picture laid over a plain background."""
    alpha = bgra[..., 3:4].astype(np.uint16)
    bg = np.array(background, np.uint16)
    out = (bgra[..., :3].astype(np.uint16) * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def to_bgr(frame: av.VideoFrame, size: tuple[int, int], view: View | None = None) -> np.ndarray:
    """A decoded frame as an (h, w, 3) uint8 BGR array of exactly `size`, shown as `view` says:
    converted by its own matrix and range, HLG and PQ tone-mapped to SDR BT.709."""
    view = view or View()
    w, h = view.stored_size(size)
    colour = Colour.of_frame(frame)
    tone = colour.hdr and view.hdr != "keep"
    fmt = "rgb48le" if tone else "bgra" if view.alpha else "bgr24"
    if (frame.width - frame.width % 2, frame.height - frame.height % 2) == (w, h):
        arr = frame.reformat(format=fmt, **colour.decode_args()).to_ndarray()
        if arr.shape[:2] != (h, w):
            arr = arr[:h, :w]
    else:
        arr = frame.reformat(
            width=w, height=h, format=fmt, interpolation="AREA", **colour.decode_args()
        ).to_ndarray()
    if tone:
        arr = tone_map(arr, colour.transfer)
    elif view.alpha:
        arr = flatten(arr, view.background)
    if view.rotation:
        arr = np.rot90(arr, -view.rotation // 90)
    return np.ascontiguousarray(arr)


class Deinterlacer:
    """bwdif on the frames flagged interlaced, one picture out per frame in."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.graph = av.filter.Graph()
        src = self.graph.add_buffer(template=stream)
        bwdif = self.graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
        sink = self.graph.add("buffersink")
        src.link_to(bwdif)
        bwdif.link_to(sink)
        self.graph.configure()

    def __call__(self, frames: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        for frame in [*frames, None]:
            self.graph.push(frame)
            while True:
                try:
                    yield self.graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    break


def timed_frames(
    c: av.container.InputContainer, view: View, src_fps: float
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds from the first picture, frame) in presentation order: the stream's own
    timestamps (variable frame rate phone video), else the frame's index at `src_fps`."""
    stream = c.streams.video[0]
    stream.thread_type = "AUTO"
    frames: Iterator[av.VideoFrame] = c.decode(stream)
    if view.deinterlace:
        frames = Deinterlacer(stream)(frames)
    t0, last = None, -1.0
    for k, frame in enumerate(frames):
        t = frame.time if frame.time is not None else k / src_fps
        t0 = t if t0 is None else t0
        t = t - t0
        if t <= last:  # a repeated or out-of-order timestamp: count it as the next frame
            t = last + 1 / src_fps
        last = t
        yield t, frame


def resample(
    timed: Iterator[tuple[float, T]], fps: float, src_fps: float
) -> Iterator[tuple[T, int]]:
    """(picture, how many output frames show it) at `fps`: output frame j, at j/fps seconds,
    shows the last picture whose time is at or before that. Pictures no output frame shows
    (a faster source) are left out; for a constant rate this is resampled_range's result."""
    j, pending, last, step = 0, None, 0.0, 1 / src_fps
    for t, item in timed:
        start = math.ceil(t * fps - EPS)
        if pending is not None:
            step = t - last  # the last picture lasts as long as the one before it
            if start > j:
                yield pending, start - j
                j = start
        pending, last = item, t
    if pending is not None:
        end = math.ceil((last + step) * fps - EPS)
        if end > j:
            yield pending, end - j


class TemplateFrames:
    """Iterates (template frame index, picture) for each of `n_out` output frames.

    The index is that of the template resampled to the output rate, so that
    per-template data (the face track) can be looked up for looped frames.
    """

    def __init__(
        self,
        path: Path,
        info: VisualInfo,
        size: tuple[int, int],
        fps: float,
        n_out: int,
        cache_path: Path,
        max_cache_bytes: int,
        view: View | None = None,
        store: FrameStore | None = None,
        store_key: str = "",
        note: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.path, self.info, self.size, self.fps, self.n_out = path, info, size, fps, n_out
        self.view = view or View.of(info)
        self.cache_path = cache_path
        self.max_cache_bytes = max_cache_bytes
        self.frame_bytes = size[0] * size[1] * 3
        self.source_frames = 0  # frames of the template at the output rate, once known
        self.store, self.store_key, self.note = store, store_key, note  # the template cache
        self.from_store = False  # the frames were read back from the template cache
        self.pool = FramePool((size[1], size[0], 3))  # the buffers of this job's frames
        self.disk = FramesOnDisk(self.pool)  # frames that can be read again by index

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.info.kind == "image":
            arr = self._still()
            for _ in range(self.n_out):
                yield 0, arr
        else:
            yield from self._video()

    def _still(self) -> np.ndarray:
        with av.open(str(self.path)) as c:
            frame = next(c.decode(video=0))
        arr = to_bgr(frame, self.size, self.view)
        arr.flags.writeable = False
        self.source_frames = 1
        return arr

    def template_frames(self, limit: int) -> Iterator[np.ndarray]:
        """The template's own frames at the output size and rate, at most `limit` of them."""
        if self.info.kind == "image":
            yield self._still()
            return
        for i, arr in enumerate(self._decode()):
            if i >= limit:
                return
            yield arr

    def _decode(self) -> Iterator[np.ndarray]:
        """Template frames resampled to the output rate by their timestamps, first to last."""
        src_fps = self.info.fps or self.fps
        with av.open(str(self.path)) as c:
            for frame, slots in resample(timed_frames(c, self.view, src_fps), self.fps, src_fps):
                arr = self.pool.copy_of(to_bgr(frame, self.size, self.view))
                arr.flags.writeable = False
                for _ in range(slots):
                    yield arr

    def _check_cache_size(self, frames: int) -> None:
        if frames * self.frame_bytes > self.max_cache_bytes:
            raise RenderError(
                f"the template is too long to loop at this size: {frames} frames of "
                f"{self.size[0]}x{self.size[1]} need {frames * self.frame_bytes >> 20} MiB of loop cache",
                code="template_too_long",
                stage="rendering",
                hint="trim the template, lower output.height, or raise [limits] max_loop_cache_bytes",
            )

    def _video(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.store is not None:
            entry = self.store.find(self.store_key, self.n_out, self.frame_bytes)
            if entry is not None:
                self.note(
                    f"template frames: cache hit {self.store_key[:12]} ({entry.frames} frames"
                    f"{'' if entry.complete else ', part of the template'}), decoding skipped"
                )
                self.from_store = True
                with open(entry.path, "rb") as f:
                    yield from self._replay(f.fileno(), entry.frames, entry.complete, 0)
                return
        yield from self._decode_once()

    def _decode_once(self) -> Iterator[tuple[int, np.ndarray]]:
        """The first pass from the decoder, kept in a raw file where it is needed to loop or a
        later job can use it; later passes read back from that file."""
        estimate, loops, keep = self._cache_plan()
        path = self.store.temp_path(self.store_key) if self.store and keep else self.cache_path
        i, ended, overflow = 0, False, False
        backed = keep or loops  # frames written go on in the file self.disk reads back
        with open(path, "w+b") if backed else open(os.devnull, "wb") as cache:
            if backed:
                self.disk.adopt(cache.fileno())
            try:
                for arr in self._decode():
                    if loops and not keep and not overflow and not estimate:
                        # a container that does not say how long it is: the loop cache is
                        # bounded all the same (max_loop_cache_bytes)
                        if (i + 1) * self.frame_bytes > self.max_cache_bytes:
                            overflow, backed, cache = True, False, _given_up(cache, path)
                    if (keep or loops) and not overflow:
                        try:
                            cache.write(arr.data)
                        except OSError as e:  # the state disk filled up: this job goes on
                            if not keep:
                                raise
                            cache, path = self._stop_keeping(cache, path, i, loops, e)
                            keep, backed = False, loops
                            if loops:  # the frames so far were copied to the loop cache
                                self.disk.move_to(cache.fileno())
                                cache.write(arr.data)
                        if backed:
                            self.disk.written(i + 1)
                    yield i, arr
                    i += 1
                    if i >= self.n_out:
                        break
                else:
                    ended = True
                if i == 0:
                    raise RenderError(
                        "the template has no frame to show",
                        code="template_invalid",
                        stage="rendering",
                        hint="check that the template plays",
                    )
                cache.flush()
                if keep:
                    self._keep(path, i, complete=ended)
                if i >= self.n_out:
                    return
                self.source_frames = i
                if overflow:  # it must loop, and its frames did not fit
                    self._check_cache_size(i)
                if not (keep or loops):  # the container overstated its length: cache it now
                    cache.close()
                    cache, path = self._cache_all(i), self.cache_path
                yield from self._replay(cache.fileno(), i, True, i)
            finally:
                cache.close()
                path.unlink(missing_ok=True)  # a kept file was renamed away already

    def _cache_plan(self) -> tuple[int | None, bool, bool]:
        """(frames the container says it has at the output rate, whether the job loops it,
        whether the template cache keeps its frames)."""
        estimate = None
        if self.info.frames and self.info.fps:
            estimate = math.ceil(self.info.frames * self.fps / self.info.fps)
        loops = estimate is None or estimate < self.n_out + 2
        if loops and estimate:
            self._check_cache_size(estimate)
        keep = self.store is not None and self.store.room_for(
            min(estimate or self.n_out, self.n_out) * self.frame_bytes
        )
        return estimate, loops, keep

    def _cache_all(self, frames: int) -> BinaryIO:
        """The loop cache written from a second decode (the caller closes it)."""
        self._check_cache_size(frames)
        cache = open(self.cache_path, "w+b")  # noqa: SIM115 - the caller closes it
        for arr in self._decode():
            cache.write(arr.data)
        cache.flush()
        return cache

    def _stop_keeping(
        self, cache: BinaryIO, temp: Path, frames: int, loops: bool, why: OSError
    ) -> tuple[BinaryIO, Path]:
        """A write to the template cache failed: drop that file; where the job still needs its
        frames to loop, the ones written so far go on in the job's own loop cache."""
        self.note(f"template frames: not cached ({why}); this job goes on without it")
        out: BinaryIO = open(self.cache_path if loops else os.devnull, "w+b")  # noqa: SIM115
        try:
            done, nbytes = 0, frames * self.frame_bytes  # whole frames, written before the failure
            while loops and done < nbytes:
                chunk = os.pread(cache.fileno(), min(nbytes - done, 1 << 24), done)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
        finally:
            with contextlib.suppress(OSError):  # its unwritten rest cannot be flushed
                cache.close()
            temp.unlink(missing_ok=True)
        return out, self.cache_path

    def _keep(self, temp: Path, frames: int, *, complete: bool) -> None:
        """Hand the decoded frames to the template cache (the open file stays readable)."""
        assert self.store is not None
        try:
            if self.store.commit(self.store_key, temp, frames, complete=complete):
                self.note(
                    f"template frames: cached {self.store_key[:12]} ({frames} frames, "
                    f"{frames * self.frame_bytes >> 20} MiB)"
                )
        except OSError as e:  # a full or read-only state disk costs the next job a decode
            self.note(f"template frames: not cached ({e}); the next job decodes again")

    def _replay(
        self, fd: int, frames: int, complete: bool, start: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Output frames from `start` on, read back from a raw file of `frames` frames
        (played back and forth where it is the whole template)."""
        if complete:
            self.source_frames = frames
        self.disk.adopt(fd, frames)
        for j in range(start, self.n_out):
            idx = pingpong_index(j, frames) if complete else j
            buf = self.pool.take()
            got = os.preadv(fd, [buf], idx * self.frame_bytes)
            if got != self.frame_bytes:
                raise RenderError(
                    f"frame cache read {got} of {self.frame_bytes} bytes at frame {idx}",
                    code="io_error",
                    stage="rendering",
                    hint="check the disk of the state folder and the inbox",
                )
            buf.flags.writeable = False
            yield idx, buf


def _given_up(cache: BinaryIO, path: Path) -> BinaryIO:
    """The loop cache closed and removed; what the frames are written to from then on."""
    cache.close()
    path.unlink(missing_ok=True)
    return open(os.devnull, "wb")  # noqa: SIM115 - the caller closes it
