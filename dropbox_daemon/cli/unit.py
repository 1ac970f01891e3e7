"""The systemd unit as doctor checks it: the installed one (with its drop-ins) or a file, and
whether its ReadWritePaths= cover every folder the daemon writes to."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dropbox_daemon.cli.checks import Check
from dropbox_daemon.config import Config

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dropbox-daemon.service"
UNIT_NAME = "dropbox-daemon.service"
UNIT_FOLDERS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))


def installed_unit(name: str = UNIT_NAME) -> tuple[str, str] | None:
    """(where, text) of the unit systemd would run: `systemctl cat` (with its drop-ins), or
    the file in /etc/systemd/system or /lib/systemd/system where systemd is not running."""

    systemctl = shutil.which("systemctl")
    if systemctl:
        try:
            r = subprocess.run(
                [systemctl, "cat", "--no-pager", name], capture_output=True, text=True, timeout=10
            )
            if r.returncode == 0 and r.stdout.strip():
                return f"systemctl cat {name}", r.stdout
        except (OSError, subprocess.SubprocessError):
            pass
    for folder in UNIT_FOLDERS:
        path = folder / name
        try:
            return str(path), path.read_text()
        except OSError:
            continue
    return None


def unit_paths(text: str) -> list[Path]:
    """The folders a unit lets the service write: every ReadWritePaths= of [Service] (they
    add up; an empty one resets, as in systemd), and StateDirectory= under /var/lib."""
    paths: list[Path] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        if section != "Service" or not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "ReadWritePaths":
            if not value:
                paths = []
            paths += [Path(p.lstrip("-+")) for p in value.split()]
        elif key == "StateDirectory":
            paths += [Path("/var/lib") / d for d in value.split()]
    return paths


def check_unit(cfg: Config, unit: str | None = None) -> list[Check]:
    """The unit's ReadWritePaths= must cover every folder the daemon writes to: the
    installed unit's, or the file `unit` names (doctor --unit)."""
    if unit is not None and Path(unit).is_file():
        where, text = unit, Path(unit).read_text()
    else:
        found = installed_unit(unit or UNIT_NAME)
        if found is None:
            # the repository's unit, where there is one (not in a container's installed package)
            hint = (
                f"; `doctor --unit {UNIT}` checks the repository's unit against this config"
                if UNIT.is_file()
                else ""
            )
            return [
                Check(
                    "systemd unit",
                    "ok",
                    f"no {unit or UNIT_NAME} installed (not run by systemd here){hint}",
                )
            ]
        where, text = found
    paths = unit_paths(text)
    needed = [cfg.daemon.outbox, cfg.daemon.state_dir, *(i.path for i in cfg.inbox)]
    missing = [str(p) for p in needed if not any(p == q or p.is_relative_to(q) for q in paths)]
    if missing:
        return [
            Check(
                "systemd unit",
                "fail",
                f"{where} does not let the service write to: {', '.join(missing)}",
                "add them to ReadWritePaths= (systemctl edit dropbox-daemon), or move the folders",
            )
        ]
    return [
        Check("systemd unit", "ok", f"{where} covers every inbox, the outbox and the state folder")
    ]
