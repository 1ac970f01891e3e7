"""A job as the store holds it, its states and the moves between them, and the queue's order.

Pure data and rules: the backends (sqlite.py, postgres.py) and the store's parts
(machine.py, queries.py, ...) read them; nothing here touches a database.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dropbox_daemon import __version__, redact
from dropbox_daemon.errors import DaemonError, IllegalTransition
from dropbox_daemon.outbox import utc_iso

RUNNING = ("preparing", "rendering", "encoding")
TERMINAL = ("done", "failed", "cancelled", "rejected", "duplicate")
STATES = ("received", "queued", *RUNNING, *TERMINAL)

# from-state -> states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"queued", "rejected", "duplicate", "failed"}),
    "queued": frozenset({"preparing", "cancelled", "failed"}),
    "preparing": frozenset({"rendering", "queued", "failed", "cancelled", "rejected"}),
    "rendering": frozenset({"encoding", "queued", "failed", "cancelled"}),
    "encoding": frozenset({"done", "queued", "failed", "cancelled"}),
    # a retry, a `replace = true` drop, or a fixed re-drop of a rejected job
    "done": frozenset({"queued"}),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "rejected": frozenset({"queued"}),
    "duplicate": frozenset(),
}

JSON_COLUMNS = ("timings", "inputs", "output", "error", "meta", "manifest")


class Job(BaseModel):
    """One job as the store holds it; task.json is its `record()`."""

    job_id: str
    seq: int = 0
    trace_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    inbox: str
    state: str = "received"
    stage: str | None = None
    progress: float = 0.0
    attempts: int = 0
    max_attempts: int = 3
    engine: str | None = None
    device: str | None = None
    priority: int = 0
    host: str | None = None
    instance: str | None = None
    generation: int = 0
    config_hash: str | None = None
    claim_dir: str | None = None
    manifest_name: str | None = None
    duplicate_of: str | None = None
    callback_url: str | None = None
    cancel_requested: int = 0
    created_at: float = Field(default_factory=time.time)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = Field(default_factory=time.time)
    timings: dict[str, float] = Field(default_factory=dict)
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    def record(self) -> dict[str, Any]:
        """The task.json form: times as ISO-8601 UTC, plus the daemon's version."""
        d = self.model_dump(exclude={"seq", "cancel_requested", "claim_dir"})
        if d.get("callback_url"):  # a token in its query or userinfo is not for every reader
            d["callback_url"] = redact.endpoint(d["callback_url"])
        for key in ("created_at", "queued_at", "started_at", "finished_at", "updated_at"):
            d[key] = utc_iso(d[key])
        d["claim"] = Path(self.claim_dir).name if self.claim_dir else None
        d["version"] = __version__
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        data = dict(row)
        for key in JSON_COLUMNS:
            if isinstance(data.get(key), str):
                data[key] = json.loads(data[key])
        return cls.model_validate(data)

    def to_row(self) -> dict[str, Any]:
        data = self.model_dump()
        for key in JSON_COLUMNS:
            if data[key] is not None:
                data[key] = json.dumps(data[key], default=str)
        return data


def pick_next(queued: list[Job], last_served: dict[str, float]) -> Job | None:
    """The job to run next: highest priority, then the inbox served longest ago, then oldest.

    `queued` is ordered by (priority desc, seq asc); an inbox never served counts as
    served at time 0, so a new inbox gets its turn at once.
    """
    if not queued:
        return None
    top = max(j.priority for j in queued)
    best: Job | None = None
    for job in queued:
        if job.priority != top:
            continue
        if best is None or last_served.get(job.inbox, 0.0) < last_served.get(best.inbox, 0.0):
            best = job
    return best


def claim_held(job: Job) -> bool:
    """Whether the job's claim folder is still where this job's record says.

    A peer that takes a job over renames the claim folder (recovery.take_over), so
    a holder that finds its folder gone has lost the job and must write nothing.
    """
    return not job.claim_dir or os.path.isdir(job.claim_dir)


class JobExists(IllegalTransition):
    """A new job's id is taken already (the database's unique key): the drop is a duplicate."""


class StoreUnavailable(DaemonError):
    """The database cannot be reached now; the caller keeps what it has and tries again."""

    code = "store_unavailable"
