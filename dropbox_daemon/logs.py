"""Logging set-up: loguru to stderr (journald-friendly under systemd) and a JSON-lines file."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from loguru import logger

from dropbox_daemon import names
from dropbox_daemon.config import Config

# syslog priorities that journald reads from a "<N>" line prefix
PRIORITY = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 5,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}


CONTROLS = names.CONTROLS | {10: "\\n", 13: "\\r", 9: "\\t"}  # the common three by name


def escape_controls(record: Any) -> None:
    """loguru patcher: control characters in a message (a file name from the share, say)
    are shown escaped, so that a name cannot forge a log line or a journald priority."""
    record["message"] = record["message"].translate(CONTROLS)
    job = record["extra"].get("job_id")
    if isinstance(job, str):
        record["extra"]["job_id"] = job.translate(CONTROLS)


def _job_part(record: Any) -> str:
    extra = record["extra"]
    return f" [job={extra['job_id']}]" if "job_id" in extra else ""


def setup(cfg: Config, *, to_file: bool = True) -> None:
    """Configure loguru for the daemon process."""
    logger.remove()
    # every record names the instance (daemon.jsonl; journald has the unit's name already)
    logger.configure(extra={"instance": cfg.instance_id}, patcher=escape_controls)
    level = cfg.daemon.log.level
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))

    def fmt(record: Any) -> str:
        job = _job_part(record).replace("{", "{{").replace("}", "}}")
        if under_systemd:  # journald adds its own timestamps
            return f"<{PRIORITY.get(record['level'].name, 6)}>{{level}}{job} {{message}}\n{{exception}}"
        return "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7}" + job + " {message}\n{exception}"

    logger.add(sys.stderr, level=level, format=fmt, backtrace=False, diagnose=False)
    if to_file and cfg.daemon.log.file:
        logdir = cfg.daemon.state_dir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        logger.add(
            logdir / "daemon.jsonl",
            level=level,
            serialize=True,
            rotation=cfg.daemon.log.rotation,
            retention=cfg.daemon.log.retention,
            enqueue=False,
            backtrace=False,
            diagnose=False,
        )
    # libraries that log through the standard library (APScheduler, watchdog, httpx) go to
    # the same sinks, in the same format, instead of raw lines on stderr
    logging.basicConfig(handlers=[StdlibToLoguru()], level=logging.WARNING, force=True)


# what APScheduler says, in the daemon's words: which job, and what it means
SCHEDULER_SAYS = {
    "maximum number of running instances reached": (
        "its previous run is still going (a slow database or disk); this run is skipped and "
        "the next one comes at its interval"
    ),
    "was missed by": "it ran late (the host was busy or suspended); it runs at the next interval",
}


class StdlibToLoguru(logging.Handler):
    """A standard-library log record as a loguru line, naming the library."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        message = record.getMessage()
        if record.name.startswith("apscheduler"):
            for key, meaning in SCHEDULER_SAYS.items():
                if key in message:
                    message = f"{message}: {meaning}"
                    break
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name, message)
