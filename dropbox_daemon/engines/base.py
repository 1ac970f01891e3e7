"""The engine interface: frames of the template in, frames of the result out.

An engine is created and load()ed once per worker process and then renders
many jobs; render() must stream (take and give one frame at a time).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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


class Engine(ABC):
    name: str = "base"
    device: str = "cpu"

    def load(self) -> None:  # noqa: B027 - engines without models have nothing to load
        """Load models once, before the first job (the worker stays warm)."""

    @abstractmethod
    def render(self, frames: Iterator[np.ndarray], ctx: RenderContext) -> Iterator[np.ndarray]:
        """Yield one output frame (BGR uint8, ctx.size) for every template frame given."""
