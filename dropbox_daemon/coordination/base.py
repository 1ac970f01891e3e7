"""How the daemons on one share coordinate: the contract (Coordination) both ways share.

- **Leases**: each instance renews one (by the database's clock in a farm's database, by
  the beat of a lease file on the shared folder), and a peer silent for
  `stale_claim_seconds` (or stopped) is dead: its unfinished jobs are taken over, each
  under its next generation (a claim folder renamed: the fence a thawed holder checks).
- **Pulling work**: a settled valid drop waits in `ready` until this daemon has room for it,
  highest priority then oldest first; an invalid one is answered at once by whoever sees it.
- **What differs, by design** (folder.py, database.py):
  - *the queue*: on the shared folder each daemon queues in its own store what it claimed
    (the running job plus `prefetch`), so an idle daemon never waits behind a busy one's
    backlog; a farm's database holds one queue for all, every drop claimed into it at once.
  - *fairness between inboxes*: one daemon's own queue serves its inboxes in turn (the one
    served longest ago first, within a priority); the farm's queue is priority, then age,
    across the farm, with no turns.
  - *rows*: a daemon's own store holds only its jobs: a job taken over from it is forgotten
    there, a job it takes over is recorded anew; a farm's database holds each row once.
  - *the job list*: a farm's database lists every job; on the shared folder this daemon's
    store holds only its own, so the farm's list is read from the task.json records the
    daemons write to the shared outbox (its own jobs from its store).
  - *strays*: only a database can say this daemon runs a job its worker does not have (a
    start whose reply was lost with the connection); it puts them back in the queue.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from dropbox_daemon import claims, drops, recovery
from dropbox_daemon.config import Config, InboxConfig
from dropbox_daemon.coordination.takeover import adopt
from dropbox_daemon.errors import RejectedDrop
from dropbox_daemon.instances import FolderLeases, Lease, StoreLeases
from dropbox_daemon.intake import Intake
from dropbox_daemon.manifest import parse
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import STATES, TERMINAL, Job, Store, claim_held


@dataclass(frozen=True)
class Ready:
    """A settled, valid drop waiting in the inbox for a daemon with room for it."""

    candidate: drops.Candidate
    inbox: InboxConfig
    priority: int
    mtime: float

    @property
    def rank(self) -> tuple[int, float]:
        return (-self.priority, self.mtime)


def best(ready: dict[Path, Ready]) -> Ready | None:
    """Highest priority, then the oldest manifest."""
    return min(ready.values(), key=lambda r: r.rank, default=None)


def prevalidate(cand: drops.Candidate, inbox: InboxConfig, cfg: Config) -> Ready | None:
    """A valid drop as Ready; None when it is invalid (it is then claimed and answered at once)."""
    try:
        m, _ = parse(cand.manifest, cand.base_dir, inbox.path, cfg.limits, cand.manifest)
        mtime = cand.manifest.lstat().st_mtime
    except (RejectedDrop, OSError):
        return None
    return Ready(cand, inbox, m.priority, mtime)


class Coordination(ABC):
    """This daemon's place among its peers: chosen once, where the store is opened
    (open_coordination): FolderCoordination or DatabaseCoordination."""

    # True: this daemon's store is its own, its queue and its rows (see the module's doc)
    own_store: bool

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg, self.store = cfg, store
        self.instance = cfg.instance_id
        self.stale = cfg.daemon.stale_claim_seconds
        self.lease_every = min(2.0, self.stale / 5)
        self.me = Lease.mine(self.instance, cfg.daemon.host, cfg.daemon.state_dir)
        self.leases = self._leases()
        self.ready: dict[Path, Ready] = {}
        self.ended: set[str] = set()  # claim folders known to hold an ended job
        self.peers: dict[str, Lease] = {}
        self.dead: dict[str, str] = {}
        self.next_renew = 0.0
        self.next_sweep = 0.0
        self.renewing_since: float | None = None  # monotonic: renewals unbroken since then
        self.renewed: float | None = None  # monotonic: when the last renewal got through
        self.said_worker: object = None  # the worker's state in the last renewal

    # -- what each way does its own way ----------------------------------------------
    @abstractmethod
    def _leases(self) -> FolderLeases | StoreLeases:
        """Where the leases are kept."""

    @abstractmethod
    def capacity(self, running: bool) -> int:
        """How many more valid drops this daemon may claim now."""

    @abstractmethod
    def _take_over_rows(self) -> list[Job]:
        """The running jobs of dead peers that the store itself can hand over."""

    @abstractmethod
    def requeue_strays(self, mine: set[str]) -> None:
        """Jobs the store says this daemon runs that are not in `mine` (its worker's job and
        the results it holds): back in the queue."""

    @abstractmethod
    def forget(self, job: Job) -> None:
        """A job this daemon no longer holds (taken over): what its store keeps of it."""

    @abstractmethod
    def leases_by_age(self) -> list[tuple[Lease, float]]:
        """Every instance's lease with its age in seconds."""

    def jobs(
        self,
        *,
        state: str | None = None,
        inbox: str | None = None,
        instance: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Every job of the share (each daemon's, with its instance) as task.json records,
        newest first, filtered."""
        return self._jobs({"state": state, "inbox": inbox, "instance": instance}, limit)

    @abstractmethod
    def _jobs(self, want: dict[str, str | None], limit: int) -> list[dict[str, Any]]:
        """jobs(), `want` the filters (None: any)."""

    @abstractmethod
    def page(
        self, want: dict[str, str | None], limit: int, before: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the share's jobs as task.json records, newest first, filtered by `want`,
        after the cursor `before` (None: from the newest); and the next page's cursor (None:
        this is the last). A cursor is opaque: each way makes and reads its own; ValueError
        for one it did not make."""

    def counts(self) -> dict[str, int]:
        """How many jobs of the share are in each state (every state, zeros included)."""
        out = dict.fromkeys(STATES, 0)
        for r in self.jobs(limit=1 << 30):
            out[r["state"]] += 1
        return out

    # -- the lease -------------------------------------------------------------------
    def register(self, now: float) -> None:
        """ConfigError when a live daemon already runs under this instance id."""
        self.leases.register(now)
        self.renewing_since = time.monotonic()

    def renew(self, now: float, mono: float, **fields: object) -> bool:
        """Renew the lease when due, and at once when the worker has just become idle: a busy
        peer claims nothing ahead while another's worker is idle, and reads that here (a
        worker ready after start-up said "starting" for up to a lease period, and a busy
        peer took the next drop behind its own render meanwhile); True when renewed now."""
        idle_now = fields.get("worker") == "idle" and self.said_worker != "idle"
        if mono < self.next_renew and not idle_now:
            return False
        self.said_worker = fields.get("worker")
        self.next_renew = mono + self.lease_every
        if self.leases.renew(now, **fields):
            through = time.monotonic()  # when it got through, not when the pass began
            if self.renewing_since is None or self.late(through):
                # a renewal held up (the database restarting, the share stalling) is a break
                # as much as one that failed: whatever held this daemon up may have held its
                # peers too, whose leases look old now; they get stale seconds to renew
                self.renewing_since = through
            self.renewed = through
        else:
            self.renewing_since = None
        return True

    def late(self, through: float) -> bool:
        """This renewal came more than half of stale_claim_seconds after the last one."""
        return self.renewed is not None and through - self.renewed > self.stale / 2

    def release(self) -> None:
        self.leases.release(time.time())

    def observe(self, mono: float) -> None:
        """Read the peers' leases; note which are dead."""
        self.peers = self.leases.observe(mono)
        self.dead = self.leases.dead(self.peers, mono)

    def may_take_over(self, mono: float) -> bool:
        """Only after this daemon's own lease has been renewed without a break for
        stale_claim_seconds: after an outage of the share every lease looks old at once."""
        return self.renewing_since is not None and mono - self.renewing_since >= self.stale

    # -- takeover --------------------------------------------------------------------
    def _ended(self, cdir: Path, owner: dict, outbox: Outbox) -> bool:
        if str(cdir) in self.ended:
            return True
        job_id = owner.get("job_id")
        task = outbox.read_task(job_id) if job_id else None
        if task is None:
            return False
        claim = task.get("claim")
        superseded = bool(claim) and recovery.base_claim_id(claim) != recovery.base_claim_id(
            cdir.name
        )
        done = superseded or task.get("state") in TERMINAL  # or a later drop of the id ran since
        if done:
            self.ended.add(str(cdir))
        return done

    def orphans(self, known: set[str], outbox: Outbox, instances: set[str]) -> list:
        """Unfinished claims of `instances` that this daemon's store does not hold:
        (inbox, claim folder, owner), highest priority first."""
        out = []
        for inbox in self.cfg.inbox:
            for cdir, owner in claims.claims_of(inbox.path, instances):
                if str(cdir) in known or self._ended(cdir, owner, outbox):
                    continue
                out.append((inbox, cdir, owner))
        out.sort(key=lambda t: (-int(t[2].get("priority") or 0), t[2].get("claimed_at", 0)))
        return out

    def take_over(self, intake: Intake, outbox: Outbox, room: int) -> list[Job]:
        """Adopt up to `room` unfinished jobs of dead peers; each logged with both instance ids."""
        if not self.dead or room <= 0:
            return []
        taken = self._take_over_rows()
        for job in taken:
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                "job {}: now {} after a takeover by instance {}",
                job.job_id,
                job.state,
                self.instance,
            )
        mono = time.monotonic()
        if mono < self.next_sweep:
            return taken
        # the claim folders of the dead are read at most this often: a share may hold thousands
        self.next_sweep = mono + max(2.0, self.stale / 4)
        for inbox, cdir, owner in self.orphans(self.store.claim_dirs(), outbox, set(self.dead)):
            if len(taken) >= room:
                break
            prior = claims.owner_instance(owner)
            why = (
                f"taken over from instance {prior} by instance {self.instance}: "
                f"{self.dead.get(prior, 'it is gone')}"
            )
            # look again right before the rename: an instance that restarted since the last
            # look renews its lease before it resumes its own claims, so it is not raced
            if prior not in self.leases.dead(
                self.leases.observe(time.monotonic()), time.monotonic()
            ):
                continue
            new = recovery.take_over(cdir, owner, self.instance, time.time(), why)
            if new is None:
                continue  # another daemon was first
            cl = claims.claim_from(inbox.path, new, owner)
            if cl is None:
                if recovery.discard_if_unfinished(new, claims.read_owner(new)):
                    logger.warning(
                        "inbox {}: removed claim folder {} of instance {}: it died before "
                        "moving the drop in; the drop waits in the inbox",
                        inbox.name,
                        cdir.name,
                        prior,
                    )
                continue
            logger.warning("inbox {}: claim {} {}", inbox.name, cdir.name, why)
            # a peer judged dead may record the drop meanwhile: the record then follows the
            # claim folder (handover.follow_claim)
            job = adopt(intake, inbox, cl, claims.read_owner(new) or owner, why)
            if job is not None:
                taken.append(job)
        return taken

    def lost(self, job: Job, generation: int | None = None) -> str | None:
        """Why this daemon no longer holds `job` (taken over), or None. `generation`: the one
        this daemon started it under (a farm's database moves it on at a takeover)."""
        if generation is not None and job.generation != generation:
            return (
                f"it was taken over by instance {job.instance} (generation {job.generation}, "
                f"this daemon had {generation}) while this daemon was silent"
            )
        if claim_held(job):
            return None
        base = recovery.base_claim_id(Path(job.claim_dir or "").name)
        root = Path(job.claim_dir or "").parent
        holder = "another instance"
        for cdir in root.glob(f"{base}.g*"):
            owner = claims.read_owner(cdir) or {}
            holder = f"instance {owner.get('instance', '?')}"
        return f"its claim was taken over by {holder} while this daemon was silent"

    def instances(self) -> list[dict]:
        """Every instance on this daemon's inboxes (the shared folder) or in the farm's
        database."""
        return describe(self.leases_by_age(), self.stale)


def describe(leases: list[tuple[Lease, float]], stale: float) -> list[dict]:
    """Instances as the operator reads them: host, device, worker, state, current job, lease
    age, version; running ones first."""
    out = []
    for lease, age in leases:
        state = lease.state
        if state == "running" and age > stale:
            state = "silent"  # presumed dead: its jobs are taken over
        out.append(
            {
                "instance": lease.instance,
                "host": lease.host,
                "pid": lease.pid,
                "device": lease.device,
                "worker": lease.worker,
                "state": state,
                "current_job": lease.current_job,
                "lease_age_seconds": round(age, 1),
                "version": lease.version,
                "started_at": lease.started_at,
            }
        )
    out.sort(key=lambda r: (r["state"] != "running", r["instance"]))
    return out
