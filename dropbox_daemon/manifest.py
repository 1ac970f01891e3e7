"""The manifest v1 model and parse(path) -> Manifest, or RejectedDrop.

Every manifest is untrusted: size, encoding, syntax, fields, types and the
media paths it names are checked here, each failure with its own code and the
field it concerns, in words a person can act on.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dropbox_daemon import access
from dropbox_daemon.boundary import Refused, read_bounded
from dropbox_daemon.config import ENGINE_NAMES, EngineName, LimitsConfig
from dropbox_daemon.drop_paths import check_media_path
from dropbox_daemon.errors import RejectedDrop

# matched whole (fullmatch): `$` alone lets "victim\n" through, a second folder that lists as the first
JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
ANSWER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\.dup-[0-9]{1,6}")  # a duplicate's answer
OUTPUT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.mp4")
MANIFEST_SUFFIXES = (".json", ".toml")
JOB_FOLDER_MANIFESTS = ("job.json", "job.toml")
ENGINES = ENGINE_NAMES
MEDIA_FIELDS = ("audio", "template", "output.watermark")


def job_id_problem(value: str, *, answers: bool = False) -> str | None:
    """Why `value` cannot be a job id (None when it can); `answers`: the daemon's own
    `<id>.dup-<n>` answers to a repeated drop are ids too (in owner.json, say)."""
    if answers and ANSWER_ID_RE.fullmatch(value):
        return None
    if not JOB_ID_RE.fullmatch(value):
        return "must be 1-64 characters of A-Z a-z 0-9 . _ -"
    if value.startswith((".", "_")):
        return "must not start with '.' or '_' (reserved for hidden and daemon folders)"
    if ".dup-" in value:
        return "must not contain '.dup-' (reserved for duplicate answers)"
    return None


MAX_META_DEPTH = 32  # levels of [meta]: echoed into task.json and callbacks, so kept shallow


def nesting(value: Any, limit: int = MAX_META_DEPTH + 1) -> int:
    """How deeply lists and objects nest in `value` (counted up to `limit`), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth < limit:
                todo.extend((x, depth) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OutputOptions(_Strict):
    name: str | None = None
    height: int | None = Field(default=None, ge=16, le=4320)
    fps: float | None = Field(default=None, gt=0, le=120)
    crf: int | None = Field(default=None, ge=0, le=51)
    watermark: str | None = None
    ai_label: bool | None = None
    hdr: Literal["tonemap", "keep"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not OUTPUT_NAME_RE.fullmatch(v):
            raise ValueError("must be a plain file name ending in .mp4, e.g. result.mp4")
        return v


class Manifest(_Strict):
    version: Literal[1] = 1
    job_id: str | None = None
    audio: str
    template: str
    engine: EngineName = "auto"
    priority: int = Field(default=0, ge=-10, le=10)
    callback_url: str | None = Field(default=None, max_length=2048)
    replace: bool = False
    output: OutputOptions = Field(default_factory=OutputOptions)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str | None) -> str | None:
        if v is not None and (why := job_id_problem(v)):
            raise ValueError(why)
        return v

    @field_validator("meta")
    @classmethod
    def _meta(cls, v: dict[str, Any]) -> dict[str, Any]:
        if (depth := nesting(v)) > MAX_META_DEPTH:
            raise ValueError(f"is nested {depth} levels deep; at most {MAX_META_DEPTH} are kept")
        return v

    @field_validator("callback_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    def media(self) -> dict[str, str]:
        """field name -> path as written, for every file the manifest names."""
        out = {"audio": self.audio, "template": self.template}
        if self.output.watermark:
            out["output.watermark"] = self.output.watermark
        return out


def is_manifest_name(name: str) -> bool:
    """A loose manifest's file name (temp and hidden names are filtered elsewhere)."""
    return name.lower().endswith(MANIFEST_SUFFIXES)


def _field_of(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int)) or "(top)"


def _rejection_from(err: ValidationError) -> RejectedDrop:
    first = err.errors()[0]
    field = _field_of(first["loc"])
    kind = first["type"]
    got = first.get("input")
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    if kind == "extra_forbidden":
        allowed = ", ".join(
            Manifest.model_fields if "." not in field else OutputOptions.model_fields
        )
        return RejectedDrop(
            f"unknown field {field!r} in the manifest",
            code="unknown_field",
            field=field,
            hint=f"remove or correct it; known fields here: {allowed}",
        )
    if kind == "missing":
        return RejectedDrop(
            f"required field {field!r} is missing",
            code="missing_field",
            field=field,
            hint=f'add {field} = "<file name next to the manifest>"',
        )
    if field == "job_id":
        return RejectedDrop(
            f"job_id {shown} is not allowed: {first['msg'].removeprefix('Value error, ')}",
            code="bad_job_id",
            field=field,
            hint='use e.g. job_id = "welcome-001", or leave it out to get a generated id',
        )
    if field == "version":
        return RejectedDrop(
            f"manifest version {shown} is not supported",
            code="unsupported_version",
            field=field,
            hint="this daemon reads version = 1",
        )
    return RejectedDrop(
        f"field {field!r} has an invalid value {shown}: {first['msg'].removeprefix('Value error, ')}",
        code="invalid_value",
        field=field,
        hint="see the manifest format in README.md",
    )


def _unreadable(path: Path, e: Refused) -> RejectedDrop:
    """The answer to a manifest that is not a file the daemon may read."""
    if isinstance(e.__cause__, OSError) and access.denied(e.__cause__):
        return RejectedDrop(
            f"manifest {e.why} ({access.who(path)})",
            code="manifest_unreadable",
            field="(file)",
            hint="let the daemon's user read it: " + access.WRITER_FIX,
        )
    return RejectedDrop(
        f"manifest {e.why}",
        code="manifest_unreadable" if e.code == "unreadable" else "not_a_file",
        field="(file)",
        hint="drop the manifest as a plain file (not a link, pipe or device)",
    )


def read_raw(path: Path, limits: LimitsConfig) -> dict[str, Any]:
    """Read and decode a manifest file into a mapping; RejectedDrop on any problem."""
    try:  # never through a link, never blocking on a FIFO, never more than the limit
        raw = read_bounded(path, limits.max_manifest_bytes)
    except Refused as e:
        raise _unreadable(path, e) from e
    if len(raw) > limits.max_manifest_bytes:
        raise RejectedDrop(
            f"manifest is over the limit of {limits.max_manifest_bytes} bytes",
            code="manifest_too_large",
            field="(file)",
            hint="a manifest holds a few fields; media go in files beside it",
        )
    if not raw:
        raise RejectedDrop(
            "manifest file is empty",
            code="empty_manifest",
            field="(file)",
            hint="write the manifest under a temporary name and rename it when complete",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RejectedDrop(
            f"manifest is not UTF-8 text (bad byte at offset {e.start})",
            code="manifest_encoding",
            field="(file)",
            hint="save the manifest as UTF-8",
        ) from e
    if "\x00" in text:
        raise RejectedDrop(
            "manifest contains NUL bytes",
            code="manifest_encoding",
            field="(file)",
            hint="save the manifest as plain UTF-8 text",
        )
    is_toml = path.name.lower().endswith(".toml")
    try:
        data = tomllib.loads(text) if is_toml else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
        kind = "TOML" if is_toml else "JSON"
        raise RejectedDrop(
            f"manifest is not valid {kind}: {str(e)[:200]}",
            code="manifest_syntax",
            field="(file)",
            hint=f"check the {kind} syntax (a validator or `python -m json.tool` shows the spot)",
        ) from e
    if not isinstance(data, dict):
        raise RejectedDrop(
            f"manifest must be an object of fields, got a {type(data).__name__}",
            code="manifest_syntax",
            field="(top)",
            hint='write {"audio": "...", "template": "..."}',
        )
    return data


def validate(data: dict[str, Any]) -> Manifest:
    """The Manifest for a decoded mapping; RejectedDrop naming the first bad field."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise _rejection_from(e) from e
    except RecursionError as e:
        raise RejectedDrop(
            "manifest is nested too deeply",
            code="manifest_syntax",
            field="meta",
            hint="keep meta shallow",
        ) from e


def resolve_media(
    m: Manifest,
    manifest_path: Path,
    base_dir: Path,
    inbox_root: Path,
    limits: LimitsConfig,
    dropped_as: Path | None = None,
) -> dict[str, Path]:
    """field -> path inside the inbox for each file the manifest names, all checked.

    `dropped_as` is where the manifest was dropped (it has moved into its claim since).
    """
    ceilings = {
        "audio": limits.max_audio_bytes,
        "template": limits.max_template_bytes,
        "output.watermark": limits.max_template_bytes,
    }
    out: dict[str, Path] = {}
    seen: dict[Path, str] = {manifest_path.resolve(): "the manifest itself"}
    for field, value in m.media().items():
        if dropped_as is not None and base_dir / value == dropped_as:
            raise RejectedDrop(
                f"{field}: {value!r} is the manifest itself",
                code="same_file",
                field=field,
                hint=f"name the {field} file, not the manifest",
            )
        path = check_media_path(value, field, base_dir, inbox_root, max_bytes=ceilings[field])
        real = path.resolve()
        if real in seen:
            raise RejectedDrop(
                f"{field}: {value!r} is the same file as {seen[real]}",
                code="same_file",
                field=field,
                hint="audio, template and watermark must be three different files",
            )
        seen[real] = field
        out[field] = path
    return out


def parse(
    path: Path,
    base_dir: Path,
    inbox_root: Path,
    limits: LimitsConfig,
    dropped_as: Path | None = None,
) -> tuple[Manifest, dict[str, Path]]:
    """Parse and check a manifest and the media it names; RejectedDrop otherwise."""
    data = read_raw(path, limits)
    m = validate(data)
    return m, resolve_media(m, path, base_dir, inbox_root, limits, dropped_as)


def salvage_job_id(path: Path, limits: LimitsConfig) -> str | None:
    """The job_id of a manifest that failed validation, if one can be read safely."""
    try:
        data = read_raw(path, limits)
    except RejectedDrop:
        return None
    value = data.get("job_id")
    if isinstance(value, str) and job_id_problem(value) is None:
        return value
    return None
