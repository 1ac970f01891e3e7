"""Drops to jobs, the daemon's intake side of each pass: watcher hints and rescans collect
candidates, a candidate is taken once it has settled, a valid one is claimed while the
worker has room (highest priority, then oldest), an invalid one at once; an intake that
failed (a full disk, the database away) is tried again, and claims a crash left behind are
cleared or resumed at start-up."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from dropbox_daemon import access, claims, drops, recovery
from dropbox_daemon.boundary import NOTED
from dropbox_daemon.config import InboxConfig
from dropbox_daemon.coordination import Coordination, best, prevalidate
from dropbox_daemon.coordination.takeover import adopt
from dropbox_daemon.drops import candidate_for
from dropbox_daemon.intake import Intake
from dropbox_daemon.loop import Loop
from dropbox_daemon.names import shown
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import HOST_ERRORS, Store, StoreUnavailable
from dropbox_daemon.watcher import Watcher

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
        if isinstance(seen, HOST_ERRORS):
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
    """The daemon's intake side: from its inboxes (the watcher's hints and rescans) into
    its store, through the intake; `busy()` says whether the worker has a job (the room
    left to claim into)."""

    def __init__(
        self,
        loop: Loop,
        store: Store,
        intake: Intake,
        *,
        watcher: Watcher,
        farm: Coordination,
        outbox: Outbox,
        busy: Callable[[], bool],
    ) -> None:
        self.loop, self.cfg, self.store, self.intake = loop, loop.cfg, store, intake
        self.watcher, self.farm, self.outbox, self.busy = watcher, farm, outbox, busy
        self.settlers = {i.name: drops.Settler(i.settle_seconds) for i in loop.cfg.inbox}
        self.pending: dict[Path, Pending] = {}
        self.waiting: list[tuple[InboxConfig, claims.Claim]] = []  # claims whose intake failed
        self.tries: dict[str, int] = {}  # claim folder -> failed intakes so far

    def collect_hints(self) -> None:
        """The watcher's hints: a drop's manifest appeared or changed."""
        for hint in self.watcher.drain():
            inbox = self.cfg.inbox_by_name(hint.inbox)
            if hint.path.parent == inbox.path:
                self.watcher.follow(inbox.name, hint.path)  # a job folder being filled?
            cand = candidate_for(inbox.path, hint.path)
            if cand is not None:
                p = self.pending.setdefault(cand.manifest, Pending(cand, inbox))
                p.fast = p.fast or hint.renamed

    def rescan(self) -> None:
        """Every rescan_seconds: failed intakes again, then every inbox listed (a missed event,
        a share without events)."""
        if self.waiting:
            self.retry_claims()
        self.watcher.check_inboxes()
        self.watcher.forget_gone()
        for inbox in self.cfg.inbox:
            for cand in drops.scan(inbox.path):
                if cand.manifest not in self.farm.ready:
                    self.pending.setdefault(cand.manifest, Pending(cand, inbox))

    def take_settled(self, now: float) -> None:
        for key, p in list(self.pending.items()):
            if not os.path.lexists(p.candidate.manifest):
                self.pending.pop(key)
                self.settlers[p.inbox.name].forget(p.candidate)
                continue
            if not self.settlers[p.inbox.name].ready(p.candidate, now, fast=p.fast):
                continue
            self.pending.pop(key)
            self.settlers[p.inbox.name].forget(p.candidate)
            ready = prevalidate(p.candidate, p.inbox, self.cfg)
            if ready is None:
                self.claim(p.inbox, p.candidate, now)  # invalid: answered at once
            else:
                self.farm.ready[key] = ready

    def pull(self, now: float) -> None:
        """Claim valid drops while the worker has room: highest priority, then oldest, first."""
        if not self.farm.ready or self.loop.flags.stop:
            return
        room = self.farm.capacity(running=self.busy())
        while room > 0 and self.farm.ready:
            r = best(self.farm.ready)
            assert r is not None
            self.farm.ready.pop(r.candidate.manifest)
            if self.claim(r.inbox, r.candidate, now):
                room -= 1

    def claim(self, inbox: InboxConfig, cand: drops.Candidate, now: float) -> bool:
        """Claim a drop and turn it into a job; False when another daemon was first."""
        try:
            cl = claims.claim(inbox.path, cand, self.farm.instance, now, self.cfg.daemon.host)
        except OSError as e:
            if access.denied(e) and e.filename == str(cand.manifest):  # the writer's doing
                folder = cand.manifest.parent
                NOTED.once(
                    cand.base_dir if cand.job_folder else cand.manifest,
                    f"cannot be claimed: the daemon may not move {cand.manifest.name} out of "
                    f"{folder.name or folder} ({access.who(folder)})",
                    access.TAKEN_ONCE + access.WRITER_FIX,
                )
                logger.debug("inbox {}: {} still cannot be claimed ({})", inbox.name, folder, e)
                return False
            logger.error("inbox {}: cannot claim {}: {}; will retry", inbox.name, cand.manifest, e)
            return False
        if cl is None:
            return False  # another daemon took it
        try:
            self.intake.ingest(inbox, cl)
        except StoreUnavailable as e:
            self.loop.on_store_down(e)
            self.waiting.append((inbox, cl))  # its files wait in the claim
        except Exception as e:  # noqa: BLE001 - one bad drop must not stop the daemon
            self.intake_failed(inbox, cl, e)
        return True

    def intake_failed(self, inbox: InboxConfig, cl: claims.Claim, e: Exception) -> None:
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
        try:
            job = self.intake.reject_untakeable(inbox, cl, why, n)
            self.loop.view.intake_rejected += 1
            logger.opt(exception=e).error(
                "inbox {}: claim {} failed {} times; answered as job {} (rejected, intake_failed)",
                inbox.name,
                cl.claim_id,
                n,
                job.job_id,
            )
        except StoreUnavailable as down:
            self.loop.on_store_down(down)
            self.waiting.append((inbox, cl))
        except Exception as again:  # noqa: BLE001
            where = recovery.quarantine(inbox.path, cl, f"{why}; and its rejection: {again}")
            self.loop.view.quarantined += 1
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
        known = self.store.claim_dirs()  # first: if the store is away, nothing is dropped
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
                self.intake.ingest(inbox, cl, recovered=True)
                self.tries.pop(str(cl.dir), None)
            except StoreUnavailable as e:
                self.loop.on_store_down(e)
                self.waiting.append((inbox, cl))
            except Exception as e:  # noqa: BLE001
                self.intake_failed(inbox, cl, e)

    def recover_orphan_claims(self) -> None:
        """Claims this instance made that never reached its database (a crash right after the claim)."""
        known = self.store.claim_dirs()
        stale = self.cfg.daemon.stale_claim_seconds
        for inbox in self.cfg.inbox:
            for draft in recovery.discard_drafts(inbox.path, self.farm.instance, stale):
                logger.warning(
                    "inbox {}: removed {}: a crash left this claim folder half made; it held "
                    "no file of a drop, and the drop it was for waits in the inbox",
                    inbox.name,
                    draft.name,
                )
            for cdir, owner in recovery.unfinished_claims(inbox.path, self.farm.instance):
                if str(cdir) not in known and recovery.discard_if_unfinished(cdir, owner, stale):
                    logger.warning(
                        "inbox {}: removed claim folder {}: a crash left it empty before the "
                        "drop was moved in; the drop itself waits in the inbox and is taken again",
                        inbox.name,
                        cdir.name,
                    )
        for inbox, cdir, owner in self.farm.orphans(known, self.outbox, {self.farm.instance}):
            logger.warning("inbox {}: resuming claim {} left by a crash", inbox.name, cdir.name)
            cl = claims.claim_from(inbox.path, cdir, owner)
            if cl is None:
                continue
            try:
                adopt(self.intake, inbox, cl, owner, "intake resumed after a restart")
            except StoreUnavailable:
                logger.warning("inbox {}: claim {} waits for the store", inbox.name, cdir.name)
                self.waiting.append((inbox, cl))
            except Exception as e:  # noqa: BLE001
                self.intake_failed(inbox, cl, e)

    def claim_outranking(self, now: float) -> None:
        """A drop still in the inbox that outranks every job this daemon holds is claimed now."""
        top = best(self.farm.ready)
        if top is None:
            return
        queued = self.store.queued(limit=1)
        if not queued or top.priority > queued[0].priority:
            self.farm.ready.pop(top.candidate.manifest)
            self.claim(top.inbox, top.candidate, now)
