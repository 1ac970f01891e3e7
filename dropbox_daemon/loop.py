"""What the daemon's parts share, owned by the daemon (daemon.py) and handed to each part
(claiming, supervise, outcomes, peers) beside the collaborators it uses: no part holds the
daemon, and each field here has one writer, named beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dropbox_daemon.config import Config
from dropbox_daemon.health import DaemonView
from dropbox_daemon.store import StoreUnavailable


@dataclass
class Flags:
    """Written by the signal handler only (daemon.py); read by every part."""

    stop: bool = False
    immediate: bool = False  # a second SIGTERM: stop now, the running job re-queued
    signals: list[int] = field(default_factory=list)


@dataclass
class Loop:
    """The main loop's shared state: its config, the stop flags, the health view (each of its
    fields written by the one part that knows it) and what to do when the store is away."""

    cfg: Config
    flags: Flags
    view: DaemonView
    on_store_down: Callable[[StoreUnavailable], None]  # the daemon's: said once, in health
