"""Retention: jobs that ended more than their inbox's keep_days ago leave disk and database.

What goes: the job's outbox folder, its claim (work) folder and its database
rows; never a job that is queued or running. Claim folders no row refers to
any more (a replaced run, a crash before intake) go once they are as old.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from loguru import logger

from dropbox_daemon.boundary import is_inside, is_real_dir, remove_tree
from dropbox_daemon.claims import claim_folders, claims_root, read_owner
from dropbox_daemon.config import Config
from dropbox_daemon.recovery import discard_drafts
from dropbox_daemon.store import BACKUP_GLOB, BACKUP_NAME, Job, Store

DAY = 86400.0


def cutoff(now: float, keep_days: float) -> float:
    """Jobs that ended before this time are expired."""
    return now - keep_days * DAY


def _inside(path: Path, root: Path) -> bool:
    """Below `root`, not `root` itself."""
    return is_inside(path, root) and path.resolve() != root.resolve()


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
        if is_real_dir(claim) and any(_inside(claim, r) for r in roots):
            remove_tree(claim)  # a writer's drop may be a tree of any depth
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
    """Claim folders of this host that no job refers to and that are older than `limit`;
    and any daemon's claim drafts that a crash left, once stale_claim_seconds old."""
    for draft in discard_drafts(inbox, None, cfg.daemon.stale_claim_seconds):
        logger.info("retention: removed {}, a claim folder a crash left half made", draft)
    folders = claim_folders(inbox)  # real claim folders only; owner.json checked as data
    if not folders:
        return []
    known = store.claim_dirs()
    removed = []
    for cdir in folders:
        if str(cdir) in known:
            continue
        owner = read_owner(cdir)
        try:
            if owner is None or owner.get("host") != cfg.daemon.host:
                continue
            if cdir.lstat().st_mtime >= limit:
                continue
        except OSError:
            continue
        remove_tree(cdir)
        removed.append(cdir)
        logger.info("retention: removed claim folder {} that no job refers to", cdir)
    return removed


def backup(store: Store, cfg: Config, now: float | None = None) -> Path:
    """Copy the database into <state>/backups/ and keep the newest `backups_keep`."""
    now = time.time() if now is None else now
    folder = cfg.daemon.state_dir / "backups"
    dest = folder / time.strftime(BACKUP_NAME, time.gmtime(now))
    store.backup(dest)
    backups = sorted(folder.glob(BACKUP_GLOB))
    for old in backups[: -cfg.retention.backups_keep]:
        old.unlink(missing_ok=True)
    logger.info(
        "backup: database copied to {} ({} kept)",
        dest,
        min(len(backups), cfg.retention.backups_keep),
    )
    return dest
