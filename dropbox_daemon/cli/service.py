"""`run`: the service in the foreground (systemd's ExecStart)."""

from __future__ import annotations

import argparse

from dropbox_daemon import config as config_mod


def cmd_run(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import faulthandler
    import signal

    from dropbox_daemon import logs
    from dropbox_daemon.daemon import run_daemon

    logs.setup(cfg)
    # a crash in native code leaves every thread's stack on stderr (the journal), and
    # `kill -USR2 <pid>` prints them without stopping the daemon: what a stuck daemon is doing
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    return run_daemon(cfg)
