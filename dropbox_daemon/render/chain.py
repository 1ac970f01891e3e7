"""Step 4: the render chain. Template decoding, face detection (when the track is not cached),
the engine, compositing and the encoder each run in a thread of their own, handing frames
over through small queues (threads.py), so the steps overlap, memory stays flat, and the
encoder is never starved by a stage that could have run ahead. Progress is reported every
PROGRESS_EVERY seconds; a cancel stops it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropbox_daemon.errors import JobCancelled, MediaError
from dropbox_daemon.render import compose
from dropbox_daemon.render.engines.base import (
    AudioFeatures,
    Engine,
    FaceFrame,
    Patch,
    RenderContext,
)
from dropbox_daemon.render.inputs import Emit
from dropbox_daemon.render.media.encode import EncodeCommand, Encoder
from dropbox_daemon.render.media.frames import TemplateFrames
from dropbox_daemon.render.threads import Meter, Threaded
from dropbox_daemon.render.track import FaceBoxes

PROGRESS_EVERY = 0.5  # seconds between progress messages
QUEUE_FRAMES = 6  # frames buffered between two stages


@dataclass
class Rendered:
    """What the chain made: the frames written, a poster, and where the time went."""

    frames: int
    poster: np.ndarray | None
    render_seconds: float  # from the first frame asked for to the last one written
    close_started: float  # monotonic time the encoder was told the frames had ended
    busy: dict[str, float]  # seconds each stage worked (not waited)


class StageChain:
    """decode -> engine -> compose -> encode for one job."""

    def __init__(
        self,
        source: TemplateFrames,
        boxes: FaceBoxes | None,
        engine: Engine,
        features: AudioFeatures,
        ctx: RenderContext,
        overlays: list[compose.Overlay],
    ) -> None:
        self.source, self.boxes, self.engine = source, boxes, engine
        self.features, self.ctx, self.overlays = features, ctx, overlays
        self.meter = Meter()
        # frames the engine took, not yet answered: each one's picture, or its template index
        # where the picture can be read back from disk (it is not held meanwhile)
        self.in_flight: deque[np.ndarray | int] = deque()

    def boxed(self, frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[FaceFrame]:
        """Template frames at the output size and rate, each with its face box (None when the
        engine needs no faces)."""
        if self.boxes is None:
            return (FaceFrame(i, frame, None, src) for i, (src, frame) in enumerate(frames))
        return self.boxes.over(frames)

    def generated(
        self, frames: Iterator[FaceFrame]
    ) -> Iterator[tuple[np.ndarray | int, Patch | None]]:
        """The engine's patch for each frame, paired with the frame it was made for (or the
        template index to read it back from)."""
        disk = self.source.disk

        def feed() -> Iterator[FaceFrame]:
            for ff in self.meter.waiting("engine", frames):
                self.in_flight.append(ff.src if disk.has(ff.src) else ff.frame)
                yield ff

        for patch in self.meter.timed(
            "engine", self.engine.render(feed(), self.features, self.ctx)
        ):
            yield self.in_flight.popleft(), patch

    def composed(
        self, patched: Iterator[tuple[np.ndarray | int, Patch | None]]
    ) -> Iterator[np.ndarray]:
        """Each frame with its patch blended in and the overlays drawn on it."""
        pool = self.source.pool
        for held, patch in patched:
            t = time.perf_counter()
            if isinstance(held, int):  # read back into a buffer of its own: blended in place
                frame = self.source.disk.read(held)
                if patch is not None:
                    compose.blend_into(frame, patch)
            else:
                frame = compose.blend(held, patch, pool) if patch is not None else held
            if self.overlays:
                if not frame.flags.writeable:
                    frame = pool.copy_of(frame)
                for ov in self.overlays:
                    ov.apply(frame)
            self.meter.add("compose", time.perf_counter() - t)
            yield frame

    def run(
        self, command: EncodeCommand, ffmpeg_log: Path, emit: Emit, cancel: threading.Event
    ) -> Rendered:
        """Run the chain into one ffmpeg encode; on any error every stage is stopped, the
        encoder killed, and the partial file removed by the caller."""
        stages = [Threaded(self.meter.timed("decode", iter(self.source)), "decode", QUEUE_FRAMES)]
        if self.boxes is not None and self.boxes.streaming:  # detection in a stage of its own
            stages.append(Threaded(self.boxed(iter(stages[-1])), "faces", QUEUE_FRAMES))
            frames: Iterator[FaceFrame] = iter(stages[-1])
        else:
            frames = self.boxed(iter(stages[-1]))
        stages.append(Threaded(self.generated(frames), "engine", QUEUE_FRAMES))
        stages.append(Threaded(self.composed(iter(stages[-1])), "compose", QUEUE_FRAMES))
        encoder = Encoder(
            command.args,
            ffmpeg_log,
            command.fallback,
            on_fallback=lambda why: emit(
                {
                    "type": "log",
                    "message": f"video encoder h264_nvenc did not open ({why}); this job is "
                    "encoded with libx264",
                }
            ),
            packed=command.packed,
        )
        try:
            rendered = self._write(iter(stages[-1]), encoder, emit, cancel)
            rendered.close_started = time.monotonic()
            emit({"type": "stage", "stage": "encoding"})
            encoder.close()
            self.meter.add("encode", time.monotonic() - rendered.close_started)
        except BaseException:
            for st in reversed(stages):
                st.close()
            encoder.kill()
            raise
        finally:
            self.source.disk.release()
            self.source.pool.close()
        if self.boxes is not None and self.boxes.streaming:
            self.meter.add("faces", self.boxes.seconds)
        rendered.busy = {f"busy_{k}": round(v, 4) for k, v in self.meter.busy.items()}
        if rendered.frames != self.ctx.n_frames:
            raise MediaError(
                f"the engine produced {rendered.frames} frames, {self.ctx.n_frames} were needed",
                code="frame_count",
                stage="rendering",
                hint="this is a bug in the engine; report it",
            )
        return rendered

    def _write(
        self, frames: Iterator[np.ndarray], encoder: Encoder, emit: Emit, cancel: threading.Event
    ) -> Rendered:
        """Feed the encoder; keep the middle frame as the poster; report progress."""
        n, t1 = self.ctx.n_frames, time.monotonic()
        done, last, poster = 0, t1, None
        for frame in frames:
            if cancel.is_set():
                raise JobCancelled("cancelled by an operator while rendering", stage="rendering")
            t = time.perf_counter()
            encoder.write(frame)
            self.meter.add("encode", time.perf_counter() - t)
            if done == n // 2:
                poster = frame.copy()
            done += 1
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                fps = done / max(now - t1, 1e-6)
                emit({"type": "progress", "progress": done / n * 0.97, "frames": done, "fps": fps})
        return Rendered(done, poster, time.monotonic() - t1, 0.0, {})
