"""Retention: jobs that ended more than their inbox's keep_days ago leave disk and database.

What goes: the job's outbox folder, its claim (work) folder and its database
rows; never a job that is queued or running. Claim folders no row refers to
any more (a replaced run, a crash before intake) go once they are as old.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from loguru import logger

from dropbox_daemon.config import Config
from dropbox_daemon.drops import OWNER_FILE, claims_root
from dropbox_daemon.store import Job, Store

DAY = 86400.0


def cutoff(now: float, keep_days: float) -> float:
    """Jobs that ended before this time are expired."""
    return now - keep_days * DAY


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
    except OSError:
        return False


def remove_job_files(job: Job, cfg: Config) -> list[str]:
    """Delete a job's outbox and claim folders (only where they lie where they should)."""
    removed = []
    out = cfg.daemon.outbox / job.job_id
    if out.is_dir() and _inside(out, cfg.daemon.outbox):
        shutil.rmtree(out, ignore_errors=True)
        removed.append(str(out))
    if job.claim_dir:
        claim = Path(job.claim_dir)
        roots = [claims_root(i.path) for i in cfg.inbox]
        if claim.is_dir() and any(_inside(claim, r) for r in roots):
            shutil.rmtree(claim, ignore_errors=True)
            removed.append(str(claim))
    return removed


def purge(store: Store, cfg: Config, now: float | None = None) -> list[str]:
    """Remove every expired job; returns the ids removed. Each removal is logged."""
    now = time.time() if now is None else now
    gone = []
    for inbox in cfg.inbox:
        limit = cutoff(now, inbox.keep_days)
        for job in store.ended_before(limit, inbox.name):
            deleted = store.delete_if_expired(job.job_id, limit)
            if deleted is None:
                continue  # it ran again meanwhile
            paths = remove_job_files(deleted, cfg)
            gone.append(deleted.job_id)
            logger.info(
                "retention: removed job {} of inbox {} ({}, ended {:.1f} days ago, keep_days {}): {}",
                deleted.job_id,
                inbox.name,
                deleted.state,
                (now - (deleted.finished_at or now)) / DAY,
                inbox.keep_days,
                ", ".join(paths) or "no files left",
            )
        sweep_claims(store, cfg, inbox.path, limit)
    return gone


def sweep_claims(store: Store, cfg: Config, inbox: Path, limit: float) -> list[Path]:
    """Claim folders of this host that no job refers to and that are older than `limit`."""
    root = claims_root(inbox)
    if not root.is_dir():
        return []
    known = store.claim_dirs()
    removed = []
    for cdir in root.iterdir():
        if str(cdir) in known:
            continue
        try:
            owner = json.loads((cdir / OWNER_FILE).read_text())
            if owner.get("host") != cfg.daemon.host or cdir.stat().st_mtime >= limit:
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(cdir, ignore_errors=True)
        removed.append(cdir)
        logger.info("retention: removed claim folder {} that no job refers to", cdir)
    return removed


def backup(store: Store, cfg: Config, now: float | None = None) -> Path:
    """Copy the database into <state>/backups/ and keep the newest `backups_keep`."""
    now = time.time() if now is None else now
    folder = cfg.daemon.state_dir / "backups"
    dest = folder / time.strftime("jobs-%Y%m%d-%H%M%S.sqlite3", time.gmtime(now))
    store.backup(dest)
    backups = sorted(folder.glob("jobs-*.sqlite3"))
    for old in backups[: -cfg.retention.backups_keep]:
        old.unlink(missing_ok=True)
    logger.info(
        "backup: database copied to {} ({} kept)",
        dest,
        min(len(backups), cfg.retention.backups_keep),
    )
    return dest
