"""Who is running: each daemon's instance id and its lease, and which peers are alive.

On the shared folder alone (no database) a lease is a small JSON file per
instance in every inbox's `.dropbox/instances/`, rewritten every few seconds
with a counter (`beat`) that goes up. A peer is judged by that counter
changing, timed on the *observer's* monotonic clock: hosts whose clocks
disagree, or a file server that stamps its own mtimes, cannot make a live
daemon look dead. A daemon that has not seen a peer's beat move for
`stale_claim_seconds` of its own time treats the peer as dead; a peer that
stopped cleanly says so (`state = "stopped"`) and is released at once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from loguru import logger
from pydantic import TypeAdapter, ValidationError

from dropbox_daemon import __version__
from dropbox_daemon.boundary import NOTED, Refused, read_json
from dropbox_daemon.errors import ConfigError

INSTANCES_DIR = "instances"  # under <inbox>/.dropbox/


def boot_id() -> str:
    """This boot of this machine: the kernel's boot id and the machine's own host name (not
    [daemon] host, a display name; containers on one kernel have their own names and pids).
    Two leases with one boot id come from one process namespace, where pids can be checked."""
    try:
        kernel = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    return f"{kernel}@{socket.gethostname()}"


def process_started(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


@dataclass
class Lease:
    """What an instance says of itself; the fields the farm view shows."""

    instance: str
    host: str
    pid: int
    boot_id: str
    state_dir: str
    started_at: float
    renewed_at: float = 0.0
    beat: int = 0
    state: str = "running"  # running | stopped
    version: str = __version__
    device: str | None = None
    worker: str | None = None
    current_job: str | None = None

    @classmethod
    def mine(cls, instance: str, host: str, state_dir: Path) -> Lease:
        pid = os.getpid()
        return cls(
            instance=instance,
            host=host,
            pid=pid,
            boot_id=boot_id(),
            state_dir=str(state_dir),
            started_at=process_started(pid) or time.time(),
        )

    @classmethod
    def from_dict(cls, d: Any) -> Lease:
        """A lease from its JSON form, checked field by field (ValueError when it is not one):
        lease files lie on the share, and anyone who can write there can write one."""
        if not isinstance(d, dict):
            raise ValueError(f"a lease is an object of fields, not a {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        try:
            return LEASE_SCHEMA.validate_python({k: v for k, v in d.items() if k in known})
        except ValidationError as e:
            raise ValueError(str(e).splitlines()[0]) from e

    def same_process_alive(self) -> bool | None:
        """True/False where this machine can tell (same boot), None for another machine's lease."""
        if not self.boot_id or self.boot_id != boot_id():
            return None
        started = process_started(self.pid)
        return started is not None and abs(started - self.started_at) < 2.0


LEASE_SCHEMA = TypeAdapter(Lease)
STOPPED_CONFIRM_SECONDS = 5.0  # a peer's "stopped" that stood this long (observer's clock)
LEASE_MAX_BYTES = 64 * 1024
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def clash(other: Lease, me: Lease, stale_seconds: float, now: float) -> str | None:
    """Why `other` (a lease with my instance id) is a live daemon I must not run beside, or None."""
    if other.state == "stopped" or (other.pid == me.pid and other.boot_id == me.boot_id):
        return None
    alive = other.same_process_alive()
    if alive is False:
        return None  # this machine's earlier run of the same instance, now gone
    age = now - other.renewed_at
    if alive is None and age > stale_seconds:
        return None  # another machine's lease, silent longer than stale_claim_seconds
    return (
        f"instance {other.instance!r} is already running: pid {other.pid} on host {other.host} "
        f"(state folder {other.state_dir}, lease renewed {max(0.0, age):.1f} s ago)"
    )


def read_lease(path: Path) -> Lease | None:
    """The lease in a file of .dropbox/instances/, or None: gone, torn by a writer without
    rename, or not a lease (set aside with one log line: a stranger's file must not stop a
    start nor, named for another instance, speak for it)."""
    try:
        lease = Lease.from_dict(read_json(path, LEASE_MAX_BYTES))
    except Refused as e:
        if e.code != "unreadable":
            NOTED.once(path, f"{e.why}; it is no lease", "it is set aside")
        return None
    except ValueError as e:  # daemons write leases by rename: a torn or wrong one is a stranger's
        NOTED.once(path, f"is not a lease ({str(e)[:200]})", "it is set aside")
        return None
    if path.stem != lease.instance or not INSTANCE_NAME.fullmatch(path.stem):
        NOTED.once(path, "is not named for the instance it describes", "it is set aside")
        return None
    return lease


def write_lease(path: Path, lease: dict[str, Any]) -> None:
    """Replace a lease file atomically but without fsync: it is rewritten every few seconds,
    and an fsync per renewal would cost the main loop a disk flush (worse on a share)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(lease))
    os.replace(tmp, path)


def take_lease(leases: Any, other: Lease | None, now: float, where: str) -> None:
    """ConfigError if `other` (the lease found under my id) is a live daemon; else renew mine
    with a beat above it, so that peers see the change."""
    why = clash(other, leases.me, leases.stale_seconds, now) if other else None
    if why:
        raise ConfigError(
            why + where,
            hint="give each daemon its own [daemon] instance (or leave it empty: the default "
            "is unique per host and state folder), or stop the other one first",
        )
    if other is not None:
        leases.me.beat = int(other.beat) + 1
    leases.renew(now)


def next_beat(me: Lease, now: float, fields: dict[str, Any]) -> None:
    for k, v in fields.items():
        setattr(me, k, v)
    me.beat += 1
    me.renewed_at = now


@dataclass
class _Seen:
    mark: tuple[Any, ...]
    since: float  # monotonic time this observer first saw `mark`


@dataclass
class FolderLeases:
    """Leases on the shared folder: this instance's own, and what it sees of its peers."""

    roots: list[Path]  # <inbox>/.dropbox of every inbox
    me: Lease
    stale_seconds: float
    seen: dict[str, _Seen] = field(default_factory=dict)
    failing: str | None = None  # why the last renewal failed
    wrote_once: bool = False
    forged_said: bool = False

    def _file(self, root: Path, instance: str) -> Path:
        return root / INSTANCES_DIR / f"{instance}.json"

    def read_all(self) -> dict[str, Lease]:
        """Every instance's lease found under any inbox (the newest renewal of each)."""
        out: dict[str, Lease] = {}
        for root in self.roots:
            folder = root / INSTANCES_DIR
            try:
                names = sorted(p for p in folder.iterdir() if p.suffix == ".json")
            except OSError:
                continue
            for path in names:
                lease = read_lease(path)
                if lease is None:
                    continue
                prior = out.get(lease.instance)
                if prior is None or lease.renewed_at > prior.renewed_at:
                    out[lease.instance] = lease
        return out

    def register(self, now: float) -> None:
        """Refuse to run beside a live daemon of the same instance id; then take the lease."""
        take_lease(self, self.read_all().get(self.me.instance), now, "")

    def renew(self, now: float, **fields: Any) -> bool:
        """Rewrite the lease with a higher beat in every inbox; False when a write failed."""
        last = (self.me.pid, self.me.boot_id, self.me.beat, self.me.state)
        next_beat(self.me, now, fields)
        failed = None
        for root in self.roots:
            path = self._file(root, self.me.instance)
            self._check_not_forged(path, last)
            try:
                (root / INSTANCES_DIR).mkdir(parents=True, exist_ok=True)
                write_lease(path, asdict(self.me))
            except OSError as e:
                failed = f"{root}: {e.strerror or e}"
        if failed and failed != self.failing:
            logger.error(
                "lease: cannot renew instance {}'s lease ({}); peers take over its jobs after "
                "{:.0f} s of this",
                self.me.instance,
                failed,
                self.stale_seconds,
            )
        self.failing = failed
        self.wrote_once = self.wrote_once or failed is None
        return failed is None

    def _check_not_forged(self, path: Path, last: tuple) -> None:
        """Say so where this instance's lease is not what it last wrote: someone else writes
        it (.dropbox/ writable by others?), and peers may be told it stopped. An older beat
        of its own is no forgery (a renewal that failed)."""
        if not self.wrote_once:
            return  # the first renewal finds the previous run's lease
        found = read_lease(path)  # None where there is none
        pid, boot, beat, state = last
        if found is None:
            return
        mine = found.pid == pid and found.boot_id == boot and found.beat <= beat
        if not mine or (found.beat == beat and found.state != state):
            if not self.forged_said:
                logger.error(
                    "lease: {} was rewritten by someone else (pid {}, state {}); peers may "
                    "take this instance's jobs over; make .dropbox/ writable by the daemons' "
                    "user only (docs/operations.md, 'Who can write the share')",
                    path,
                    found.pid,
                    found.state,
                )
                self.forged_said = True

    def release(self, now: float) -> None:
        """Say this instance stopped cleanly, so that peers may take its queued drops at once."""
        self.renew(now, state="stopped", current_job=None)

    def observe(self, mono: float) -> dict[str, Lease]:
        """Read every lease and note, on this host's clock, when each one last changed."""
        leases = self.read_all()
        for inst, lease in leases.items():
            mark = (lease.beat, lease.started_at, lease.pid, lease.state)
            seen = self.seen.get(inst)
            if seen is None or seen.mark != mark:
                self.seen[inst] = _Seen(mark, mono)
        return leases

    def silent_for(self, instance: str, mono: float) -> float:
        seen = self.seen.get(instance)
        return 0.0 if seen is None else mono - seen.since

    def dead(self, leases: dict[str, Lease], mono: float) -> dict[str, str]:
        """Peers whose jobs may be taken over now: instance -> why."""
        out = {}
        for inst, lease in leases.items():
            if inst == self.me.instance:
                continue
            silent = self.silent_for(inst, mono)
            if lease.state == "stopped":
                # a stop is believed once it stood for a few seconds: a live daemon rewrites
                # its lease within lease_every (2 s), so a forged "stopped" cannot take its jobs
                gone = lease.same_process_alive() is False  # on this host: checked by pid
                if gone or silent >= min(self.stale_seconds, STOPPED_CONFIRM_SECONDS):
                    out[inst] = "it stopped"
                continue
            if silent >= self.stale_seconds:
                out[inst] = f"its lease has not been renewed for {silent:.0f} s"
        return out


@dataclass
class StoreLeases:
    """Leases in a farm's database: renewed and aged by the database's clock."""

    store: Any  # PostgresStore
    me: Lease
    stale_seconds: float
    ages: dict[str, float] = field(default_factory=dict)
    failing: str | None = None

    def register(self, now: float) -> None:
        """Refuse to run beside a live daemon of the same instance id; then take the lease."""
        row = self.store.register_instance(asdict(self.me))
        other = None
        if row is not None:
            other = Lease.from_dict(row)
            other.renewed_at = now - float(row["age"])  # the database's age, on this clock
        take_lease(self, other, now, " (per the farm's database)")

    def renew(self, now: float, **fields: Any) -> bool:
        from dropbox_daemon.store import StoreUnavailable

        next_beat(self.me, now, fields)
        try:
            self.store.renew_instance(asdict(self.me))
        except StoreUnavailable as e:
            if self.failing is None:
                logger.error(
                    "lease: cannot renew instance {}'s lease: {}; the farm takes over its jobs "
                    "after {:.0f} s of this",
                    self.me.instance,
                    e.message,
                    self.stale_seconds,
                )
            self.failing = e.message
            return False
        if self.failing is not None:
            logger.info("lease: instance {}'s lease is renewed again", self.me.instance)
        self.failing = None
        return True

    def release(self, now: float) -> None:
        self.renew(now, state="stopped", current_job=None)

    def observe(self, mono: float) -> dict[str, Lease]:
        from dropbox_daemon.store import StoreUnavailable

        try:
            rows = self.store.instances()
        except StoreUnavailable:
            return {}
        self.ages = {r["instance"]: float(r["age"]) for r in rows}
        return {r["instance"]: Lease.from_dict(r) for r in rows}

    def dead(self, leases: dict[str, Lease], mono: float) -> dict[str, str]:
        out = {}
        for inst, lease in leases.items():
            if inst == self.me.instance:
                continue
            age = self.ages.get(inst, 0.0)
            if lease.state == "stopped":
                out[inst] = "it stopped"
            elif age >= self.stale_seconds:
                out[inst] = f"its lease has not been renewed for {age:.0f} s"
        return out
