"""watchdog observers that turn file events into hints for the main loop.

Events are hints, never the truth: the daemon rescans every inbox on a timer
as well. Inboxes on network file systems (NFS, SMB/CIFS, FUSE, ...) get the
polling observer, since inotify never sees what other hosts write there.

Nothing is watched recursively: the inbox itself, and each job folder in it (a real
folder, not a link; at most MAX_FOLDER_WATCHES) one level deep. A writer's tree a
thousand levels deep or ten thousand folders wide costs no inotify watches and cannot
crash the observer's walk, and .dropbox/ is not watched at all.
"""

from __future__ import annotations

import contextlib
import os
import queue
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    DirMovedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
from watchdog.observers.polling import PollingObserver

from dropbox_daemon.boundary import is_real_dir
from dropbox_daemon.claims import DROPBOX_DIR
from dropbox_daemon.config import InboxConfig

# watchdog's inotify backend warns on stderr (a wall of its internal state) each time a
# folder moved into the inbox is watched again under the same callback: harmless, since
# the callback is the same, and noise in the daemon's log at 3 a.m.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)

# watchdog holds every IN_MOVED_FROM for this long to pair it with its IN_MOVED_TO,
# and its reader thread sleeps out the delay even once the pair is found: with the
# default 0.5 s, each Maildir-style rename stalls all events behind it. Both halves
# of a rename arrive in the same inotify read, so a short hold pairs them as well.
MOVE_PAIRING_SECONDS = 0.01

NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "afs",
    "davfs",
    "ncpfs",
    "beegfs",
    "virtiofs",
}


@dataclass(frozen=True)
class Hint:
    """Something changed at `path` in inbox `inbox`; `renamed` if it arrived by rename."""

    inbox: str
    path: Path
    renamed: bool


def mount_of(path: Path, mounts_file: str = "/proc/mounts") -> tuple[str, str]:
    """(mount point, file system type) that holds `path`: the longest matching mount point."""
    real = str(path.resolve())
    best = ("/", "unknown")
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, parts[2])
    return best


MAX_FOLDER_WATCHES = 64  # job folders watched one level deep (a thread each); the rest: rescans


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS or fstype.startswith("fuse")


def watch_mode(inbox: InboxConfig) -> tuple[str, str]:
    """("events" | "poll", why) for an inbox: config wins, else the file system decides."""
    _, fstype = mount_of(inbox.path)
    if inbox.watch != "auto":
        return inbox.watch, f"set in config (file system {fstype})"
    if is_network_fs(fstype):
        return "poll", f"{fstype} is a network file system: inotify misses other hosts' writes"
    return "events", f"local file system {fstype}"


class _Handler(FileSystemEventHandler):
    def __init__(self, name: str, out: queue.SimpleQueue[Hint], wake: Callable[[], None]) -> None:
        self.name, self.out, self.wake = name, out, wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        if f"/{DROPBOX_DIR}/" in os.fsdecode(event.src_path):
            return  # our own claim folders
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            self.out.put(Hint(self.name, Path(os.fsdecode(event.dest_path)), True))
        else:
            self.out.put(Hint(self.name, Path(os.fsdecode(event.src_path)), False))
        self.wake()


class Watcher:
    """One observer per inbox feeding `hints`; start() and stop() are its whole life."""

    def __init__(
        self,
        inboxes: list[InboxConfig],
        poll_seconds: float,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.inboxes = inboxes
        self.wake = wake
        self.poll_seconds = poll_seconds
        self.hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self.observers: dict[str, BaseObserver] = {}
        self.handlers: dict[str, _Handler] = {}
        self.folders: dict[Path, tuple[str, ObservedWatch]] = {}  # job folder -> its watch
        self.present: dict[str, bool] = {}
        self.modes: dict[str, str] = {}

    def start(self) -> None:
        InotifyMoveEventGrouper.delay = MOVE_PAIRING_SECONDS
        for inbox in self.inboxes:
            self._watch(inbox)

    def _watch(self, inbox: InboxConfig) -> None:
        """Start the observer of one inbox (none in rescan mode, or when it cannot be watched)."""
        mode, why = watch_mode(inbox)
        self.modes[inbox.name] = mode
        if mode == "rescan":
            logger.info(
                "inbox {}: no observer, rescans every {}s ({})", inbox.name, self.poll_seconds, why
            )
            return
        obs: BaseObserver = (
            PollingObserver(timeout=self.poll_seconds) if mode == "poll" else Observer()
        )
        handler = _Handler(inbox.name, self.hints, self.wake)
        try:
            obs.schedule(handler, str(inbox.path), recursive=False)
            obs.start()
        except OSError as e:
            logger.warning(
                "inbox {}: cannot watch {} for events ({}); relying on rescans every {}s",
                inbox.name,
                inbox.path,
                e,
                self.poll_seconds,
            )
            self.modes[inbox.name] = "rescan"
            return
        self.observers[inbox.name] = obs
        self.handlers[inbox.name] = handler
        logger.info("inbox {}: watching {} with {} ({})", inbox.name, inbox.path, mode, why)

    def follow(self, inbox: str, folder: Path) -> None:
        """Watch a job folder of `inbox` one level deep (its job.json renamed into place)."""
        obs = self.observers.get(inbox)
        if obs is None or folder in self.folders or len(self.folders) >= MAX_FOLDER_WATCHES:
            return
        if not is_real_dir(folder):
            return
        try:
            self.folders[folder] = (inbox, obs.schedule(self.handlers[inbox], str(folder)))
        except OSError:
            pass  # gone meanwhile, or no watches left: the rescans find it

    def forget_gone(self) -> None:
        """Stop watching job folders that were claimed or removed."""
        for folder, (inbox, watch) in list(self.folders.items()):
            if not is_real_dir(folder):
                self.folders.pop(folder)
                obs = self.observers.get(inbox)
                if obs is not None:
                    with contextlib.suppress(KeyError, OSError):
                        obs.unschedule(watch)

    def check_inboxes(self) -> None:
        """Notice an inbox that vanished (an unmounted share) or came back, and re-watch it."""
        for inbox in self.inboxes:
            present = inbox.path.is_dir()
            was = self.present.get(inbox.name, True)
            if was and not present:
                logger.error(
                    "inbox {}: {} has disappeared (unmounted share?); the daemon goes on and "
                    "re-watches it when it is back",
                    inbox.name,
                    inbox.path,
                )
                obs = self.observers.pop(inbox.name, None)
                if obs is not None:
                    obs.stop()
                for folder, (name, _watch) in list(self.folders.items()):
                    if name == inbox.name:
                        self.folders.pop(folder)
            elif present and not was:
                logger.warning("inbox {}: {} is back; watching it again", inbox.name, inbox.path)
                self._watch(inbox)
            self.present[inbox.name] = present

    def stop(self, timeout: float = 5.0) -> None:
        for obs in self.observers.values():
            obs.stop()
        for obs in self.observers.values():
            obs.join(timeout)
        self.observers.clear()

    def drain(self, limit: int = 10_000) -> list[Hint]:
        out = []
        while len(out) < limit:
            try:
                out.append(self.hints.get_nowait())
            except queue.Empty:
                break
        return out
