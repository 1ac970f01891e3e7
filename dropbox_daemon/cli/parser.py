"""The command line's grammar: every command, its options and their help."""

from __future__ import annotations

import argparse
from typing import NoReturn

from dropbox_daemon import __version__
from dropbox_daemon import config as config_mod
from dropbox_daemon.cli.output import say_error
from dropbox_daemon.errors import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as JSON when --json was given."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            say_error(True, f"{self.prog}: {message}", EXIT_USAGE, f"{self.prog} --help")
            raise SystemExit(EXIT_USAGE)
        super().error(message)


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    _Parser.json_errors = json_errors
    p = _Parser(
        prog="dropbox-daemon",
        description="Turns job drops on folders into lip-synced videos. See README.md.",
    )
    p.add_argument("--version", action="version", version=f"dropbox-daemon {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help=f"config file (default: ${config_mod.ENV_CONFIG} or ./config.toml)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the service in the foreground")
    _job_commands(sub, common)
    _host_commands(sub, common)
    return p


def _job_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """submit, status, jobs, show, retry, cancel, logs."""
    s = sub.add_parser("submit", parents=[common], help="drop a job into an inbox")
    s.add_argument("audio")
    s.add_argument("template")
    s.add_argument("--inbox", help="inbox name (default: the first configured)")
    s.add_argument("--engine", choices=config_mod.ENGINE_NAMES)
    s.add_argument("--job-id")
    s.add_argument("--priority", type=int)
    s.add_argument(
        "--replace",
        action="store_true",
        help="run the job again if its job_id already ran (the manifest's replace = true)",
    )
    s.add_argument("--wait", action="store_true", help="follow the job until it ends")
    s.add_argument(
        "--duplicate-ok",
        action="store_true",
        help="--wait: exit 0 when the drop is answered as a duplicate (default: exit 6)",
    )
    s.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits")
    sub.add_parser("status", parents=[common], help="is the daemon up; jobs by state")
    sub.add_parser(
        "healthcheck",
        parents=[common],
        help="exit 0 if this daemon runs and its heartbeat is fresh and healthy (a container's "
        "HEALTHCHECK: reads health.json and the pid file, no database)",
    )
    j = sub.add_parser("jobs", parents=[common], help="list jobs")
    j.add_argument("--state")
    j.add_argument("--inbox")
    j.add_argument("--instance", help="only the jobs this instance rendered (farm mode: any)")
    j.add_argument("--limit", type=int, default=50)
    sh = sub.add_parser("show", parents=[common], help="a job's task.json and log")
    sh.add_argument("job")
    sh.add_argument("--lines", type=int, default=20)
    r = sub.add_parser("retry", parents=[common], help="run a failed or cancelled job again")
    r.add_argument("job")
    c = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    c.add_argument("job")
    lg = sub.add_parser("logs", parents=[common], help="a job's log (log.txt)")
    lg.add_argument("job")
    lg.add_argument(
        "--daemon", action="store_true", help="also the daemon's own log lines about it"
    )


def _host_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """demo, doctor, smoke, db: the host's checks and the farm database's schema."""
    sub.add_parser("demo", parents=[common], help="render a sample job end to end")
    dr = sub.add_parser(
        "doctor", parents=[common], help="check this host's set-up; non-zero on any failure"
    )
    dr.add_argument(
        "--unit",
        metavar="FILE_OR_NAME",
        help="check this unit file (e.g. systemd/dropbox-daemon.service) or installed unit "
        "instead of the installed dropbox-daemon.service",
    )
    sm = sub.add_parser(
        "smoke", parents=[common], help="render a 10 s job through the daemon: pass or fail"
    )
    sm.add_argument("--timeout", type=float, default=600)
    sm.add_argument(
        "--start-daemon", action="store_true", help="start a daemon for the test if none runs"
    )
    db = sub.add_parser("db", parents=[common], help="farm mode: the database's schema")
    db.add_argument(
        "action",
        choices=["migrate", "status"],
        help="migrate: apply or upgrade the schema (as the database's owner); status: its version",
    )
    db.add_argument("--url", help="the owner's URL, if not [store] url (the daemons' role)")
    db.add_argument("--grant", metavar="ROLE", help="migrate: give ROLE the daemons' rights")
