"""What every command shares: JSON or words on stdout, errors in one form, the store read
without ever being created."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dropbox_daemon import config as config_mod
from dropbox_daemon.errors import (
    EXIT_CONFIG,
    EXIT_DUPLICATE,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
)

EXIT_NAMES = {
    EXIT_OK: "ok",
    EXIT_FAILURE: "failure",
    EXIT_USAGE: "usage",
    EXIT_CONFIG: "config",
    EXIT_NOT_FOUND: "not_found",
    EXIT_TIMEOUT: "timeout",
    EXIT_DUPLICATE: "duplicate",
}


def say_error(as_json: bool, message: str, exit_code: int, hint: str = "") -> int:
    if as_json:
        name = EXIT_NAMES.get(exit_code, "failure")
        body = {"message": message, "hint": hint, "exit_code": exit_code, "exit": name}
        print(json.dumps({"error": body}, indent=2))
    else:
        print(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
    return exit_code


def say(args: argparse.Namespace, human: str, data: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human)


def store_of(cfg: config_mod.Config):  # noqa: ANN202
    """The jobs database, never created here: a command run before the daemon's first start
    (or with the wrong --config, or as another user) must not make its state folder."""
    from dropbox_daemon.outbox import Outbox
    from dropbox_daemon.store import has_store, open_store, sqlite_path

    if not has_store(cfg):
        raise CliError(
            f"no jobs database at {sqlite_path(cfg)}: no daemon has run with this config yet",
            EXIT_NOT_FOUND,
            "start it (dropbox-daemon run, or systemctl start dropbox-daemon), or pass the "
            "config it runs with (--config)",
        )
    return open_store(cfg, Outbox(cfg.daemon.outbox))


class NoSuchJob(Exception):
    """The job named on the command line is not in the store."""


def job_of(store, job_id: str):  # noqa: ANN001, ANN202
    job = store.get(job_id)
    if job is None:
        raise NoSuchJob(job_id)
    return job
