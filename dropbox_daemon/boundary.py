"""The one place the daemon touches paths on an inbox, where everything is a stranger's.

Anyone who can write the share can put anything there: links into and out of the inbox,
FIFOs, devices, sockets, trees a thousand levels deep, names that are not text. So, the
way a mail server delivers into mailboxes other people can write: `lstat` before acting,
open with O_NOFOLLOW and O_NONBLOCK (a FIFO cannot hang us, a link is never followed),
`fstat` the descriptor and check it is the regular file that was looked at, read with a
bound, walk folders through descriptors without recursion and with depth and entry
bounds, and check every name as text. Every move and copy of a drop's files goes through
here, for a valid drop and a rejected one alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from dropbox_daemon.names import shown

MAX_DEPTH = 16  # folder levels inside a job folder
MAX_ENTRIES = 10_000  # files and folders in one drop
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
COPY_CHUNK = 8 << 20  # bytes per copy_file_range call
FICLONE = 0x40049409  # ioctl: share the source's extents (a reflink: btrfs, XFS)
FILE_MODE = 0o640  # what the daemon creates: no one else reads a drop's files
DIR_MODE = 0o750


NOTED_MAX = 10_000  # entries remembered, so that each is logged once


class Noted:
    """Things on the share that are never read or used, each logged once (not every pass)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], None] = {}

    def once(
        self, path: Path, why: str, then: str = "it is left where it is and never read"
    ) -> None:
        key = (str(path), why)
        if key in self.seen:
            return
        if len(self.seen) >= NOTED_MAX:
            self.seen.pop(next(iter(self.seen)))
        self.seen[key] = None
        logger.warning("share: {} {}; {}", shown(str(path)), why, then)


NOTED = Noted()


class Refused(Exception):
    """A path on the share that the daemon will not act on: `code` for error.json, and why."""

    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code, self.why = code, why


def kind(st: os.stat_result) -> str:
    """What a file-system entry is, in words for an error message."""
    mode = st.st_mode
    for test, name in (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a file"


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies in `folder` (or is it) once both are resolved, links and '..'
    followed: for paths someone else named (a service's save_path, a record's claim)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def lstat(path: Path) -> os.stat_result | None:
    """The entry itself (a link is not followed); None where there is none."""
    try:
        return os.lstat(path)
    except (OSError, ValueError):
        return None


def is_regular(path: Path) -> bool:
    st = lstat(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def is_real_dir(path: Path) -> bool:
    """A folder, not a link to one."""
    st = lstat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_regular(path: Path, expect: os.stat_result | None = None) -> tuple[int, os.stat_result]:
    """A descriptor on the regular file at `path` (links not followed, never blocking), and its
    stat; Refused when it is anything else, or no longer the file `expect` describes."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused("not_a_file", "is a symbolic link, which is never followed") from e
        if e.errno in (errno.ENXIO, errno.EOPNOTSUPP):
            raise Refused("not_a_file", "is a socket or device, not a file") from e
        raise Refused("unreadable", f"cannot be opened: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not_a_file", f"is {kind(st)}, not a regular file")
        if expect is not None and not same_file(st, expect):
            raise Refused("file_changed", "was replaced while it was being checked")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bounded(path: Path, limit: int) -> bytes:
    """Up to limit + 1 bytes of the regular file at `path` (one more tells the caller it is
    over); Refused for links, FIFOs, devices and the like."""
    fd, _st = open_regular(path)
    try:
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise Refused("unreadable", f"cannot be read: {e.strerror}") from e
    finally:
        os.close(fd)


def read_json(path: Path, limit: int) -> Any:
    """The JSON in the regular file at `path`, read as read_bounded reads (Refused for a link,
    FIFO or device); ValueError where it is over `limit` bytes, not JSON, or nested past the
    parser's reach."""
    raw = read_bounded(path, limit)
    if len(raw) > limit:
        raise ValueError(f"over {limit} bytes")
    try:
        return json.loads(raw)
    except RecursionError as e:
        raise ValueError("nested too deeply") from e


@dataclass(frozen=True)
class Entry:
    """One entry of a walk: its path relative to the walk's root, and its own (lstat) stat."""

    rel: str
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)


def _names(fd: int, max_entries: int) -> list[str]:
    out = []
    with os.scandir(fd) as it:
        for entry in it:
            out.append(entry.name)
            if len(out) > max_entries:
                raise Refused("too_many_files", f"holds more than {max_entries} entries")
    return sorted(out, reverse=True)  # popped from the end: name order


def walk(root: Path, *, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> list[Entry]:
    """Every entry under `root`, in name order, without recursion: each folder is opened
    from its parent's descriptor (O_NOFOLLOW), so a link swapped in cannot lead out.
    Refused: `root` is not a real folder, deeper than `max_depth`, over `max_entries`."""
    try:
        top = os.open(root, DIR_FLAGS)
    except OSError as e:
        raise Refused("not_a_folder", f"is not a folder one can enter ({e.strerror})") from e
    out: list[Entry] = []
    stack: list[tuple[int, list[str], str]] = []
    try:
        stack.append((top, _names(top, max_entries), ""))
        while stack:
            fd, names, rel = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            path = f"{rel}/{name}" if rel else name
            out.append(Entry(path, st))
            if len(out) > max_entries:
                raise Refused("too_many_files", f"holds more than {max_entries} entries")
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= max_depth:
                    raise Refused("too_deep", f"is nested more than {max_depth} folders deep")
                try:
                    sub = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for a link or removed: not entered
                try:
                    stack.append((sub, _names(sub, max_entries - len(out)), path))
                except BaseException:
                    os.close(sub)
                    raise
    except OSError as e:
        raise Refused("unreadable", f"cannot be listed: {e.strerror}") from e
    finally:
        for fd, _names_left, _rel in stack:
            os.close(fd)
    return out


def move_file(src: Path, dst: Path) -> str | None:
    """Move the regular file at `src` (one link, not a symbolic link) to `dst` by rename;
    None when it moved, else why it stayed where it was. Checked after the rename too:
    what arrived is the file that was looked at, or it is put back."""
    before = lstat(src)
    if before is None:
        return "is not there"
    if not stat.S_ISREG(before.st_mode):
        return f"is {kind(before)}, not a regular file"
    if before.st_nlink > 1:
        return "is a hard link (it may be another file's too)"
    if os.path.lexists(dst):
        return "has a namesake already in the claim"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as e:
        return f"cannot be moved: {e.strerror}"
    after = lstat(dst)
    if after is None or not same_file(before, after) or not stat.S_ISREG(after.st_mode):
        try:
            os.rename(dst, src)  # the writer swapped it between the check and the move
        except OSError:
            pass
        return "was replaced while it was being moved"
    return None


def _copy_fd(src_fd: int, dst: Path, size: int) -> None:
    """Copy `size` bytes from a descriptor into a new file: a reflink where the file system
    has them (instant, no space), else copy_file_range; the copy's own mode, never the
    stranger's."""
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            fcntl.ioctl(out, FICLONE, src_fd)
            return
        except OSError:
            pass  # no reflinks here (ext4, tmpfs, across file systems): copy
        left = size
        while left > 0:
            try:
                n = os.copy_file_range(src_fd, out, min(left, COPY_CHUNK))
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = os.sendfile(out, src_fd, None, min(left, COPY_CHUNK))
            if n == 0:
                break  # the file shrank meanwhile: what there was is copied
            left -= n
    finally:
        os.close(out)


def copy_tree(src: Path, dst: Path, max_file: int | None = None) -> list[str]:
    """Copy a drop's files and folders from `src` into `dst`: regular files (up to
    `max_file` bytes each) and folders only, each opened without following links, within
    the walk's bounds. Returns what was left out, each as 'name (why)'."""
    skipped: list[str] = []
    dst.mkdir(mode=DIR_MODE, parents=False, exist_ok=True)
    if lstat(src) is None:
        return skipped
    try:
        entries = walk(src)
    except Refused as e:
        entries = []
        skipped.append(f"{shown(src.name)}/ ({e.why}: nothing copied)")
    for e in entries:
        target = dst / e.rel
        if e.is_dir:
            target.mkdir(mode=DIR_MODE, exist_ok=True)
            continue
        if not e.is_file:
            skipped.append(f"{shown(e.rel)} ({kind(e.st)})")
            continue
        if max_file is not None and e.st.st_size > max_file:
            skipped.append(f"{shown(e.rel)} ({e.st.st_size} bytes, over the limits: not copied)")
            continue
        try:
            fd, _st = open_regular(src / e.rel, expect=e.st)
        except Refused as r:
            skipped.append(f"{shown(e.rel)} ({r.why})")
            continue
        try:
            _copy_fd(fd, target, e.st.st_size)
        except FileExistsError:
            pass  # copied before a crash
        finally:
            os.close(fd)
    return skipped


def remove_tree(root: Path) -> None:
    """Delete a folder and everything in it, however deep, without recursion and without
    following links: each sub-folder is first renamed up into `root` itself, so no path
    ever grows past two levels (shutil.rmtree recurses, and fails at ~1,000 levels)."""
    st = lstat(root)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        root.unlink()
        return
    folders, todo, n = [root], [root], 0
    while todo:
        here = todo.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                n += 1
                flat = root / f".rm-{n}"
                try:
                    os.rename(e.path, flat)
                except OSError:
                    continue
                folders.append(flat)
                todo.append(flat)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def make_private_dir(path: Path) -> None:
    """Create a folder the daemons' user alone may write (mode 0750), parents included."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def writable_by_others(paths: Iterable[Path]) -> list[str]:
    """Those of `paths` that another user can write (group or others), as 'path (mode)'."""
    out = []
    for p in paths:
        st = lstat(p)
        if st is not None and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            out.append(f"{p} ({stat.filemode(st.st_mode)})")
    return out
