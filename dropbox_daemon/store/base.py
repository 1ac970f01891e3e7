"""The job store's contract and its one state machine, shared by both backends.

Every change of a job's state goes through Store.transition(), which checks
the move against TRANSITIONS, records an event, and rewrites task.json and
log.txt while it still holds the row's write lock, so the outbox never
disagrees with the database about the order of changes. A backend (sqlite.py,
postgres.py) supplies the connection, transactions and the few statements
whose SQL differs; every query here is written once with `?` placeholders.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from loguru import logger
from pydantic import BaseModel, Field

from dropbox_daemon import __version__, redact
from dropbox_daemon.errors import DaemonError, IllegalTransition
from dropbox_daemon.outbox import CALLBACK_STATES, Outbox, utc_iso

RUNNING = ("preparing", "rendering", "encoding")
TERMINAL = ("done", "failed", "cancelled", "rejected", "duplicate")
STATES = ("received", "queued", *RUNNING, *TERMINAL)

# from-state -> states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"queued", "rejected", "duplicate", "failed"}),
    "queued": frozenset({"preparing", "cancelled", "failed"}),
    "preparing": frozenset({"rendering", "queued", "failed", "cancelled", "rejected"}),
    "rendering": frozenset({"encoding", "queued", "failed", "cancelled"}),
    "encoding": frozenset({"done", "queued", "failed", "cancelled"}),
    # a retry, a `replace = true` drop, or a fixed re-drop of a rejected job
    "done": frozenset({"queued"}),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "rejected": frozenset({"queued"}),
    "duplicate": frozenset(),
}

JSON_COLUMNS = ("timings", "inputs", "output", "error", "meta", "manifest")


class Job(BaseModel):
    """One job as the store holds it; task.json is its `record()`."""

    job_id: str
    seq: int = 0
    trace_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    inbox: str
    state: str = "received"
    stage: str | None = None
    progress: float = 0.0
    attempts: int = 0
    max_attempts: int = 3
    engine: str | None = None
    device: str | None = None
    priority: int = 0
    host: str | None = None
    instance: str | None = None
    generation: int = 0
    config_hash: str | None = None
    claim_dir: str | None = None
    manifest_name: str | None = None
    duplicate_of: str | None = None
    callback_url: str | None = None
    cancel_requested: int = 0
    created_at: float = Field(default_factory=time.time)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = Field(default_factory=time.time)
    timings: dict[str, float] = Field(default_factory=dict)
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    def record(self) -> dict[str, Any]:
        """The task.json form: times as ISO-8601 UTC, plus the daemon's version."""
        d = self.model_dump(exclude={"seq", "cancel_requested", "claim_dir"})
        if d.get("callback_url"):  # a token in its query or userinfo is not for every reader
            d["callback_url"] = redact.endpoint(d["callback_url"])
        for key in ("created_at", "queued_at", "started_at", "finished_at", "updated_at"):
            d[key] = utc_iso(d[key])
        d["claim"] = Path(self.claim_dir).name if self.claim_dir else None
        d["version"] = __version__
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        data = dict(row)
        for key in JSON_COLUMNS:
            if isinstance(data.get(key), str):
                data[key] = json.loads(data[key])
        return cls.model_validate(data)

    def to_row(self) -> dict[str, Any]:
        data = self.model_dump()
        for key in JSON_COLUMNS:
            if data[key] is not None:
                data[key] = json.dumps(data[key], default=str)
        return data


def pick_next(queued: list[Job], last_served: dict[str, float]) -> Job | None:
    """The job to run next: highest priority, then the inbox served longest ago, then oldest.

    `queued` is ordered by (priority desc, seq asc); an inbox never served counts as
    served at time 0, so a new inbox gets its turn at once.
    """
    if not queued:
        return None
    top = max(j.priority for j in queued)
    best: Job | None = None
    for job in queued:
        if job.priority != top:
            continue
        if best is None or last_served.get(job.inbox, 0.0) < last_served.get(best.inbox, 0.0):
            best = job
    return best


def claim_held(job: Job) -> bool:
    """Whether the job's claim folder is still where this job's record says.

    A peer that takes a job over renames the claim folder (recovery.take_over), so
    a holder that finds its folder gone has lost the job and must write nothing.
    """
    return not job.claim_dir or os.path.isdir(job.claim_dir)


class JobExists(IllegalTransition):
    """A new job's id is taken already (the database's unique key): the drop is a duplicate."""


class StoreUnavailable(DaemonError):
    """The database cannot be reached now; the caller keeps what it has and tries again."""

    code = "store_unavailable"


class Cursor(Protocol):
    description: Any

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Handle(Protocol):
    """A connection inside a transaction; SQL with `?` placeholders."""

    def execute(self, sql: str, params: tuple[Any, ...] = ...) -> Cursor: ...


def rows_of(cur: Cursor) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


ACTIVE = "('received', 'queued', 'preparing', 'rendering', 'encoding')"


class Store:
    """The contract both backends keep; the state machine is written here once."""

    backend = "base"
    shared = False  # True: one database for several daemons (a farm)

    def __init__(self, outbox: Outbox, instance: str = "") -> None:
        self.outbox = outbox
        self.instance = instance
        self.stale_outbox: set[str] = set()  # jobs whose task.json could not be written
        # called after every committed state change with (job, from_state): metrics
        self.on_change: Callable[[Job, str | None], None] | None = None
        self._pending_changes: list[tuple[Job, str | None]] = []

    # -- what a backend supplies ----------------------------------------------------
    def transaction(self) -> AbstractContextManager[Handle]:
        raise NotImplementedError

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, outside any transaction."""
        raise NotImplementedError

    def _upsert(self, c: Handle, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def _insert_new(self, c: Handle, row: dict[str, Any]) -> None:
        """Insert a row; JobExists when its job_id is taken."""
        raise NotImplementedError

    def _next_seq(self, c: Handle) -> int:
        raise NotImplementedError

    LOCK = ""  # appended to a row read inside a transaction that will write it

    def close(self) -> None:
        raise NotImplementedError

    def _committed(self) -> None:
        changes, self._pending_changes = self._pending_changes, []
        if self.on_change is not None:
            for job, from_state in changes:
                self.on_change(job, from_state)

    # -- plumbing -------------------------------------------------------------------
    def _row(self, c: Handle, job_id: str, lock: bool = False) -> Job | None:
        cur = c.execute(
            "SELECT * FROM jobs WHERE job_id = ?" + (self.LOCK if lock else ""), (job_id,)
        )
        rows = rows_of(cur)
        return Job.from_row(rows[0]) if rows else None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Job]:
        return [Job.from_row(r) for r in self._read(sql, params)]

    def _event(self, c: Handle, job: Job, from_state: str | None, detail: str, now: float) -> None:
        c.execute(
            "INSERT INTO events (job_id, at, from_state, to_state, detail, instance) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job.job_id, now, from_state, job.state, detail, self.instance or None),
        )
        self._pending_changes.append((job, from_state))
        if job.callback_url and job.state in CALLBACK_STATES:
            c.execute(
                "INSERT INTO deliveries (job_id, trace_id, url, body, next_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.trace_id,
                    job.callback_url,
                    json.dumps(job.record(), default=str),
                    now,
                    now,
                ),
            )
        arrow = f"{from_state} -> {job.state}" if from_state else job.state
        self._outbox_write(
            job, f"state {arrow}" + (f": {detail}" if detail else ""), now, once=True
        )

    def _outbox_write(self, job: Job, line: str | None, now: float, once: bool = False) -> None:
        """log.txt line and task.json; a full or failing outbox never blocks the database.

        What could not be written is rewritten by flush_outbox() once the outbox works again.
        A job whose claim was taken over by another instance is not written: it is theirs now.
        """
        if not claim_held(job):
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                "job {}: not writing its task.json/log.txt: its claim {} was taken over by "
                "another instance (this one was silent too long)",
                job.job_id,
                job.claim_dir,
            )
            return
        try:
            if line:
                self.outbox.log(job.job_id, job.trace_id, line, at=now, once=once)
            self.outbox.write_task(job.record())
            self.stale_outbox.discard(job.job_id)
        except OSError as e:
            if job.job_id not in self.stale_outbox:
                logger.bind(job_id=job.job_id, trace_id=job.trace_id).error(
                    "outbox: cannot write task.json/log.txt of job {} ({}); the database has the "
                    "truth and the file is rewritten once the outbox can be written again",
                    job.job_id,
                    e.strerror or e,
                )
            self.stale_outbox.add(job.job_id)

    def flush_outbox(self) -> int:
        """Rewrite the task.json of jobs whose last write failed; how many are still stale."""
        for job_id in list(self.stale_outbox):
            job = self.get(job_id)
            if job is None:
                self.stale_outbox.discard(job_id)
                continue
            try:
                self.outbox.write_task(job.record())
                self.outbox.log(
                    job.job_id,
                    job.trace_id,
                    "task.json rewritten: the outbox is writable again",
                    at=time.time(),
                )
                self.stale_outbox.discard(job_id)
            except OSError:
                break
        return len(self.stale_outbox)

    # -- the state machine ----------------------------------------------------
    def create(self, job: Job, detail: str = "", *, replace: bool = False) -> Job:
        """Insert a new job in state `received` and write its first task.json.

        JobExists when the job id is taken (unless `replace`: a takeover's own record).
        """
        now = time.time()
        with self.transaction() as c:
            seq = self._next_seq(c)
            job = job.model_copy(update={"seq": seq, "state": "received", "updated_at": now})
            if replace:
                self._upsert(c, job.to_row())
            else:
                self._insert_new(c, job.to_row())
            self._event(c, job, None, detail, now)
        return job

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        detail: str = "",
        expect: tuple[str, ...] | None = None,
        fence: int | None = None,
        **changes: Any,
    ) -> Job:
        """Move a job to state `to` (IllegalTransition if the machine forbids it), with field changes.

        fence: the generation the caller holds the job under; a newer one (a takeover,
        a later dispatch) refuses the change.
        """
        with self.transaction() as c:
            job = self._row(c, job_id, lock=True)
            if job is None:
                raise IllegalTransition(f"job {job_id!r} does not exist")
            if fence is not None and job.generation != fence:
                raise IllegalTransition(
                    f"job {job_id!r} is held under generation {job.generation} now "
                    f"(by {job.instance}), not {fence}: this write is refused"
                )
            if expect is not None and job.state not in expect:
                raise IllegalTransition(
                    f"job {job_id!r} is {job.state}, expected one of {', '.join(expect)}"
                )
            return self._apply(c, job, to, detail, changes)

    def _apply(self, c: Handle, job: Job, to: str, detail: str, changes: dict[str, Any]) -> Job:
        """The state change itself, inside the caller's transaction, the row locked."""
        now = time.time()
        if to not in TRANSITIONS[job.state]:
            raise IllegalTransition(f"job {job.job_id!r}: {job.state} -> {to} is not allowed")
        update: dict[str, Any] = {"state": to, "updated_at": now, **changes}
        if to in RUNNING:
            update.setdefault("stage", to)
        if to == "queued":
            update.setdefault("queued_at", now)
            update.setdefault("progress", 0.0)
            update.setdefault("cancel_requested", 0)
        if to == "preparing":
            update.setdefault("started_at", now)
        if to in TERMINAL:
            update.setdefault("finished_at", now)
            if to == "done":
                update.setdefault("progress", 1.0)
                update.setdefault("stage", "done")
        from_state = job.state
        job = job.model_copy(update=update)
        self._upsert(c, job.to_row())
        self._event(c, job, from_state, detail, now)
        return job

    def update(
        self, job_id: str, *, log: str | None = None, fence: int | None = None, **changes: Any
    ) -> Job | None:
        """Change fields that are not the state (progress, inputs, timings); rewrites task.json.

        None when the job is gone, or held under another generation than `fence`."""
        now = time.time()
        with self.transaction() as c:
            job = self._row(c, job_id, lock=True)
            if job is None or (fence is not None and job.generation != fence):
                return None
            job = job.model_copy(update={**changes, "updated_at": now})
            self._upsert(c, job.to_row())
            self._outbox_write(job, log, now)
        return job

    def forget(self, job_id: str) -> None:
        """Drop a job this instance no longer holds (taken over by a peer): its row and events."""
        with self.transaction() as c:
            c.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def held(self) -> list[Job]:
        """Jobs that have not ended and are this daemon's to finish (in a farm: this instance's)."""
        if self.shared:
            return self._query(
                f"SELECT * FROM jobs WHERE state IN {ACTIVE} AND state <> 'queued' AND instance = ? "
                "ORDER BY priority DESC, seq ASC",
                (self.instance,),
            )
        return self._query(
            f"SELECT * FROM jobs WHERE state IN {ACTIVE} ORDER BY priority DESC, seq ASC"
        )

    def log(self, job: Job, message: str) -> None:
        """A line in the job's log.txt that is not a state change (best effort on a full disk)."""
        if not claim_held(job):
            return
        try:
            self.outbox.log(job.job_id, job.trace_id, message, at=time.time())
        except OSError as e:
            logger.warning(
                "outbox: cannot append to log.txt of job {}: {}", job.job_id, e.strerror or e
            )

    # -- queries --------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def jobs(
        self,
        *,
        state: str | None = None,
        inbox: str | None = None,
        instance: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs newest first, optionally filtered."""
        return self.page(state=state, inbox=inbox, instance=instance, limit=limit)

    def page(
        self,
        *,
        state: str | None = None,
        inbox: str | None = None,
        instance: str | None = None,
        limit: int = 50,
        before_seq: int | None = None,
    ) -> list[Job]:
        """Jobs newest first, `limit` of them, older than `before_seq` (keyset pagination)."""
        where, params = [], []
        for col, val in (("state", state), ("inbox", inbox), ("instance", instance)):
            if val:
                where.append(f"{col} = ?")
                params.append(val)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        return self._query(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))

    def queued(self, limit: int = 500) -> list[Job]:
        return self._query(
            "SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq ASC LIMIT ?",
            (limit,),
        )

    def count_queued(self) -> int:
        """Jobs waiting in state queued (an index lookup: called on the main loop's every pass)."""
        return int(self._read("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")[0]["n"])

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        out = dict.fromkeys(STATES, 0)
        for r in self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[r["state"]] = int(r["n"])
        return out

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._read("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))

    def exists(self, job_id: str) -> bool:
        return bool(self._read("SELECT 1 AS one FROM jobs WHERE job_id = ?", (job_id,)))

    def cancel_requested(self) -> list[Job]:
        return self._query("SELECT * FROM jobs WHERE cancel_requested = 1")

    # -- callback deliveries --------------------------------------------------------
    SKIP_LOCKED = ""  # appended where a farm's daemons must not take the same rows
    DELIVERY_LEASE = 600.0  # seconds a farm daemon holds the deliveries it took

    def due_deliveries(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        """Pending deliveries that are due; in a farm, leased to this daemon so no other sends them."""
        with self.transaction() as c:
            rows = rows_of(
                c.execute(
                    "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? "
                    "ORDER BY next_at LIMIT ?" + self.SKIP_LOCKED,
                    (now, limit),
                )
            )
            if self.shared:
                for r in rows:
                    c.execute(
                        "UPDATE deliveries SET next_at = ? WHERE id = ?",
                        (now + self.DELIVERY_LEASE, r["id"]),
                    )
        return rows

    def next_delivery_in(self, now: float) -> float:
        """Seconds until the next pending delivery is due (60 when there is none)."""
        rows = self._read("SELECT MIN(next_at) AS t FROM deliveries WHERE state = 'pending'")
        t = rows[0]["t"] if rows else None
        return 60.0 if t is None else max(0.0, t - now)

    def retry_delivery(
        self,
        delivery_id: int,
        *,
        attempts: int,
        next_at: float,
        status: int | None,
        error: str | None,
    ) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE deliveries SET attempts = ?, next_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                (attempts, next_at, status, error, delivery_id),
            )

    def finish_delivery(
        self,
        delivery_id: int,
        state: str,
        *,
        status: int | None = None,
        error: str | None = None,
        attempts: int | None = None,
    ) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE deliveries SET state = ?, finished_at = ?, last_status = ?, last_error = ?, "
                "attempts = COALESCE(?, attempts) WHERE id = ?",
                (state, time.time(), status, error, attempts, delivery_id),
            )

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        return self._read("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,))

    # -- retention and backups ---------------------------------------------------
    def delete_if_expired(self, job_id: str, cutoff: float) -> Job | None:
        """Delete a job and its events if it is still ended before `cutoff`; the deleted Job or None."""
        with self.transaction() as c:
            job = self._row(c, job_id, lock=True)
            if job is None or job.state not in TERMINAL or (job.finished_at or cutoff) >= cutoff:
                return None
            c.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        return job

    def ended_before(self, cutoff: float, inbox: str) -> list[Job]:
        return self._query(
            "SELECT * FROM jobs WHERE inbox = ? AND finished_at < ? AND state IN "
            "('done', 'failed', 'cancelled', 'rejected', 'duplicate') ORDER BY finished_at",
            (inbox, cutoff),
        )

    def claim_dirs(self) -> set[str]:
        return {
            r["claim_dir"]
            for r in self._read("SELECT claim_dir FROM jobs WHERE claim_dir IS NOT NULL")
        }

    def counts_by_inbox(self) -> dict[str, dict[str, int]]:
        """Jobs waiting or running, by inbox and state."""
        out: dict[str, dict[str, int]] = {}
        for r in self._read(
            f"SELECT inbox, state, COUNT(*) AS n FROM jobs WHERE state IN {ACTIVE} "
            "GROUP BY inbox, state"
        ):
            out.setdefault(r["inbox"], {})[r["state"]] = int(r["n"])
        return out

    def take_next(self, instance: str, last_served: dict[str, float], **changes: Any) -> Job | None:
        """The next queued job, moved to `preparing` for `instance`: highest priority, then
        the inbox served longest ago, then the oldest. None when nothing waits."""
        job = pick_next(self.queued(), last_served)
        if job is None:
            return None
        try:
            return self.transition(
                job.job_id,
                "preparing",
                expect=("queued",),
                **self._dispatch_changes(job, instance, changes),
            )
        except IllegalTransition:
            return None  # cancelled meanwhile

    @staticmethod
    def _dispatch_changes(job: Job, instance: str, changes: dict[str, Any]) -> dict[str, Any]:
        return {
            "attempts": job.attempts + 1,
            "generation": job.generation + 1,
            "instance": instance,
            "progress": 0.0,
            "detail": f"attempt {job.attempts + 1} of {job.max_attempts} on instance {instance}",
            **changes,
        }

    # -- recovery -------------------------------------------------------------
    def recover_interrupted(self) -> list[Job]:
        """At start-up: this daemon's interrupted jobs resume (resume_plan says how)."""
        out = []
        mine = " AND instance = ?" if self.shared else ""
        params = (self.instance,) if self.shared else ()
        for job in self._query(
            "SELECT * FROM jobs WHERE state IN ('received', 'preparing', 'rendering', 'encoding')"
            + mine
            + " ORDER BY seq",
            params,
        ):
            if job.state == "received":
                why = "intake resumed after a restart"
            else:
                why = f"the daemon stopped during {job.state} (attempt {job.attempts})"
            to, changes, detail = self.resume_plan(job, why)
            if to == "done":  # recorded in the outbox, not in the database: straight there
                job = self.catch_up(job)
            try:
                out.append(
                    self.transition(
                        job.job_id,
                        to,
                        detail=detail,
                        expect=(job.state,),
                        fence=job.generation,
                        **changes,
                    )
                )
            except IllegalTransition:
                continue  # a farm peer took it over since the query: it is theirs now
        return out

    def resume_plan(self, job: Job, why: str) -> tuple[str, dict[str, Any], str]:
        """resume_plan, but a job whose result was published and whose task.json says done
        (a crash between the outbox write and the database's commit) is done, not run again."""
        task = self.outbox.read_task(job.job_id) if job.state in RUNNING else None
        out = (task or {}).get("output") or {}
        final = self.outbox.job_dir(job.job_id) / str(out.get("name") or "")
        if (
            task is not None
            and task.get("state") == "done"
            and task.get("claim") == (Path(job.claim_dir).name if job.claim_dir else None)
            and out.get("name")
            and final.is_file()
            and final.stat().st_size == out.get("bytes")
        ):
            return (
                "done",
                {"output": out, "timings": task.get("timings") or job.timings},
                f"{why}; its result had been published: recorded as done",
            )
        return resume_plan(job, why)

    def catch_up(self, job: Job, why: str = "after a crash", fence: int | None = None) -> Job:
        """Walk a running job through the stages it missed, so that `done` is a legal move."""
        if job.state not in RUNNING:
            return job
        for stage in RUNNING[RUNNING.index(job.state) + 1 :]:
            job = self.transition(job.job_id, stage, fence=fence, detail=f"recorded late ({why})")
        return job


def resume_plan(job: Job, why: str) -> tuple[str, dict[str, Any], str]:
    """Where an interrupted job goes: (state, field changes, detail).

    A job still `received` was cut off during intake: queued if its manifest was
    valid (its files were moved before the row was written), else rejected. A
    running one goes back to queued (its attempt counted) or fails past max_attempts.
    """
    if job.state == "received":
        if job.manifest is not None and job.duplicate_of is None:
            return "queued", {}, why
        if job.duplicate_of:
            return "duplicate", {"error": None}, why
        err = job.error or {
            "code": "intake_interrupted",
            "message": "the daemon stopped while taking this drop",
            "hint": "drop it again; its files are in input/ and in the claim folder",
            "stage": "validate",
        }
        return "rejected", {"error": err}, why
    if job.attempts >= job.max_attempts:
        err = {
            "code": "interrupted",
            "message": f"{why}; {job.attempts} of {job.max_attempts} attempts used",
            "hint": "look at the daemon's log for why it stopped; `dropbox-daemon retry` runs it again",
            "stage": job.state,
        }
        return "failed", {"error": err}, why
    return "queued", {}, f"{why}; re-queued"
