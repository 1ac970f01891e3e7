"""Coordination by the shared folder alone: leases are files in each inbox's `.dropbox/`,
each daemon queues what it claimed in its own store, and a dead peer's unfinished jobs are
taken over from their claim folders (base.Coordination.take_over)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Any

from dropbox_daemon import claims
from dropbox_daemon.boundary import Refused, read_json
from dropbox_daemon.config import Config
from dropbox_daemon.coordination.base import Coordination
from dropbox_daemon.instances import FolderLeases, Lease
from dropbox_daemon.outbox import TASK_JSON
from dropbox_daemon.store import STATES, Job

TASK_MAX_BYTES = 1 << 20  # a task.json is a few KiB; a bigger one is not a daemon's


class FolderCoordination(Coordination):
    own_store = True
    next_look = 0.0  # monotonic: when idle_peer reads the peers' leases again
    peer_idle = False

    def _leases(self) -> FolderLeases:
        return folder_leases(self.cfg, self.me)

    def capacity(self, running: bool) -> int:
        """The running job plus `prefetch` queued: the rest waits in the inbox for a peer.
        A busy daemon claims nothing ahead while a live peer's worker is idle: that peer
        starts the drop now, where this daemon's prefetch would hold it behind its render
        (the most urgent drop of a burst, first in line, above all)."""
        queued = self.store.count_queued()
        room = 1 + self.cfg.daemon.prefetch - queued - (1 if running else 0)
        if running and room > 0 and self.idle_peer():
            return 0
        return room

    def idle_peer(self) -> bool:
        """A live peer (its lease moving) says its worker is idle; looked at once per lease
        period (a peer's lease says so within one)."""
        mono = time.monotonic()
        if mono >= self.next_look:
            self.next_look = mono + self.lease_every
            leases = self.leases.observe(mono)
            self.peer_idle = any(
                inst != self.instance
                and lease.state == "running"
                and lease.worker == "idle"
                and self.leases.silent_for(inst, mono) < self.stale
                for inst, lease in leases.items()
            )
        return self.peer_idle

    def _take_over_rows(self) -> list[Job]:
        return []  # a dead peer's rows are in its own store: its claim folders say the rest

    def requeue_strays(self, mine: set[str]) -> None:
        """Nothing to do: this daemon's own store learns of a start only from its worker."""

    def forget(self, job: Job) -> None:
        self.store.forget(job.job_id)  # its new holder records it in its own store

    def _jobs(self, want: dict[str, str | None], limit: int) -> list[dict[str, Any]]:
        """Its own jobs from its store (their task.json is not read again), its peers' from
        the shared outbox's task.json."""
        found = {j.job_id: j.record() for j in self.store.jobs(limit=1 << 30)}
        for r in shared_records(self.cfg.daemon.outbox, skip=set(found)):
            if r.get("instance") != self.instance:
                found[r["job_id"]] = r
        rows = [r for r in found.values() if all(not v or r.get(k) == v for k, v in want.items())]
        rows.sort(key=lambda r: str(r.get("created_at") or ""), reverse=True)
        return rows[:limit]

    def leases_by_age(self) -> list[tuple[Lease, float]]:
        assert isinstance(self.leases, FolderLeases)
        return by_age(self.leases)


def shared_records(outbox: Path, skip: Set[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """The task.json of every job folder in the outbox that holds a readable one, but those
    named in `skip` (the share is not trusted: a link, an oversized or a torn file is passed
    over)."""
    try:
        entries = sorted(os.scandir(outbox), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name in skip or entry.name.startswith(("_", ".")):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            record = read_json(Path(entry.path) / TASK_JSON, TASK_MAX_BYTES)
        except (Refused, ValueError, OSError):
            continue
        if well_formed(record, entry.name):
            yield record


def well_formed(record: Any, name: str) -> bool:
    """A task.json as daemons write it: for this folder, a known state, numbers where the
    list prints numbers, text where it prints text."""
    if not isinstance(record, dict) or record.get("job_id") != name:
        return False
    if record.get("state") not in STATES:
        return False
    numbers = (record.get("progress", 0), record.get("attempts", 0))
    texts = [record.get(k) for k in ("inbox", "instance", "engine", "created_at")]
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers) and all(
        v is None or isinstance(v, str) for v in texts
    )


def folder_leases(cfg: Config, me: Lease | None = None) -> FolderLeases:
    """The lease files in the `.dropbox/` of each of this daemon's inboxes."""
    me = me or Lease.mine(cfg.instance_id, cfg.daemon.host, cfg.daemon.state_dir)
    roots = [i.path / claims.DROPBOX_DIR for i in cfg.inbox]
    return FolderLeases(roots, me, cfg.daemon.stale_claim_seconds)


def by_age(leases: FolderLeases) -> list[tuple[Lease, float]]:
    """Each lease file's lease, aged by its renewal time (the writer's clock: for a view)."""
    now = time.time()
    return [(lease, max(0.0, now - lease.renewed_at)) for lease in leases.read_all().values()]
