"""Coordination by the shared folder alone: leases are files in each inbox's `.dropbox/`,
each daemon queues what it claimed in its own store, and a dead peer's unfinished jobs are
taken over from their claim folders (base.Coordination.take_over)."""

from __future__ import annotations

import datetime as dt
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
IDLE_LOOK = 0.25  # seconds between looks at the peers' leases while none said it was idle


class FolderCoordination(Coordination):
    own_store = True
    next_look = 0.0  # monotonic: when idle_peer reads the peers' leases again
    peer_idle = False
    _records: SharedRecords | None = None

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
        period when one did, every IDLE_LOOK seconds while none did (a peer renews its lease
        at once when its worker becomes idle)."""
        mono = time.monotonic()
        if mono >= self.next_look:
            leases = self.leases.observe(mono)
            self.peer_idle = any(
                inst != self.instance
                and lease.state == "running"
                and lease.worker == "idle"
                and self.leases.silent_for(inst, mono) < self.stale
                for inst, lease in leases.items()
            )
            self.next_look = mono + (self.lease_every if self.peer_idle else IDLE_LOOK)
        return self.peer_idle

    def _take_over_rows(self) -> list[Job]:
        return []  # a dead peer's rows are in its own store: its claim folders say the rest

    def requeue_strays(self, mine: set[str]) -> None:
        """Nothing to do: this daemon's own store learns of a start only from its worker."""

    def forget(self, job: Job) -> None:
        self.store.forget(job.job_id)  # its new holder records it in its own store

    @property
    def records(self) -> SharedRecords:
        """The peers' task.json records, read again only where one changed."""
        if self._records is None:
            self._records = SharedRecords(self.cfg.daemon.outbox)
        return self._records

    def _jobs(self, want: dict[str, str | None], limit: int) -> list[dict[str, Any]]:
        """Its own jobs from its store (their task.json is not read again), its peers' from
        the shared outbox's task.json; newest first (by created_at, then job_id)."""
        found = {j.job_id: j.record() | {"seq": j.seq} for j in self.store.jobs(limit=1 << 30)}
        for r in self.records.read(skip=set(found)):
            if r.get("instance") != self.instance:
                found[r["job_id"]] = r
        rows = [r for r in found.values() if all(not v or r.get(k) == v for k, v in want.items())]
        rows.sort(key=newest_first, reverse=True)
        return rows[:limit]

    def has_peers(self) -> bool:
        """Whether another instance ever held a lease on these inboxes (a clean stop keeps its
        lease file): if none did, every job of the share is in this daemon's own store."""
        assert isinstance(self.leases, FolderLeases)
        return any(inst != self.instance for inst in self.leases.read_all())

    def peer_records(self) -> list[tuple[float, dict[str, Any]]]:
        """The peers' records with their created_at (epoch), none where there are no peers
        (a status page asks every second: the outbox is not walked for nothing)."""
        if not self.has_peers():
            return []
        mine = self.store.job_ids()
        return [(at, r) for at, r in self.records.timed(mine) if r.get("instance") != self.instance]

    def counts(self) -> dict[str, int]:
        """Its own store's counts (one GROUP BY) and its peers' records counted by state."""
        out = self.store.counts()
        for _, r in self.peer_records():
            out[r["state"]] += 1
        return out

    def page(
        self, want: dict[str, str | None], limit: int, before: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Its own store's page and its peers' records merged by (created_at, job_id), the
        cursor the last row's (each daemon's seq counts only its own jobs, so it cannot
        order the share's). Its own rows come from an indexed query, not the whole store."""
        cut = parse_cursor(before) if before else None
        mine = [
            (j.created_at, j.job_id, j.record() | {"seq": j.seq})
            for j in self.store.page_by_time(want, limit + 1, cut)
        ]
        theirs = [
            (at, r["job_id"], r)
            for at, r in self.peer_records()
            if all(not v or r.get(k) == v for k, v in want.items())
            and (cut is None or (at, r["job_id"]) < cut)
        ]
        rows = sorted(mine + theirs, key=lambda t: (t[0], t[1]), reverse=True)
        more, rows = len(rows) > limit, rows[:limit]
        cursor = f"{rows[-1][0]!r}|{rows[-1][1]}" if more and rows else None
        return [r for _, _, r in rows], cursor

    def leases_by_age(self) -> list[tuple[Lease, float]]:
        assert isinstance(self.leases, FolderLeases)
        return by_age(self.leases)


def parse_cursor(cursor: str) -> tuple[float, str]:
    """A cursor of FolderCoordination.page: the last row's created_at (epoch) and job_id."""
    at, sep, job_id = cursor.partition("|")
    if not sep:
        raise ValueError(f"not a cursor of this page: {cursor!r}")
    return float(at), job_id


def epoch_of(iso: Any) -> float:
    """created_at of a task.json (ISO-8601 UTC) as epoch seconds; 0 where it is not one."""
    try:
        return dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def newest_first(record: dict[str, Any]) -> tuple[str, str]:
    """The order of the share's job list (reversed): created_at (ISO-8601 UTC), then job_id."""
    return str(record.get("created_at") or ""), str(record.get("job_id"))


class SharedRecords:
    """The task.json of every job folder in the shared outbox that holds a well-formed one.

    The share is not trusted: a link, an oversized, torn or forged file is passed over. A
    status page asks every second, so a record is read again only when its file changed
    (its inode, size or mtime): a look at an unchanged outbox is one scandir and an lstat
    per job folder."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.seen: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}
        self.epochs: dict[str, float] = {}  # job_id -> created_at, epoch seconds

    def read(self, skip: Set[str] = frozenset()) -> Iterator[dict[str, Any]]:
        """The records, by folder name, but those named in `skip`."""
        try:
            entries = sorted(os.scandir(self.outbox), key=lambda e: e.name)
        except OSError:
            return
        seen, self.seen = self.seen, {}
        for entry in entries:
            if entry.name in skip or entry.name.startswith(("_", ".")):
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            record = self._record(entry.name, Path(entry.path) / TASK_JSON, seen)
            if record is not None:
                yield record
        for gone in self.epochs.keys() - self.seen.keys():  # folders removed by retention
            del self.epochs[gone]

    def timed(self, skip: Set[str] = frozenset()) -> Iterator[tuple[float, dict[str, Any]]]:
        """read(), each record with its created_at in epoch seconds (worked out once)."""
        for record in self.read(skip):
            name = record["job_id"]
            if name not in self.epochs:
                self.epochs[name] = epoch_of(record.get("created_at"))
            yield self.epochs[name], record

    def _record(
        self, name: str, path: Path, seen: dict[str, tuple[tuple[int, int, int], Any]]
    ) -> dict[str, Any] | None:
        try:
            st = path.lstat()
        except OSError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if name in seen and seen[name][0] == key:
            self.seen[name] = seen[name]
            return seen[name][1]
        try:
            record = read_json(path, TASK_MAX_BYTES)
        except (Refused, ValueError, OSError):
            record = None
        record = record if well_formed(record, name) else None
        self.seen[name] = (key, record)
        self.epochs.pop(name, None)
        return record


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
