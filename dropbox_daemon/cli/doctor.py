"""`dropbox-daemon doctor`: is this host set up to run the daemon? Each check: ok, warn or fail, and the fix."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from dropbox_daemon.boundary import make_private_dir, writable_by_others
from dropbox_daemon.claims import DROPBOX_DIR, QUARANTINE_DIR, claims_root
from dropbox_daemon.cli.checks import Check, as_dicts
from dropbox_daemon.cli.doctor_render import (
    check_ffmpeg,
    check_template_cache,
    check_torch,
    check_weights,
)
from dropbox_daemon.cli.unit import UNIT, check_unit, installed_unit, unit_paths
from dropbox_daemon.config import Config
from dropbox_daemon.instances import INSTANCES_DIR
from dropbox_daemon.watcher import mount_of, watch_mode

__all__ = ["UNIT", "Check", "as_dicts", "installed_unit", "run_checks", "unit_paths"]

MIN_INOTIFY_WATCHES = 8192


def _writable(path: Path) -> str | None:
    """None if a file can be created and removed in `path`, else why not."""
    probe = path / f".doctor-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def existing_parent(path: Path) -> Path:
    """The nearest path above `path` (or itself) that exists (a file there stops a mkdir)."""
    p = path
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    return p


def check_folders(cfg: Config) -> list[Check]:
    """Each folder writable, or, before the first start, creatable: the daemon makes the
    outbox, the state folder and every inbox itself (0750) when it starts."""
    out = []
    folders = [("outbox", cfg.daemon.outbox), ("state", cfg.daemon.state_dir)]
    folders += [(f"inbox {i.name}", i.path) for i in cfg.inbox]
    for name, path in folders:
        if path.exists() and not path.is_dir():
            out.append(
                Check(
                    f"{name} folder",
                    "fail",
                    f"{path} exists and is not a folder",
                    f"move it away, or point the config at a folder for the {name}",
                )
            )
            continue
        if not path.is_dir():
            parent = existing_parent(path)
            why = _writable(parent) if parent.is_dir() else "it is not a folder"
            if why:
                out.append(
                    Check(
                        f"{name} folder",
                        "fail",
                        f"{path} does not exist and cannot be created: {parent} is not "
                        f"writable ({why})",
                        f"mkdir -p {path} and give the service user write access",
                    )
                )
            else:
                out.append(
                    Check(
                        f"{name} folder",
                        "ok",
                        f"{path} does not exist yet: the daemon creates it at its first start "
                        f"({parent} is writable)",
                    )
                )
            continue
        why = _writable(path)
        if why:
            out.append(
                Check(
                    f"{name} folder",
                    "fail",
                    f"{path} is not writable: {why}",
                    f"chown/chmod {path} so the service user can write to it",
                )
            )
        else:
            out.append(Check(f"{name} folder", "ok", f"{path} is writable"))
    return out


def check_claims(cfg: Config) -> list[Check]:
    """A claim is a rename inside the inbox's own file system: try one."""
    out = []
    for inbox in cfg.inbox:
        if not inbox.path.is_dir():
            out.append(
                Check(
                    f"claims in inbox {inbox.name}",
                    "ok",
                    f"checked once {inbox.path} exists (the daemon creates it at its first start)",
                )
            )
            continue
        root = claims_root(inbox.path)
        try:
            make_private_dir(root)
            same = os.stat(inbox.path).st_dev == os.stat(root).st_dev
            src = inbox.path / f".doctor-{uuid.uuid4().hex[:8]}.tmp"
            src.write_bytes(b"x")
            try:
                os.rename(src, root / src.name)
            finally:
                src.unlink(missing_ok=True)
                (root / src.name).unlink(missing_ok=True)
        except OSError as e:
            out.append(
                Check(
                    f"claims in inbox {inbox.name}",
                    "fail",
                    f"cannot rename into {root}: {e.strerror or e}",
                    f"make {root} a plain folder on the same file system as {inbox.path}",
                )
            )
            continue
        if not same:
            out.append(
                Check(
                    f"claims in inbox {inbox.name}",
                    "fail",
                    f"{root} is on another file system than {inbox.path}: claims would not be atomic",
                    f"remove the mount at {root}; it must be a plain folder inside the inbox",
                )
            )
            continue
        mode, why = watch_mode(inbox)
        mnt, fstype = mount_of(inbox.path)
        out.append(
            Check(
                f"claims in inbox {inbox.name}",
                "ok",
                f"rename works on {fstype} ({mnt}); watching with {mode}: {why}",
            )
        )
    return out


def check_dropbox_private(cfg: Config) -> list[Check]:
    """<inbox>/.dropbox/ holds claims and leases: only the daemons' user may write it."""
    out = []
    for inbox in cfg.inbox:
        folders = [inbox.path / DROPBOX_DIR, claims_root(inbox.path)]
        folders += [inbox.path / DROPBOX_DIR / d for d in (INSTANCES_DIR, QUARANTINE_DIR)]
        loose = writable_by_others(folders)
        name = f"{DROPBOX_DIR}/ of inbox {inbox.name}"
        if loose:
            out.append(
                Check(
                    name,
                    "fail",
                    f"writable by other users: {', '.join(loose)}; they could forge claims and "
                    "leases (docs/operations.md, 'Who can write the share')",
                    f"chmod -R go-w {inbox.path / DROPBOX_DIR}",
                )
            )
        elif (inbox.path / DROPBOX_DIR).is_dir():
            out.append(Check(name, "ok", "writable by the daemons' user only"))
    return out


def check_disk(cfg: Config) -> list[Check]:
    out = []
    for name, path in (("outbox", cfg.daemon.outbox), ("state", cfg.daemon.state_dir)):
        try:
            free = shutil.disk_usage(existing_parent(path)).free
        except OSError:
            continue
        status = (
            "fail"
            if free < cfg.health.disk_fail_bytes
            else "warn"
            if free < cfg.health.disk_warn_bytes
            else "ok"
        )
        out.append(
            Check(
                f"disk free ({name})",
                status,
                f"{free / 2**30:.1f} GiB free at {path}",
                "free space or lower [inbox] keep_days" if status != "ok" else "",
            )
        )
    return out


def check_inotify(cfg: Config) -> list[Check]:
    try:
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return [Check("inotify", "warn", "cannot read the inotify limits", "")]
    if watches < MIN_INOTIFY_WATCHES:
        return [
            Check(
                "inotify",
                "warn",
                f"max_user_watches is {watches}",
                "sysctl fs.inotify.max_user_watches=524288 (events may be missed; rescans still find drops)",
            )
        ]
    return [Check("inotify", "ok", f"max_user_watches {watches}")]


def run_checks(cfg: Config, unit: str | None = None) -> list[Check]:
    checks = check_folders(cfg) + check_claims(cfg) + check_dropbox_private(cfg)
    torch_checks, gpu = check_torch(cfg)
    checks += check_ffmpeg(cfg, gpu) + torch_checks + check_weights(cfg)
    checks += (
        check_disk(cfg) + check_template_cache(cfg) + check_inotify(cfg) + check_unit(cfg, unit)
    )
    return checks + check_store(cfg)


def check_store(cfg: Config) -> list[Check]:
    from dropbox_daemon.store import is_farm

    if not is_farm(cfg):
        return []
    from dropbox_daemon.store import pg_doctor

    return pg_doctor.checks(cfg, Check)
