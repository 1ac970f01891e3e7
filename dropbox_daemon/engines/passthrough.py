"""passthrough: the template looped to the audio, no lip motion (dubbing, tests)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dropbox_daemon.engines.base import Engine, RenderContext


class PassthroughEngine(Engine):
    name = "passthrough"

    def render(self, frames: Iterator[np.ndarray], ctx: RenderContext) -> Iterator[np.ndarray]:
        yield from frames
