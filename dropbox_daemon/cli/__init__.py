"""Command line: argument parsing and printing only; the work is in the modules it calls.

One module per group of commands; output.py is the one form of answers and errors
(--json: JSON on stdout for every command, errors included)."""

from __future__ import annotations

import sys

from dropbox_daemon import config as config_mod
from dropbox_daemon.cli.db import cmd_db
from dropbox_daemon.cli.host import cmd_demo, cmd_doctor, cmd_smoke
from dropbox_daemon.cli.jobs import cmd_cancel, cmd_jobs, cmd_logs, cmd_retry, cmd_show
from dropbox_daemon.cli.output import EXIT_NAMES, NoSuchJob, say_error
from dropbox_daemon.cli.parser import build_parser
from dropbox_daemon.cli.service import cmd_run
from dropbox_daemon.cli.status import cmd_healthcheck, cmd_status, daemon_state
from dropbox_daemon.cli.submit import cmd_submit
from dropbox_daemon.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_NOT_FOUND, CliError, ConfigError

__all__ = ["COMMANDS", "EXIT_NAMES", "build_parser", "daemon_state", "main"]

COMMANDS = {
    "run": cmd_run,
    "submit": cmd_submit,
    "status": cmd_status,
    "healthcheck": cmd_healthcheck,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
    "smoke": cmd_smoke,
    "logs": cmd_logs,
    "db": cmd_db,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    try:
        args = build_parser(json_errors=as_json).parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error, already printed
        return int(e.code or 0)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        return say_error(as_json, f"config: {e.message}", EXIT_CONFIG, e.hint)
    try:
        return COMMANDS[args.command](args, cfg)
    except CliError as e:
        return say_error(as_json, e.message, e.exit_code, e.hint)
    except ConfigError as e:
        return say_error(as_json, e.message, EXIT_CONFIG, e.hint)
    except NoSuchJob as e:
        from dropbox_daemon.store import store_name

        return say_error(
            as_json,
            f"no job {e.args[0]!r} in {store_name(cfg)}",
            EXIT_NOT_FOUND,
            "`dropbox-daemon jobs` lists the jobs this daemon knows",
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return say_error(as_json, str(e), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not as_json:
            raise  # the traceback, for a person
        return say_error(
            as_json,
            f"{type(e).__name__}: {e}",
            EXIT_FAILURE,
            "unexpected: run the command without --json for the traceback",
        )
