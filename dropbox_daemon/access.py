"""Permissions in words: who owns an entry on the share, whom the daemon runs as, and what a
writer changes so that the daemon may take a drop.

A writer's own umask decides what the daemon may do with a drop: a job folder made 0755 by
another user cannot have its files moved out (a claim is a rename), a file made 0600 cannot be
read. The daemon cannot fix that itself; it says once which entry, whose it is, and what to set.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
from pathlib import Path

# what a writer (or the share's set-up) changes so that the daemon's user may take its drops
WRITER_FIX = (
    "drop into a group-owned setgid inbox (chmod 2775) with umask 002, or chmod -R g+rwX the "
    'job folder (docs/operations.md, "Who can write the share")'
)
TAKEN_ONCE = (
    "it stays where it is and is taken at a rescan once the daemon's user may read and write it: "
)


def denied(e: OSError) -> bool:
    """The error is a permission the daemon lacks (not a missing file or a full disk)."""
    return e.errno in (errno.EACCES, errno.EPERM)


@functools.lru_cache(maxsize=256)  # a stuck drop is said at each rescan: no NSS lookup each time
def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


@functools.lru_cache(maxsize=256)
def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def owner_words(path: Path) -> str:
    """ "owned by ann (uid 1001), group staff (gid 50), mode drwxr-xr-x"; "" where it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    return (
        f"owned by {_user(st.st_uid)}, group {_group(st.st_gid)}, mode {stat.filemode(st.st_mode)}"
    )


def daemon_words() -> str:
    """ "the daemon runs as dropbox (uid 999), groups dropbox (gid 999), share (gid 50)"."""
    groups = sorted({os.getegid(), *os.getgroups()})
    return f"the daemon runs as {_user(os.geteuid())}, groups " + ", ".join(
        _group(g) for g in groups
    )


def who(path: Path) -> str:
    """Whose the entry is and whom the daemon runs as, for a message about a permission."""
    owner = owner_words(path)
    return f"{path.name} is {owner}; {daemon_words()}" if owner else daemon_words()
