"""The daemon's stop signals, in a process of their own: a SIGTERM that arrives while the main
thread holds the wake event's lock (as it does inside Event.wait) sets the stop flags and
wakes the loop, where a handler that set the event itself waited for that lock for ever."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, signal, threading, time
from dropbox_daemon import signals
from dropbox_daemon.loop import Flags
flags, wake = Flags(), threading.Event()
signals.install(flags, wake.set)
with wake._cond:  # the main thread inside Event.wait, between two bytecodes
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecodes run here: the handler runs among them
        if flags.stop:
            break
        time.sleep(0.001)
print("handled", flags.stop, flags.signals == [signal.SIGTERM])
print("woken", wake.wait(5))
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("second", flags.immediate)
"""


def test_a_sigterm_while_the_wake_lock_is_held_stops_and_wakes() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["handled True True", "woken True", "second True"], r
