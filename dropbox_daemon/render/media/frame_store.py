"""The template prep cache: a template's decoded frames kept on disk between jobs.

A template's frames at one output size and rate, turned and flattened as they are shown,
are stored raw (BGR, frame after frame) under `state_dir/templates/<key>.raw`, with a
`<key>.json` beside it that says how many frames it holds and whether that is the whole
template. A second job on the same template reads them back instead of decoding (with the
face track cache, it starts rendering at once). The folder keeps to a byte budget
(`[media] template_cache_bytes`; 0 turns it off): the entries used longest ago go first.

An entry is written under a temporary name and renamed into place once its frames are all
on disk, so a reader (another job, another daemon sharing the state folder) never sees half
of one; a reader keeps its file open, so an entry evicted meanwhile is read to the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from dropbox_daemon.outbox import atomic_write_json

KEEP_FREE = 1 << 30  # bytes of the state disk the template cache never writes into


@dataclass(frozen=True)
class Entry:
    """Stored frames: `frames` of them; `complete` when that is the whole template."""

    path: Path
    frames: int
    complete: bool


class FrameStore:
    """Decoded template frames on disk, keyed by content, view, size and rate, within a budget."""

    def __init__(self, folder: Path, budget: int) -> None:
        self.folder, self.budget = folder, budget

    @staticmethod
    def key(sha256: str, view: str, size: tuple[int, int], fps: float) -> str:
        blob = json.dumps([sha256, view, list(size), round(fps, 6)])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def find(self, key: str, needed: int, frame_bytes: int) -> Entry | None:
        """The stored frames of `key` if they cover `needed` frames (or the whole template)."""
        if self.budget <= 0:
            return None
        meta, raw = self.folder / f"{key}.json", self.folder / f"{key}.raw"
        try:
            data = json.loads(meta.read_text())
            frames, complete = int(data["frames"]), bool(data["complete"])
            size = raw.stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if frames < 1 or size != frames * frame_bytes:
            logger.warning(
                "template cache entry {} holds {} bytes, not {} frames of {}: dropped",
                key[:12],
                size,
                frames,
                frame_bytes,
            )
            self._drop(key)
            return None
        if not complete and frames < needed:
            return None  # made for a shorter job: decode again
        _used_now(meta)
        return Entry(raw, frames, complete)

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.budget

    def room_for(self, nbytes: int) -> bool:
        """Whether a new entry of `nbytes` may be written: it fits the budget, and the state
        disk keeps KEEP_FREE free besides (the cache never fills the disk jobs write to)."""
        if not self.fits(nbytes):
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.folder).free
        except OSError:
            return False
        return free - nbytes >= KEEP_FREE

    def temp_path(self, key: str) -> Path:
        """Where this process writes `key`'s entry until it is whole; files that a killed
        worker left half written are removed here."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for left in self.folder.glob(".*.tmp"):
            if not _alive(left.suffixes[-2].lstrip(".") if len(left.suffixes) > 1 else ""):
                left.unlink(missing_ok=True)
                logger.info(
                    "template cache: removed {}, left half written by a killed job", left.name
                )
        return self.folder / f".{key}.{os.getpid()}.tmp"

    def commit(self, key: str, temp: Path, frames: int, *, complete: bool) -> Path | None:
        """Put a written temp file in place as `key`'s entry (making room for it); the path it
        now has, or None where it does not fit the budget (the temp file is left to the caller)."""
        nbytes = temp.stat().st_size
        if not self.fits(nbytes):
            return None
        self._make_room(nbytes, keep=key)
        raw = self.folder / f"{key}.raw"
        os.replace(temp, raw)
        atomic_write_json(
            self.folder / f"{key}.json",
            {"frames": frames, "complete": complete, "bytes": nbytes},
        )
        _used_now(self.folder / f"{key}.json")
        return raw

    def entries(self) -> list[tuple[float, str, int]]:
        """(last used, key, bytes) of every entry, least recently used first."""
        out = []
        for meta in self.folder.glob("*.json"):
            try:
                used = meta.stat().st_mtime
                nbytes = (self.folder / f"{meta.stem}.raw").stat().st_size
            except OSError:
                continue
            out.append((used, meta.stem, nbytes))
        return sorted(out)

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        entries = self.entries()
        return len(entries), sum(n for _, _, n in entries)

    def _make_room(self, nbytes: int, keep: str) -> None:
        entries = [e for e in self.entries() if e[1] != keep]
        total = sum(n for _, _, n in entries)
        for _, key, size in entries:
            if total + nbytes <= self.budget:
                break
            self._drop(key)
            total -= size
            logger.info(
                "template cache: dropped {} ({} MiB, used longest ago) to keep within {} MiB",
                key[:12],
                size >> 20,
                self.budget >> 20,
            )

    def _drop(self, key: str) -> None:
        for suffix in (".json", ".raw"):
            (self.folder / f"{key}{suffix}").unlink(missing_ok=True)


def _used_now(meta: Path) -> None:
    """Stamp an entry as used now (its metadata's mtime; the clock's full resolution, where
    the kernel's own stamp on a write can tie with another entry's)."""
    try:
        now = time.time_ns()
        os.utime(meta, ns=(now, now))
    except OSError:
        pass


def _alive(pid: str) -> bool:
    """Whether the process of that id (a temp file's writer) still runs on this host."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    return True
