"""The config's sections about talking over the network: callbacks, the http engine, the
status page's listener, and the retry policy they share; and the strict base of every
section (an unknown key is an error: a typo must not be silently ignored)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dropbox_daemon.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RetryConfig(Strict):
    """Exponential back-off with jitter, shared by callbacks and the http engine."""

    initial_seconds: float = Field(default=1.0, gt=0)
    max_seconds: float = Field(default=300.0, gt=0)  # one wait never longer than this
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(
        default=0.2, ge=0, le=1
    )  # +- share of each wait, so retries do not stampede


class CallbacksConfig(Strict):
    """POSTs of the task record to a manifest's callback_url at the end of a job."""

    allow_hosts: list[str] = Field(default_factory=list)  # "hooks.example.com", "*.example.com"
    allow_http_hosts: list[str] = Field(
        default_factory=list
    )  # hosts that may be called over plain http
    secret: str | None = None  # HMAC-SHA256 key; X-Dropbox-Signature is sent when set
    secret_file: Path | None = None  # or read it from this file (keeps it out of config.toml)
    timeout_seconds: float = Field(default=10.0, gt=0)
    deadline_seconds: float = Field(default=3600.0, gt=0)  # give up this long after the job ended
    retry: RetryConfig = Field(default_factory=RetryConfig)

    def signing_key(self) -> bytes | None:
        if self.secret_file is not None:
            return self.secret_file.read_text().strip().encode()
        return self.secret.encode() if self.secret else None


class HttpEngineConfig(Strict):
    """An existing lip-sync HTTP service (HeyGem-style /human/generate, or submit/poll)."""

    base_url: str | None = None  # e.g. "http://127.0.0.1:8383"
    mode: Literal["sync", "async"] = "sync"
    generate_path: str = "/human/generate"  # sync: POST {audio_path, video_path, save_path}
    submit_path: str = "/submit"  # async: POST -> {task_id}
    status_path: str = "/status/{task_id}"  # async: GET -> {status, save_path}
    # [[local prefix, service prefix], ...]: how the service sees this host's files
    path_map: list[tuple[str, str]] = Field(default_factory=list)
    request_timeout_seconds: float = Field(
        default=600.0, gt=0
    )  # one HTTP request (sync calls render inside it)
    job_timeout_seconds: float = Field(default=3600.0, gt=0)  # the whole remote job
    poll_seconds: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)  # tries of one request on 429/5xx/connection errors
    retry: RetryConfig = Field(default_factory=RetryConfig)


class EnginesConfig(Strict):
    http: HttpEngineConfig = Field(default_factory=HttpEngineConfig)


class HttpConfig(Strict):
    """The optional status endpoint and page (off unless listen is set)."""

    listen: str = ""  # e.g. "127.0.0.1:8765"; empty: no listener
    token: str | None = None  # bearer token for everything but /health
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v and not re.match(r"^[^\s:]+:\d{1,5}$", v):
            raise ValueError('must be "host:port", e.g. "127.0.0.1:8765"')
        return v

    def bearer(self) -> str | None:
        """The token, or None for no authentication; ConfigError where token_file is set
        but empty or unreadable (silently serving without a token is what it would mean)."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as e:
                raise ConfigError(
                    f"[http] token_file {self.token_file} cannot be read: {e.strerror}",
                    hint="create it with the token (chmod 600), or remove token_file",
                ) from e
            if not token:
                raise ConfigError(
                    f"[http] token_file {self.token_file} is empty: the status endpoint would "
                    "run without authentication",
                    hint="write the token into it, or remove token_file to run without one",
                )
            return token
        if self.token is not None and not self.token.strip():
            raise ConfigError(
                "[http] token is empty", hint="set a token, or remove the key to run without one"
            )
        return self.token
