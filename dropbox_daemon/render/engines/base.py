"""The engine interface: face frames and audio features in, generated face patches out.

The pipeline does everything engines share (decoding, face tracking, blending,
watermark and label, encoding); an engine only turns each frame's face region
into a new one. An engine is created and load()ed once per worker process and
then renders many jobs; render() streams (one frame in, one patch out, in order).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dropbox_daemon.render.faces import Box
from dropbox_daemon.render.media import audio as audio_mod


@dataclass
class FaceFrame:
    """One output frame's template picture and where its face is (None: no face)."""

    index: int
    frame: np.ndarray  # (h, w, 3) BGR uint8, read-only
    box: Box | None
    src: int = -1  # the template frame it shows (where the chain can read it back), -1: unknown


@dataclass
class Patch:
    """A generated face region to blend into the frame at `box`; `mask` in 0..1 or None (feathered box)."""

    box: Box
    pixels: np.ndarray  # (y1 - y0, x1 - x0, 3) BGR uint8
    mask: np.ndarray | None = None  # (y1 - y0, x1 - x0) float32


@dataclass
class AudioFeatures:
    """The job's audio as engines want it; each feature computed on first use."""

    samples: np.ndarray  # float32 mono at audio.SAMPLE_RATE
    fps: float
    n_frames: int

    @cached_property
    def mel(self) -> np.ndarray:
        return audio_mod.melspectrogram(self.samples)

    def mel_window(self, frame: int) -> np.ndarray:
        return audio_mod.mel_window(self.mel, frame, self.fps)

    @cached_property
    def opening(self) -> np.ndarray:
        """0..1 mouth opening per output frame, from the loudness envelope."""
        rms = audio_mod.rms_envelope(self.samples, self.fps, self.n_frames)
        return audio_mod.mouth_opening(rms)


@dataclass
class RenderContext:
    """What an engine knows about the job it renders."""

    job_id: str
    audio_path: Path
    audio_duration: float
    fps: float
    n_frames: int
    size: tuple[int, int]  # (width, height) of the output
    work_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _msg: None
    trace_id: str = "-"
    cancel: threading.Event | None = None
    alive: Callable[[], None] = lambda: None  # "still working": the daemon's hang check


class Engine(ABC):
    name: str = "base"
    device: str = "cpu"
    needs_faces: bool = True  # False: the pipeline skips face tracking (passthrough)
    # its model runs on the CPU, on the cores the encoder would take: the encoder is then
    # given fewer threads (it only has to keep up with the model; cpus.encode_threads)
    model_on_cpu: bool = False

    def load(self) -> None:  # noqa: B027 - engines without models have nothing to load
        """Load models once, before the first job (the worker stays warm)."""

    def source_video(self, ctx: RenderContext, audio: Path, template: Path) -> Path | None:
        """An engine that renders elsewhere returns the finished video here (None: render() does it).

        The pipeline then takes that video's frames in place of the template's and
        still checks, labels and encodes them.
        """
        return None

    @abstractmethod
    def render(
        self, frames: Iterator[FaceFrame], audio: AudioFeatures, ctx: RenderContext
    ) -> Iterator[Patch | None]:
        """Yield one Patch (or None: leave the frame as it is) per FaceFrame, in order."""
