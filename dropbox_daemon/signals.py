"""SIGTERM and SIGINT for the daemon: the handler sets the stop flags and nothing else; the
main loop is woken by a thread that reads each signal's byte from a pipe
(signal.set_wakeup_fd). A handler runs between two bytecodes of the main thread, which may
hold the wake event's lock at that moment (inside Event.wait); setting the event from the
handler then waits for that lock for ever (seen once in CI: a daemon that never stopped)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from dropbox_daemon.loop import Flags


def on_signal(flags: Flags, signum: int) -> None:
    """What a stop signal does: the first asks for a graceful stop, the second for one now."""
    flags.signals.append(signum)
    if flags.stop:
        flags.immediate = True
    flags.stop = True


def install(flags: Flags, wake: Callable[[], None]) -> None:
    """From the main thread, before the loop starts."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_wake_on_signals, args=(r, wake), name="signals", daemon=True).start()

    def handler(signum: int, _frame: Any) -> None:
        on_signal(flags, signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wake_on_signals(r: int, wake: Callable[[], None]) -> None:
    while True:
        try:
            if not os.read(r, 64):
                return
        except InterruptedError:
            continue
        except OSError:
            return
        wake()


def names(received: list[int]) -> str:
    """The signals received, by name, each once: why the daemon stops."""
    out = []
    for n in received:
        try:
            out.append(signal.Signals(n).name)
        except ValueError:
            out.append(f"signal {n}")
    return ", ".join(dict.fromkeys(out)) or "asked to stop"
