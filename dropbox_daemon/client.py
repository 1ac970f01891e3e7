"""The reference client: writes a drop correctly and follows its task.json.

A drop is written as a hidden job folder (media and job.json inside) and then
renamed into place in one step, so the daemon never sees half a drop.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbox_daemon.manifest import job_id_problem

TERMINAL = ("done", "failed", "cancelled", "rejected", "duplicate")


class JobFailed(Exception):
    """The job ended in a state other than done; `record` and `error` say why."""

    def __init__(self, record: dict[str, Any], error: dict[str, Any] | None) -> None:
        self.record, self.error = record, error or record.get("error") or {}
        msg = self.error.get("message", "") if self.error else ""
        super().__init__(f"job {record.get('job_id')} ended {record.get('state')}: {msg}")


def new_job_id() -> str:
    return time.strftime("job-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass
class JobHandle:
    job_id: str
    outbox: Path

    @property
    def folder(self) -> Path:
        return self.outbox / self.job_id

    def record(self) -> dict[str, Any] | None:
        """The job's task.json now, or None before the daemon has taken the drop."""
        try:
            return json.loads((self.folder / "task.json").read_text())
        except (OSError, ValueError):
            return None

    def wait(self, timeout: float = 3600, poll: float = 0.2, on_progress=None) -> dict[str, Any]:  # noqa: ANN001
        """Follow task.json until the job ends; returns it, raises JobFailed unless done."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record()
            if rec is not None and on_progress is not None:
                on_progress(rec)
            if rec is not None and rec.get("state") in TERMINAL:
                if rec["state"] == "done":
                    return rec
                err = None
                try:
                    err = json.loads((self.folder / "error.json").read_text())
                except (OSError, ValueError):
                    pass
                raise JobFailed(rec, err)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {self.job_id} did not end within {timeout:.0f} s "
                    f"(last state: {rec.get('state') if rec else 'not picked up yet'})"
                )
            time.sleep(poll)


def submit(
    inbox: str | os.PathLike[str],
    audio: str | os.PathLike[str],
    template: str | os.PathLike[str],
    *,
    outbox: str | os.PathLike[str],
    job_id: str | None = None,
    **fields: Any,
) -> JobHandle:
    """Copy audio and template into a new job folder in `inbox` with its job.json; rename last."""
    inbox, audio, template = Path(inbox), Path(audio), Path(template)
    job_id = job_id or new_job_id()
    if why := job_id_problem(job_id):
        raise ValueError(f"job_id {job_id!r} {why}")
    if not inbox.is_dir():
        raise FileNotFoundError(f"inbox {inbox} does not exist")
    tmp = inbox / f".{job_id}.{uuid.uuid4().hex[:6]}.tmp"
    final = inbox / job_id
    if final.exists():
        raise FileExistsError(f"{final} already exists in the inbox (not yet taken?)")
    tmp.mkdir()
    try:
        a_name = "audio" + audio.suffix.lower()
        t_name = "template" + template.suffix.lower()
        shutil.copyfile(audio, tmp / a_name)
        shutil.copyfile(template, tmp / t_name)
        manifest = {"version": 1, "job_id": job_id, "audio": a_name, "template": t_name, **fields}
        (tmp / "job.json").write_text(json.dumps(manifest, indent=2))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return JobHandle(job_id, Path(outbox))
