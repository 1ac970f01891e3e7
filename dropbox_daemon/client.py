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


class Duplicate(JobFailed):
    """The drop repeated a job_id that the daemon already has: it was answered in its own
    folder (`answer_id`, state duplicate) and not run; `earlier` is the earlier job's
    task.json (its result, if it has one, is the earlier run's, not this drop's)."""

    def __init__(self, record: dict[str, Any], earlier: dict[str, Any] | None) -> None:
        super().__init__(record, record.get("error"))
        self.answer_id = str(record.get("job_id"))
        self.earlier = earlier


def new_job_id() -> str:
    return time.strftime("job-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _read_task(folder: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((folder / "task.json").read_text())
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def _run_of(rec: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What tells one run of a job from the next: a re-run gets a new trace id, a re-drop
    rejected again a new finish time."""
    return None if rec is None else (rec.get("trace_id"), rec.get("finished_at"))


@dataclass
class JobHandle:
    """A submitted drop. The daemon answers it in outbox/<job_id>/ (a new job, or the same
    job run again) or, when the job_id already exists, in a new outbox/<job_id>.dup-<n>/;
    the handle knows which from what was there before the drop."""

    job_id: str
    outbox: Path
    earlier: dict[str, Any] | None = None  # outbox/<job_id>/task.json before the drop
    dups_before: frozenset[str] = frozenset()  # its .dup-<n> answers before the drop
    answer_id: str | None = None  # where this drop was answered, once known

    @classmethod
    def before_drop(cls, job_id: str, outbox: Path) -> JobHandle:
        return cls(
            job_id, outbox, _read_task(outbox / job_id), frozenset(cls._dups(outbox, job_id))
        )

    @staticmethod
    def _dups(outbox: Path, job_id: str) -> set[str]:
        try:
            return {p.name for p in outbox.glob(f"{job_id}.dup-*") if p.is_dir()}
        except OSError:
            return set()

    @property
    def folder(self) -> Path:
        return self.outbox / (self.answer_id or self.job_id)

    def _find_answer(self) -> str | None:
        """Which folder answers this drop: the job's own once its record is a new run, or a
        duplicate answer that was not there before."""
        rec = _read_task(self.outbox / self.job_id)
        running_before = self.earlier is not None and self.earlier.get("state") not in TERMINAL
        if rec is not None and not running_before and _run_of(rec) != _run_of(self.earlier):
            return self.job_id
        for name in sorted(self._dups(self.outbox, self.job_id) - self.dups_before):
            if _read_task(self.outbox / name) is not None:
                return name
        return None

    def record(self) -> dict[str, Any] | None:
        """This drop's task.json now, or None before the daemon has answered it."""
        if self.answer_id is None:
            self.answer_id = self._find_answer()
            if self.answer_id is None:
                return None
        return _read_task(self.folder)

    def wait(self, timeout: float = 3600, poll: float = 0.2, on_progress=None) -> dict[str, Any]:  # noqa: ANN001
        """Follow task.json until the job ends; returns it, raises JobFailed unless done
        (Duplicate when the drop was answered as a duplicate and not run). A callback's
        outcome comes later: callback() reads it."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record()
            if rec is not None and on_progress is not None:
                on_progress(rec)
            if rec is not None and rec.get("state") in TERMINAL:
                if rec["state"] == "done":
                    return rec
                if rec["state"] == "duplicate":
                    raise Duplicate(rec, _read_task(self.outbox / self.job_id))
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

    def callback(self, timeout: float = 0, poll: float = 0.2) -> dict[str, Any] | None:
        """The callback's outcome in task.json ({state, reason, ...}): pending until it is
        delivered, refused or failed for good; waits up to `timeout` for one of those."""
        deadline = time.monotonic() + timeout
        while True:
            cb = (self.record() or {}).get("callback")
            if (cb and cb.get("state") != "pending") or time.monotonic() >= deadline:
                return cb
            time.sleep(poll)


def open_as_inbox(inbox: Path, folder: Path) -> None:
    """Give a job folder and its files the access the inbox gives its group and others: the
    daemon's user, another member of a group-writable inbox, may then move them out and read
    them (a claim is a rename out of the folder), where the caller's umask 022 would have left
    them to the caller alone. A share that keeps no modes (SMB) is left as it is."""
    try:
        extra = inbox.stat().st_mode & 0o077
        os.chmod(folder, (folder.stat().st_mode & 0o7000) | 0o700 | extra)
        for f in folder.iterdir():
            os.chmod(f, 0o600 | (extra & 0o066))
    except OSError:
        pass


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
    handle = JobHandle.before_drop(job_id, Path(outbox))
    tmp.mkdir()
    try:
        a_name = "audio" + audio.suffix.lower()
        t_name = "template" + template.suffix.lower()
        shutil.copyfile(audio, tmp / a_name)
        shutil.copyfile(template, tmp / t_name)
        manifest = {"version": 1, "job_id": job_id, "audio": a_name, "template": t_name, **fields}
        (tmp / "job.json").write_text(json.dumps(manifest, indent=2))
        open_as_inbox(inbox, tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return handle
