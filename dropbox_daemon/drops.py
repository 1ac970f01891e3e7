"""The drop protocol, first half: finding drops in an inbox and waiting for them to settle.

A drop is a manifest directly in an inbox, or job.json/job.toml in a direct
sub-folder (a job folder). Temporary and hidden names are never read. What
happens once a drop has settled (its claim folder) is claims.py.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dropbox_daemon import access
from dropbox_daemon.boundary import NOTED, Refused, kind, lstat, read_bounded, walk
from dropbox_daemon.manifest import JOB_FOLDER_MANIFESTS, is_manifest_name
from dropbox_daemon.names import name_problem, relative_problem

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx")


def is_ignored_name(name: str) -> bool:
    """Names a writer uses while a file is incomplete: never read (rsync's .name.XXXXXX included)."""
    return (
        name.startswith((".", "#", "~"))
        or name.endswith("~")
        or name.lower().endswith(IGNORED_SUFFIXES)
    )


@dataclass(frozen=True)
class Candidate:
    """A manifest that may be a drop: `manifest` inside `base_dir` (the inbox or a job folder)."""

    manifest: Path
    base_dir: Path
    job_folder: bool

    @property
    def stem(self) -> str:
        return self.base_dir.name if self.job_folder else self.manifest.stem


MAX_INBOX_ENTRIES = 100_000  # entries of one inbox looked at in one scan


def _unusable(path: Path, st: os.stat_result | None, *, manifest: bool) -> str | None:
    """Why an inbox entry that looks like a drop is not one (None when it may be)."""
    if why := name_problem(path.name):
        return f"has a name that {why}"
    if st is None:
        return None  # gone: nothing to say
    if manifest and not stat.S_ISREG(st.st_mode):
        return f"is {kind(st)}, not a manifest file"
    if not manifest and not stat.S_ISDIR(st.st_mode):
        return f"is {kind(st)}, not a job folder"
    return None


def candidate_for(inbox: Path, path: Path) -> Candidate | None:
    """The drop a path inside the inbox belongs to, if any (used for watcher hints)."""
    try:
        rel = path.relative_to(inbox)
    except ValueError:
        return None
    parts = rel.parts
    if not parts or any(is_ignored_name(p) for p in parts[:2]):
        return None
    first = inbox / parts[0]
    st = lstat(first)
    if st is None:
        return None
    if len(parts) == 1 and is_manifest_name(parts[0]) and not stat.S_ISDIR(st.st_mode):
        if why := _unusable(first, st, manifest=True):
            NOTED.once(first, why)
            return None
        return Candidate(first, inbox, False)
    return folder_candidate(first, st)


def folder_candidate(folder: Path, st: os.stat_result | None = None) -> Candidate | None:
    """The job folder's drop: a real folder (not a link) holding job.json or job.toml as a
    regular file; None otherwise, logged once where it looks like a drop and is not one."""
    st = st if st is not None else lstat(folder)
    if st is None or not stat.S_ISDIR(st.st_mode):
        if st is not None and stat.S_ISLNK(st.st_mode) and _has_manifest(folder):
            NOTED.once(folder, "is a symbolic link to a folder, not a job folder")
        return None
    if why := name_problem(folder.name):
        if _has_manifest(folder):
            NOTED.once(folder, f"is a job folder whose name {why}")
        return None
    for name in JOB_FOLDER_MANIFESTS:
        m = folder / name
        try:
            mst = os.lstat(m)
        except PermissionError:  # a folder its writer made for itself alone
            NOTED.once(
                folder,
                f"cannot be looked into ({access.who(folder)})",
                "if it is a job folder, " + access.TAKEN_ONCE + access.WRITER_FIX,
            )
            return None
        except (OSError, ValueError):
            continue
        if not stat.S_ISREG(mst.st_mode):
            NOTED.once(m, f"is {kind(mst)}, not a manifest file")
            return None
        return Candidate(m, folder, True)
    return None


def _has_manifest(folder: Path) -> bool:
    return any(os.path.lexists(folder / n) for n in JOB_FOLDER_MANIFESTS)


def scan(inbox: Path) -> list[Candidate]:
    """Every drop visible in the inbox now, oldest first (by manifest mtime)."""
    found: list[tuple[float, Candidate]] = []
    try:
        with os.scandir(inbox) as it:
            entries = [e for _, e in zip(range(MAX_INBOX_ENTRIES), it, strict=False)]
    except OSError:
        return []
    for entry in entries:
        if is_ignored_name(entry.name):
            continue
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished while we looked: another daemon claimed it
        if stat.S_ISDIR(st.st_mode) or not is_manifest_name(entry.name):
            c = folder_candidate(path, st)
            if c is None:
                continue
            mst = lstat(c.manifest)
            if mst is not None:
                found.append((mst.st_mtime, c))
            continue
        if why := _unusable(path, st, manifest=True):
            NOTED.once(path, why)
            continue
        found.append((st.st_mtime, Candidate(path, inbox, False)))
    found.sort(key=lambda t: t[0])
    return [c for _, c in found]


def _named_files(c: Candidate) -> list[Path]:
    """The media a manifest names, read leniently (only to watch them settle)."""
    try:
        raw = read_bounded(c.manifest, 1_000_000)
        text = raw.decode("utf-8", "replace")
        if c.manifest.name.lower().endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception:  # noqa: BLE001 - an unparsable manifest settles on itself alone
        return []
    if not isinstance(data, dict):
        return []
    names = [data.get("audio"), data.get("template")]
    out = data.get("output")
    if isinstance(out, dict):
        names.append(out.get("watermark"))
    return [c.base_dir / n for n in names if isinstance(n, str) and relative_problem(n) is None]


def signature(c: Candidate) -> tuple:
    """(name, size, mtime) of the manifest and what it names; a job folder: all its files.
    A job folder too deep or too wide to walk settles on its manifest and that fact alone
    (intake then answers it); nothing here follows a link or opens more than the manifest."""
    if c.job_folder:
        try:
            entries = walk(c.base_dir)
        except Refused as e:
            st = lstat(c.manifest)
            return ((f"(refused: {e.code})", 0, 0), (str(c.manifest), *_size_mtime(st)))
        sig = [
            (e.rel, e.st.st_size, e.st.st_mtime_ns)
            for e in entries
            if not e.is_dir and not any(p.startswith(".") for p in e.rel.split("/"))
        ]
        return tuple(sig)
    out = []
    for p in sorted([c.manifest, *_named_files(c)]):
        out.append((str(p), *_size_mtime(lstat(p))))
    return tuple(out)


def _size_mtime(st: os.stat_result | None) -> tuple[int, int]:
    return (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)


@dataclass
class Settler:
    """Takes a drop once its files kept the same size and mtime for `settle_seconds`.

    Writers that cannot rename (SMB drag and drop, a slow copy) are covered by
    this; a manifest that arrived by rename is taken at once (`fast=True`).
    """

    settle_seconds: float
    seen: dict[Path, tuple[tuple, float]] = field(default_factory=dict)

    def ready(self, c: Candidate, now: float, *, fast: bool = False) -> bool:
        sig = signature(c)
        if fast and all(size >= 0 for _, size, _ in sig):
            self.seen.pop(c.manifest, None)
            return True
        prev = self.seen.get(c.manifest)
        if prev is None or prev[0] != sig:
            self.seen[c.manifest] = (sig, now)
            return self.settle_seconds == 0
        return now - prev[1] >= self.settle_seconds

    def forget(self, c: Candidate) -> None:
        self.seen.pop(c.manifest, None)
