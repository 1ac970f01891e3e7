"""Drops to jobs, the daemon's intake side of each pass: watcher hints and rescans collect
candidates, a candidate is taken once it has settled, a valid one is claimed while the
worker has room (highest priority, then oldest), an invalid one at once; an intake that
failed (a full disk, the database away) is tried again, and claims a crash left behind are
cleared or resumed at start-up."""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from dropbox_daemon import drops
from dropbox_daemon.boundary import shown
from dropbox_daemon.config import InboxConfig
from dropbox_daemon.drops import candidate_for
from dropbox_daemon.farm import best, prevalidate
from dropbox_daemon.store import StoreUnavailable

if TYPE_CHECKING:
    from dropbox_daemon.daemon import Daemon

MAX_INTAKE_TRIES = 3  # a claim whose intake raised this often is answered, not retried for ever
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM, errno.EMFILE}


def environmental(e: BaseException) -> bool:
    """An error of the host (disk full, read-only, out of descriptors; the database's own
    'disk is full' or 'locked'), not of the drop: retried for as long as it lasts."""
    seen: BaseException | None = e
    for _ in range(8):  # the error and what caused it
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in TRANSIENT_ERRNOS:
            return True
        if isinstance(seen, sqlite3.OperationalError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class Pending:
    """A drop seen in an inbox, waiting to settle."""

    candidate: drops.Candidate
    inbox: InboxConfig
    fast: bool = False  # its manifest was renamed into place: complete at once


class Claiming:
    """The daemon's intake side (its state is the daemon's; see daemon.py)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.settlers = {i.name: drops.Settler(i.settle_seconds) for i in d.cfg.inbox}
        self.pending: dict[Path, Pending] = {}
        self.waiting: list[tuple[InboxConfig, drops.Claim]] = []  # claims whose intake failed
        self.tries: dict[str, int] = {}  # claim folder -> failed intakes so far

    def collect_hints(self) -> None:
        """The watcher's hints: a drop's manifest appeared or changed."""
        for hint in self.d.watcher.drain():
            inbox = self.d.cfg.inbox_by_name(hint.inbox)
            if hint.path.parent == inbox.path:
                self.d.watcher.follow(inbox.name, hint.path)  # a job folder being filled?
            cand = candidate_for(inbox.path, hint.path)
            if cand is not None:
                p = self.pending.setdefault(cand.manifest, Pending(cand, inbox))
                p.fast = p.fast or hint.renamed

    def rescan(self) -> None:
        """Every rescan_seconds: failed intakes again, then every inbox listed (a missed event,
        a share without events)."""
        if self.waiting:
            self.retry_claims()
        self.d.watcher.check_inboxes()
        self.d.watcher.forget_gone()
        for inbox in self.d.cfg.inbox:
            for cand in drops.scan(inbox.path):
                if cand.manifest not in self.d.farm.ready:
                    self.pending.setdefault(cand.manifest, Pending(cand, inbox))

    def take_settled(self, now: float) -> None:
        assert self.d.intake is not None
        for key, p in list(self.pending.items()):
            if not os.path.lexists(p.candidate.manifest):
                self.pending.pop(key)
                self.settlers[p.inbox.name].forget(p.candidate)
                continue
            if not self.settlers[p.inbox.name].ready(p.candidate, now, fast=p.fast):
                continue
            self.pending.pop(key)
            self.settlers[p.inbox.name].forget(p.candidate)
            ready = prevalidate(p.candidate, p.inbox, self.d.cfg)
            if ready is None:
                self.claim(p.inbox, p.candidate, now)  # invalid: answered at once
            else:
                self.d.farm.ready[key] = ready

    def pull(self, now: float) -> None:
        """Claim valid drops while the worker has room: highest priority, then oldest, first."""
        if not self.d.farm.ready or self.d.flags.stop:
            return
        assert self.d.store is not None
        room = self.d.farm.capacity(self.d.store, running=self.d.current is not None)
        while room > 0 and self.d.farm.ready:
            r = best(self.d.farm.ready)
            assert r is not None
            self.d.farm.ready.pop(r.candidate.manifest)
            if self.claim(r.inbox, r.candidate, now):
                room -= 1

    def claim(self, inbox: InboxConfig, cand: drops.Candidate, now: float) -> bool:
        """Claim a drop and turn it into a job; False when another daemon was first."""
        assert self.d.intake is not None
        try:
            cl = drops.claim(inbox.path, cand, self.d.farm.instance, now, self.d.cfg.daemon.host)
        except OSError as e:
            logger.error("inbox {}: cannot claim {}: {}; will retry", inbox.name, cand.manifest, e)
            return False
        if cl is None:
            return False  # another daemon took it
        try:
            self.d.intake.ingest(inbox, cl)
        except StoreUnavailable as e:
            self.d.on_store_down(e)
            self.waiting.append((inbox, cl))  # its files wait in the claim
        except Exception as e:  # noqa: BLE001 - one bad drop must not stop the daemon
            self.intake_failed(inbox, cl, e)
        return True

    def intake_failed(self, inbox: InboxConfig, cl: drops.Claim, e: Exception) -> None:
        """An intake that raised (not the store being away): tried again at the next rescans,
        MAX_INTAKE_TRIES in all, then answered: rejected `intake_failed`, or where even that
        cannot be written, its claim folder moved to .dropbox/quarantine/ with the reason."""
        key = str(cl.dir)
        if environmental(e):  # a full disk, a read-only or failing one: not the drop's fault
            if self.tries.get(key) != 0:
                logger.opt(exception=e).warning(
                    "inbox {}: taking claim {} failed ({}); its files are kept in {} and it is "
                    "tried again at the next rescan, until the cause is gone",
                    inbox.name,
                    cl.claim_id,
                    f"{type(e).__name__}: {e}",
                    cl.dir,
                )
            self.tries[key] = 0
            self.waiting.append((inbox, cl))
            return
        n = self.tries[key] = self.tries.get(key, 0) + 1
        if n < MAX_INTAKE_TRIES:
            logger.opt(exception=e).warning(
                "inbox {}: taking claim {} failed (try {} of {}); its files are kept in {} "
                "and it is tried again at the next rescan",
                inbox.name,
                cl.claim_id,
                n,
                MAX_INTAKE_TRIES,
                cl.dir,
            )
            self.waiting.append((inbox, cl))
            return
        self.tries.pop(key, None)
        why = f"{type(e).__name__}: {shown(str(e))[:300]}"
        assert self.d.intake is not None
        try:
            job = self.d.intake.reject_untakeable(inbox, cl, why, n)
            self.d.view.intake_rejected += 1
            logger.opt(exception=e).error(
                "inbox {}: claim {} failed {} times; answered as job {} (rejected, intake_failed)",
                inbox.name,
                cl.claim_id,
                n,
                job.job_id,
            )
        except StoreUnavailable as down:
            self.d.on_store_down(down)
            self.waiting.append((inbox, cl))
        except Exception as again:  # noqa: BLE001
            where = drops.quarantine(inbox.path, cl, f"{why}; and its rejection: {again}")
            self.d.view.quarantined += 1
            logger.opt(exception=again).error(
                "inbox {}: claim {} cannot be taken nor answered ({}); moved to {} with "
                "reason.txt; look at it, fix the drop and drop it again",
                inbox.name,
                cl.claim_id,
                why,
                where,
            )

    def retry_claims(self) -> None:
        """Drops whose intake failed (a full disk, say): try again; their files wait in the claim."""
        assert self.d.store is not None and self.d.intake is not None
        known = self.d.store.claim_dirs()  # first: if the store is away, nothing is dropped
        todo, self.waiting = self.waiting, []
        for inbox, cl in todo:
            if str(cl.dir) in known:
                continue  # it made it into the store after all
            if not cl.dir.is_dir():
                logger.warning(
                    "inbox {}: claim {} is gone (taken over by another instance, or removed) "
                    "while its intake waited here; nothing is left to take",
                    inbox.name,
                    cl.claim_id,
                )
                continue
            try:
                self.d.intake.ingest(inbox, cl, recovered=True)
                self.tries.pop(str(cl.dir), None)
            except StoreUnavailable as e:
                self.d.on_store_down(e)
                self.waiting.append((inbox, cl))
            except Exception as e:  # noqa: BLE001
                self.intake_failed(inbox, cl, e)

    def recover_orphan_claims(self) -> None:
        """Claims this instance made that never reached its database (a crash right after the claim)."""
        assert self.d.store is not None and self.d.intake is not None
        known = self.d.store.claim_dirs()
        stale = self.d.cfg.daemon.stale_claim_seconds
        for inbox in self.d.cfg.inbox:
            for cdir, owner in drops.unfinished_claims(inbox.path, self.d.farm.instance):
                if str(cdir) not in known and drops.discard_if_unfinished(cdir, owner, stale):
                    logger.warning(
                        "inbox {}: removed claim folder {}: a crash left it empty before the "
                        "drop was moved in; the drop itself waits in the inbox and is taken again",
                        inbox.name,
                        cdir.name,
                    )
        for inbox, cdir, owner in self.d.farm.orphans(known, self.d.outbox, {self.d.farm.instance}):
            logger.warning("inbox {}: resuming claim {} left by a crash", inbox.name, cdir.name)
            cl = drops.claim_from(inbox.path, cdir, owner)
            if cl is None:
                continue
            try:
                self.d.intake.adopt(inbox, cl, owner, "intake resumed after a restart")
            except StoreUnavailable:
                logger.warning("inbox {}: claim {} waits for the store", inbox.name, cdir.name)
                self.waiting.append((inbox, cl))
            except Exception as e:  # noqa: BLE001
                self.intake_failed(inbox, cl, e)

    def claim_outranking(self, now: float) -> None:
        """A drop still in the inbox that outranks every job this daemon holds is claimed now."""
        assert self.d.store is not None
        top = best(self.d.farm.ready)
        if top is None:
            return
        queued = self.d.store.queued(limit=1)
        if not queued or top.priority > queued[0].priority:
            self.d.farm.ready.pop(top.candidate.manifest)
            self.claim(top.inbox, top.candidate, now)
