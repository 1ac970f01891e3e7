"""The running daemon's pid, in its state folder: written by the daemon once it holds the
folder's lock, read by the commands that ask whether it runs (status, demo, smoke)."""

from __future__ import annotations

import os

from dropbox_daemon.config import Config

PID_FILE = "daemon.pid"


def read_pid(cfg: Config) -> int | None:
    """The pid of the daemon running on this state folder, or None."""
    try:
        pid = int((cfg.daemon.state_dir / PID_FILE).read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid
