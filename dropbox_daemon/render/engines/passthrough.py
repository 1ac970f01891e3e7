"""passthrough: the template looped to the audio, no lip motion (dubbing, tests)."""

from __future__ import annotations

from collections.abc import Iterator

from dropbox_daemon.render.engines.base import (
    AudioFeatures,
    Engine,
    FaceFrame,
    Patch,
    RenderContext,
)


class PassthroughEngine(Engine):
    name = "passthrough"
    needs_faces = False

    def render(
        self, frames: Iterator[FaceFrame], audio: AudioFeatures, ctx: RenderContext
    ) -> Iterator[Patch | None]:
        for _ in frames:
            yield None
