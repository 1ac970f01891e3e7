"""The running daemon's pid, in its state folder: written by the daemon once it holds the
folder's lock (one daemon per state folder), read by the commands that ask whether it
runs (status, demo, smoke)."""

from __future__ import annotations

import fcntl
import os
from typing import IO

from dropbox_daemon.config import Config
from dropbox_daemon.errors import ConfigError

PID_FILE = "daemon.pid"


def read_pid(cfg: Config) -> int | None:
    """The pid of the daemon running on this state folder, or None."""
    try:
        pid = int((cfg.daemon.state_dir / PID_FILE).read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def hold_state_dir(cfg: Config) -> IO[str]:
    """Lock the state folder and write this process's pid: one daemon per state folder (a
    second one would run every job twice). The lock lasts while the returned file is open."""
    lock = open(cfg.daemon.state_dir / "daemon.lock", "a+")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        lock.close()
        raise ConfigError(
            f"another dropbox-daemon (pid {read_pid(cfg)}) already runs on {cfg.daemon.state_dir}",
            hint="stop it first, or give this one its own [daemon] state_dir",
        ) from e
    (cfg.daemon.state_dir / PID_FILE).write_text(f"{os.getpid()}\n")
    return lock
