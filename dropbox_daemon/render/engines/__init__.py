"""Lip-sync engines behind one interface (base.Engine); see DESIGN.md §4."""

from __future__ import annotations

from dropbox_daemon.config import ENGINE_NAMES, Config

KNOWN = ENGINE_NAMES
AVAILABLE = ("passthrough", "preview", "http", "wav2lip")


def resolve(requested: str, inbox_default: str, cfg: Config) -> str:
    """The engine a job runs on: the manifest's, else the inbox's, with `auto` decided here."""
    name = requested if requested != "auto" else inbox_default
    if name == "auto":
        name = "wav2lip" if cfg.models.wav2lip and "wav2lip" in AVAILABLE else "preview"
    return name


def preload(cfg: Config) -> list[str]:
    """Engines a worker loads at start, before it says ready: those with models configured."""
    return ["wav2lip"] if cfg.models.wav2lip else []


def create(name: str, cfg: Config):  # noqa: ANN201 - returns an Engine
    """A new engine instance by name; EngineError for one this build does not have."""
    from dropbox_daemon.errors import EngineError

    if name == "passthrough":
        from dropbox_daemon.render.engines.passthrough import PassthroughEngine

        return PassthroughEngine()
    if name == "wav2lip":
        from dropbox_daemon.render.engines.wav2lip import Wav2LipEngine

        m = cfg.models
        return Wav2LipEngine(
            m.wav2lip,
            precision=m.precision,
            batch=m.batch_size,
            cuda_batch=m.cuda_batch_size,
            host_bytes=m.batch_host_bytes,
            cpu_streams=m.cpu_streams,
        )
    if name == "http":
        from dropbox_daemon.render.engines.http import HttpEngine

        return HttpEngine(cfg.engines.http)
    if name == "preview":
        from dropbox_daemon.render.engines.preview import PreviewEngine

        return PreviewEngine()
    raise EngineError(
        f"engine {name!r} is not available in this version (available: {', '.join(AVAILABLE)})",
        code="engine_unavailable",
        stage="preparing",
        hint='set engine = "passthrough" in the manifest, or upgrade the daemon',
    )
