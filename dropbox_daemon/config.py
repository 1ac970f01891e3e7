"""config.toml as pydantic models; load() names the file and key of any error.

Defaults live here; config.toml at the repository root documents every key.
Relative paths are resolved against the folder of the config file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from dropbox_daemon import redact
from dropbox_daemon.config_net import (
    CallbacksConfig,
    EnginesConfig,
    HttpConfig,
    Strict,
)
from dropbox_daemon.config_paths import check_layout
from dropbox_daemon.errors import ConfigError

# the engines a manifest or an inbox may name; `auto` is decided per job (engines.resolve)
EngineName = Literal["auto", "wav2lip", "preview", "passthrough", "http"]
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)

ENV_CONFIG = "DROPBOX_DAEMON_CONFIG"
DEFAULT_CONFIG_NAME = "config.toml"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SMOKE_INBOX = "smoke"  # the inbox `dropbox-daemon smoke` drops into


class OutputDefaults(Strict):
    """Defaults for a manifest's [output] table (inbox first, then these)."""

    name: str = "result.mp4"
    height: int | None = Field(default=None, ge=16, le=4320)
    fps: float | None = Field(default=None, gt=0, le=120)
    crf: int = Field(default=20, ge=0, le=51)
    ai_label: bool = True
    preset: str = "veryfast"  # libx264 preset: speed against file size
    hdr: Literal["tonemap", "keep"] = "tonemap"  # an HLG/PQ template: SDR BT.709, or kept HDR


class InboxConfig(Strict):
    """One watched inbox folder."""

    name: str = Field(pattern=NAME_PATTERN)
    path: Path
    # auto: events, or poll on network file systems; rescan: no observer at all,
    # only the periodic rescan (for shares where even polling stat()s cost too much)
    watch: Literal["auto", "events", "poll", "rescan"] = "auto"
    settle_seconds: float = Field(default=3.0, ge=0, le=3600)
    # results, claim folders and records kept this long; default 7, or 3 for the smoke inbox
    keep_days: float = Field(default=None, gt=0, validate_default=False)  # type: ignore[assignment]
    engine: EngineName = "auto"
    priority: int = Field(default=0, ge=-10, le=10)
    output: OutputDefaults = Field(default_factory=OutputDefaults)

    @model_validator(mode="after")
    def _default_keep(self) -> InboxConfig:
        if self.keep_days is None:
            self.keep_days = 3.0 if self.name == SMOKE_INBOX else 7.0
        return self


class LogConfig(Strict):
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    file: bool = True  # JSON lines in <state_dir>/logs/daemon.jsonl
    rotation: str = "50 MB"
    retention: int = Field(default=10, ge=1)  # rotated files kept


class DaemonConfig(Strict):
    state_dir: Path = Path(".state")
    outbox: Path = Path("outbox")
    host: str = Field(default_factory=socket.gethostname)
    # This daemon's name among every daemon sharing an inbox or a database. Empty: the
    # host name plus a stable suffix from the state folder (unique without configuration).
    instance: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")
    # Valid drops claimed ahead of the worker (beyond the job it runs); 0: only when idle.
    prefetch: int = Field(default=1, ge=0, le=64)
    rescan_seconds: float = Field(default=5.0, gt=0, le=3600)
    loop_seconds: float = Field(default=0.1, gt=0, le=5)  # main loop wake-up
    max_attempts: int = Field(default=3, ge=1, le=100)
    job_timeout_seconds: float = Field(default=3600.0, gt=0)
    hang_seconds: float = Field(default=120.0, gt=0)
    stop_timeout_seconds: float = Field(default=60.0, ge=0)
    stale_claim_seconds: float = Field(default=120.0, ge=2)
    log: LogConfig = Field(default_factory=LogConfig)


class StoreConfig(Strict):
    """Where jobs, leases and events live: SQLite in state_dir (one daemon) or PostgreSQL (a farm)."""

    url: str = ""  # "" : SQLite; "postgresql://user@host:5432/db": one database for the farm
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Farm mode. A read that gets no answer within this is given up (its connection shut);
    # a transaction gets twice this. Health says "store: unreachable" after about this long.
    call_timeout_seconds: float = Field(default=5.0, ge=1, le=300)
    # Connections this daemon holds at most (one pool shared by all its threads); the
    # server needs daemons x pool_size plus its reserved slots (docs/operations.md).
    pool_size: int = Field(default=3, ge=1, le=50)
    # The password on the file's first line (mode 0600), so the URL need not carry it;
    # libpq's PGPASSFILE / ~/.pgpass work too.
    password_file: Path | None = None
    # TLS, as libpq takes them (they override the URL's): verify-full checks the server's
    # certificate against sslrootcert and its name against the URL's host.
    sslmode: Literal["", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = ""
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.match(r"^postgres(ql)?://", v):
            raise ValueError('must be empty (SQLite) or "postgresql://user@host:port/dbname"')
        return v

    def shown_url(self) -> str:
        """The URL as logs, hashes and answers may show it: its password left out."""
        return redact.url(self.url)


class LimitsConfig(Strict):
    """Ceilings on untrusted input."""

    max_manifest_bytes: int = Field(default=256 * 1024, gt=0)
    max_audio_bytes: int = Field(default=1 << 30, gt=0)
    max_template_bytes: int = Field(default=4 << 30, gt=0)
    max_audio_seconds: float = Field(default=3600.0, gt=0)
    max_template_seconds: float = Field(default=600.0, gt=0)
    max_pixels: int = Field(default=3840 * 2160, gt=0)  # per frame, template and output
    # A photo may be larger (phones take 12-50 megapixels): it is scaled down to fit max_pixels.
    # Above this it is refused unread (a decompression bomb declares a huge size in a tiny file).
    max_image_pixels: int = Field(default=120_000_000, gt=0)
    max_fps: float = Field(default=120.0, gt=0)
    # The loop cache holds a template's decoded frames so it can play backwards.
    max_loop_cache_bytes: int = Field(default=16 << 30, gt=0)


class MediaConfig(Strict):
    ffmpeg: str | None = None  # None: the binary shipped by imageio-ffmpeg
    default_fps: float = Field(default=25.0, gt=0, le=120)  # for image templates
    audio_bitrate: str = "192k"
    encode_threads: int = Field(default=0, ge=0)  # 0: cpus.encode_threads decides
    # auto: h264_nvenc where an NVIDIA GPU and a test encode work, else libx264
    video_encoder: Literal["auto", "libx264", "h264_nvenc"] = "auto"
    # what shows through the transparent pixels of a template (RGBA PNG, WebP, GIF, ProRes 4444)
    background: str = Field(default="#000000", pattern=r"^#[0-9a-fA-F]{6}$")
    # The template prep cache: decoded template frames kept under state_dir/templates so that
    # the next job on the same template skips decoding; least recently used go first; 0: off.
    template_cache_bytes: int = Field(default=4 << 30, ge=0)


class FacesConfig(Strict):
    """Face detection and tracking on templates."""

    detector: Literal["haar"] = "haar"
    detect_width: int = Field(
        default=480, ge=64, le=4096
    )  # frames are downscaled to this for detection
    min_share: float = Field(
        default=0.2, ge=0, le=1
    )  # below this share of frames with a face: no_face
    max_gap: int = Field(default=12, ge=0)  # missed frames carried over between two detections
    smooth: int = Field(default=5, ge=1, le=51)  # moving-average window over box coordinates
    pad_bottom: float = Field(default=0.15, ge=0, le=1)  # grow boxes down to take in the chin
    # detect on one frame in this many, the boxes between interpolated (every frame while the
    # face is lost, and at scene cuts); 1: every frame
    detect_every: int = Field(default=3, ge=1, le=12)


class OverlayConfig(Strict):
    """The visible AI-generated label and the watermark placement."""

    label_text: str = Field(default="AI-generated", min_length=1, max_length=80)
    watermark_width: float = Field(default=0.15, gt=0, le=1)  # share of the frame's width
    watermark_opacity: float = Field(default=0.8, ge=0, le=1)
    margin: float = Field(default=0.02, ge=0, le=0.25)  # share of the frame's width
    metadata_tag: str = "AI-generated video (lip-synced by dropbox-daemon)"


class HealthConfig(Strict):
    """The heartbeat: health.json, metrics.prom, systemd's watchdog."""

    heartbeat_seconds: float = Field(default=10.0, gt=0, le=3600)
    loop_stall_seconds: float = Field(default=60.0, gt=0)  # a pass blocked this long: failing
    disk_warn_bytes: int = Field(default=5 << 30, ge=0)  # under this free: degraded
    disk_fail_bytes: int = Field(default=1 << 30, ge=0)  # under this free: no new jobs


class RetentionConfig(Strict):
    every_minutes: float = Field(default=60.0, gt=0)  # how often expired jobs are removed
    backup_every_hours: float = Field(default=24.0, gt=0)  # online backup of the database
    backups_keep: int = Field(default=7, ge=1)


class ModelsConfig(Strict):
    wav2lip: Path | None = (
        None  # wav2lip.pth or wav2lip_gan.pth as published; nothing is downloaded
    )
    # auto: fp16 on CUDA, bf16 where the CPU has AVX512-BF16/AMX, else fp32 (the worker logs the choice)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # frames per model call on the CPU; 0: CPU_BATCH by precision (engines/wav2lip.py)
    batch_size: int = Field(default=0, ge=0, le=1024)
    # model calls running at once on the CPU, each on share / n threads; 0: 2 from 2 cores up
    cpu_streams: int = Field(default=0, ge=0, le=64)
    cuda_batch_size: int = Field(default=128, ge=1, le=4096)  # upper bound; fitted to free memory
    # host memory the full frames of the batches in flight may take (each waits for its
    # patch): the batch is cut to fit at the job's frame size (1080p: 6 MB a frame)
    batch_host_bytes: int = Field(default=1 << 30, ge=1 << 24)


class Config(Strict):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    inbox: list[InboxConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    engines: EnginesConfig = Field(default_factory=EnginesConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    overlay: OverlayConfig = Field(default_factory=OverlayConfig)
    # Where the file was read from; not a key of the file.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("inbox")
    @classmethod
    def _unique_inboxes(cls, inboxes: list[InboxConfig]) -> list[InboxConfig]:
        names = [i.name for i in inboxes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"inbox names must be unique, repeated: {', '.join(dupes)}")
        return inboxes

    @model_validator(mode="after")
    def _need_an_inbox(self) -> Config:
        if not self.inbox:
            raise ValueError("at least one [[inbox]] is needed")
        return self

    def inbox_by_name(self, name: str) -> InboxConfig:
        """The inbox called `name`; ConfigError naming the known ones otherwise."""
        for inbox in self.inbox:
            if inbox.name == name:
                return inbox
        known = ", ".join(i.name for i in self.inbox)
        raise ConfigError(f"no inbox named {name!r} (configured: {known})", hint="check --inbox")

    @property
    def instance_id(self) -> str:
        """[daemon] instance, or the host name plus a stable suffix of the state folder's path."""
        if self.daemon.instance:
            return self.daemon.instance
        return default_instance_id(self.daemon.host, self.daemon.state_dir)

    @property
    def daemons_root(self) -> Path:
        """outbox/_daemon: one folder per instance."""
        return self.daemon.outbox / "_daemon"

    @property
    def daemon_dir(self) -> Path:
        """outbox/_daemon/<instance>: this daemon's health.json and metrics.prom."""
        return self.daemons_root / self.instance_id

    def config_hash(self) -> str:
        """A short hash of the effective config, recorded with every job."""
        # no secret goes into the hash: it is in every task.json, and a short hash of a short
        # token can be searched for; a change of secret is not a change of how jobs render
        data = self.model_dump(
            mode="json",
            exclude={"http": {"token"}, "callbacks": {"secret"}, "store": {"url"}},
        )
        data["store_url"] = self.store.shown_url()
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def default_instance_id(host: str, state_dir: Path) -> str:
    """`<host>-<6 hex>`: one per state folder, so daemons per GPU on one host differ by default."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip(".-_")[:40] or "host"
    suffix = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:6]
    return f"{safe}-{suffix}"


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def fix(p: Path) -> Path:
        p = p.expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    cfg.daemon.state_dir = fix(cfg.daemon.state_dir)
    cfg.daemon.outbox = fix(cfg.daemon.outbox)
    for inbox in cfg.inbox:
        inbox.path = fix(inbox.path)
    if cfg.models.wav2lip is not None:
        cfg.models.wav2lip = fix(cfg.models.wav2lip)
    if cfg.http.token_file is not None:
        cfg.http.token_file = fix(cfg.http.token_file)
    if cfg.callbacks.secret_file is not None:
        cfg.callbacks.secret_file = fix(cfg.callbacks.secret_file)
    return cfg


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in e["loc"]) or "(top)"
        got = e.get("input")
        if isinstance(got, str) and re.search(r"url|token|secret|password", key, re.I):
            got = redact.url(got) if "url" in key.lower() else redact.SECRET
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        lines.append(f"{source}: {key}: {msg}{got_s}")
    return "\n".join(lines)


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, then $DROPBOX_DAEMON_CONFIG, then ./config.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    return Path(DEFAULT_CONFIG_NAME)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config file; ConfigError names file, key and expectation."""
    source = find_config(path).expanduser()
    try:
        raw = source.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            f"{source}: config file not found",
            hint=f"pass --config PATH or set {ENV_CONFIG}; config.toml in the repo is a template",
        ) from e
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config: {e.strerror}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: not valid TOML: {e}", hint="fix the syntax") from e
    return from_dict(data, source=source)


# Environment variables that override one key each (systemd template units set them per GPU).
ENV_OVERRIDES = {
    "DROPBOX_DAEMON_STATE_DIR": ("daemon", "state_dir"),
    "DROPBOX_DAEMON_INSTANCE": ("daemon", "instance"),
    "DROPBOX_DAEMON_STORE_URL": ("store", "url"),
    # containers (Dockerfile, compose.yaml): the status page and the weights without a file
    "DROPBOX_DAEMON_HTTP_LISTEN": ("http", "listen"),
    "DROPBOX_DAEMON_HTTP_TOKEN_FILE": ("http", "token_file"),
    "DROPBOX_DAEMON_WAV2LIP": ("models", "wav2lip"),
}


def _with_env(data: dict, env: dict[str, str]) -> dict:
    """The file's mapping with the ENV_OVERRIDES found in `env` applied (file, then environment)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for var, (table, key) in ENV_OVERRIDES.items():
        if env.get(var):
            section = out.setdefault(table, {})
            if isinstance(section, dict):
                section[key] = env[var]
    return out


def from_dict(data: dict, *, source: Path, env: dict[str, str] | None = None) -> Config:
    """Validate a parsed config mapping read from `source`, with environment overrides."""
    data = _with_env(data, dict(os.environ) if env is None else env)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, str(source)), hint="see config.toml for every key") from e
    cfg.source = source.resolve()
    cfg = _resolve_paths(cfg, source.resolve().parent)
    inboxes = [(i.name, i.path) for i in cfg.inbox]
    check_layout(inboxes, cfg.daemon.outbox, cfg.daemon.state_dir, source)
    return cfg
