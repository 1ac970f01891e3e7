"""Everything written into outbox/<job_id>/: task.json, log.txt, error.json, input/.

All writes are atomic (temp name, fsync, rename) so that a reader polling the
outbox never sees a torn file; log.txt lines are single appends.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from dropbox_daemon.boundary import copy_tree
from dropbox_daemon.names import CONTROLS

TASK_JSON = "task.json"
ERROR_JSON = "error.json"
LOG_TXT = "log.txt"
INPUT_DIR = "input"
POSTER = "poster.jpg"


# the states a job's callback tells (store/ queues a delivery on them; its outcome is kept
# in task.json while the record is of one of them)
CALLBACK_STATES = ("done", "failed", "cancelled", "rejected")


def utc_iso(ts: float | None) -> str | None:
    """An epoch time as an ISO-8601 UTC string (None stays None)."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_for(final: Path) -> Path:
    """A hidden temporary sibling of `final`, unique to this process."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def publish(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file and rename it over `final`."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a mix."""
    tmp = temp_name_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def last_line(path: Path, window: int = 8192) -> str:
    """The last line of a text file ('' when there is none), read from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - window))
            lines = f.read().decode("utf-8", "replace").rstrip("\n").rsplit("\n", 1)
    except OSError:
        return ""
    return lines[-1]


class Outbox:
    """The outbox folder: one sub-folder per job, plus _daemon/."""

    def __init__(self, root: Path, max_input_file: int | None = None) -> None:
        self.root = root
        self.max_input_file = max_input_file  # bytes: a larger file is not copied to input/

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def reserve(self, job_id: str) -> bool:
        """Create outbox/<job_id>/ exclusively; False when it already exists (any host)."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.job_dir(job_id))
        except FileExistsError:
            return False
        return True

    def ensure(self, job_id: str) -> Path:
        d = self.job_dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_task(self, record: dict[str, Any]) -> None:
        """Rewrite task.json atomically (a callback's outcome, written by the sender, stays
        while it is the same run's record)."""
        d = self.ensure(record["job_id"])
        if "callback" not in record and record.get("state") in CALLBACK_STATES:
            old = self.read_task(record["job_id"]) or {}
            if old.get("callback") and old.get("trace_id") == record.get("trace_id"):
                record = {**record, "callback": old["callback"]}
        atomic_write_json(d / TASK_JSON, record)

    def note_callback(self, job_id: str, trace_id: str | None, outcome: dict[str, Any]) -> None:
        """task.json's `callback`: {state: pending | delivered | refused | failed, reason,
        attempts, status}; only on the run it belongs to (a retried or re-run job's record
        is left alone)."""
        task = self.read_task(job_id)
        if task is None or task.get("trace_id") != trace_id:
            return
        if task.get("state") not in CALLBACK_STATES:
            return
        atomic_write_json(self.job_dir(job_id) / TASK_JSON, {**task, "callback": outcome})

    def read_task(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.job_dir(job_id) / TASK_JSON).read_text())
        except (OSError, ValueError):
            return None

    def log(
        self, job_id: str, trace_id: str, message: str, *, at: float, once: bool = False
    ) -> None:
        """Append one line to the job's log.txt (a single write, so lines never interleave).

        `once`: not when the last line already records the same change ("state A -> B",
        whatever the detail after it): a state change written just before its database
        commit failed or the daemon was killed, and written again when it is retried or
        recovered after the restart."""
        d = self.ensure(job_id)
        # one line, and no control character from a name on the share (a terminal escape)
        tail = f" job={job_id} trace={trace_id} {message.replace(chr(10), ' | ')}".translate(
            CONTROLS
        )
        # the change itself is what comes before the first ": " (a timestamp has none)
        if once and last_line(d / LOG_TXT).split(": ", 1)[0].endswith(tail.split(": ", 1)[0]):
            return
        line = f"{utc_iso(at)}{tail}"
        fd = os.open(d / LOG_TXT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
        finally:
            os.close(fd)

    def write_error(self, job_id: str, error: dict[str, Any]) -> None:
        atomic_write_json(self.ensure(job_id) / ERROR_JSON, error)

    def clear_previous_run(self, job_id: str) -> None:
        """Remove error.json and input/ of an earlier run before the job id runs again.

        Both are copies: the drop's own files stay in its claim folder until retention.
        """
        d = self.job_dir(job_id)
        (d / ERROR_JSON).unlink(missing_ok=True)
        if (d / INPUT_DIR).is_dir():
            shutil.rmtree(d / INPUT_DIR)

    def save_inputs(self, job_id: str, source_dir: Path) -> list[str]:
        """Copy a drop's files (as dropped) into outbox/<job_id>/input/ for a re-drop: copies
        (reflinks where the file system has them), not hard links, so that `mv input/*
        inbox/` is a valid drop again. Links, FIFOs and devices are not copied: returned as
        'name (why)', for error.json."""
        return copy_tree(source_dir, self.ensure(job_id) / INPUT_DIR, self.max_input_file)
