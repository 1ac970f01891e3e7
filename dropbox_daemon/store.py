"""SQLite job store: schema, migrations and the one state machine.

Every change of a job's state goes through Store.transition(), which checks
the move against TRANSITIONS, records an event, and rewrites task.json and
log.txt while it still holds the database's write lock, so the outbox never
disagrees with the database about the order of changes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import BaseModel, Field
from sqlite_utils import Database

from dropbox_daemon import __version__
from dropbox_daemon.errors import IllegalTransition
from dropbox_daemon.outbox import Outbox, utc_iso

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

# Each entry migrates the schema from version i to i+1; never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        inbox TEXT NOT NULL,
        state TEXT NOT NULL,
        stage TEXT,
        progress REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        engine TEXT,
        device TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        host TEXT,
        config_hash TEXT,
        claim_dir TEXT,
        manifest_name TEXT,
        duplicate_of TEXT,
        callback_url TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        queued_at REAL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL,
        timings TEXT NOT NULL DEFAULT '{}',
        inputs TEXT NOT NULL DEFAULT '[]',
        output TEXT,
        error TEXT,
        meta TEXT NOT NULL DEFAULT '{}',
        manifest TEXT
    );
    CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority, seq);
    CREATE INDEX IF NOT EXISTS jobs_inbox ON jobs(inbox, state);
    CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
    """,
    # 2: callback deliveries, written with the job's final state (callbacks.py sends them)
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        trace_id TEXT,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        last_status INTEGER,
        last_error TEXT
    );
    CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at);
    CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id);
    """,
    # 3: newest-first pages for the jobs API, filtered or not
    """
    CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
    CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs(state, seq);
    CREATE INDEX IF NOT EXISTS jobs_inbox_seq ON jobs(inbox, seq);
    """,
    # 4: the instance that holds (renders) a job, and the generation of its claim:
    # bumped at every dispatch and takeover, so a late write of an earlier holder is refused
    """
    ALTER TABLE jobs ADD COLUMN instance TEXT;
    ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS jobs_instance_seq ON jobs(instance, seq);
    """,
]

CALLBACK_STATES = ("done", "failed", "cancelled", "rejected")


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

    A peer that takes a job over renames the claim folder (drops.take_over), so
    a holder that finds its folder gone has lost the job and must write nothing.
    """
    return not job.claim_dir or os.path.isdir(job.claim_dir)


class Store:
    """Owns the SQLite connection: WAL, busy timeout, migrations, transactions."""

    def __init__(self, path: Path, outbox: Outbox, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.outbox = outbox
        self.stale_outbox: set[str] = set()  # jobs whose task.json could not be written
        # called after every committed state change with (job, from_state): metrics
        self.on_change: Callable[[Job, str | None], None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            path, isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False
        )
        self.db = Database(self.conn)
        self.conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    def close(self) -> None:
        self.conn.close()

    # -- plumbing -----------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time across processes."""
        self._pending_changes: list[tuple[Job, str | None]] = []
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        if self.on_change is not None:
            for job, from_state in self._pending_changes:
                self.on_change(job, from_state)

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply every migration newer than the database's user_version."""
        with self.transaction() as c:
            version = int(c.execute("PRAGMA user_version").fetchone()[0])
            for i, sql in enumerate(MIGRATIONS[version:], start=version):
                for stmt in filter(str.strip, sql.split(";")):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version = {i + 1}")

    def _row(self, c: sqlite3.Connection, job_id: str) -> Job | None:
        cur = c.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        row = cur.fetchone()
        if row is None:
            return None
        cols = [d[0] for d in cur.description]
        return Job.from_row(dict(zip(cols, row, strict=True)))

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Job]:
        return [Job.from_row(r) for r in self.db.query(sql, params)]

    def _write(self, c: sqlite3.Connection, job: Job) -> None:
        row = job.to_row()
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        c.execute(f"INSERT OR REPLACE INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))

    def _event(
        self, c: sqlite3.Connection, job: Job, from_state: str | None, detail: str, now: float
    ) -> None:
        c.execute(
            "INSERT INTO events (job_id, at, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)",
            (job.job_id, now, from_state, job.state, detail),
        )
        self._pending_changes.append((job, from_state))
        if job.callback_url and job.state in CALLBACK_STATES:
            c.execute(
                "INSERT INTO deliveries (job_id, trace_id, url, body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
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
        self._outbox_write(job, f"state {arrow}" + (f": {detail}" if detail else ""), now)

    def _outbox_write(self, job: Job, line: str | None, now: float) -> None:
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
                self.outbox.log(job.job_id, job.trace_id, line, at=now)
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
    def create(self, job: Job, detail: str = "") -> Job:
        """Insert a new job in state `received` and write its first task.json."""
        now = time.time()
        with self.transaction() as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            job = job.model_copy(update={"seq": seq, "state": "received", "updated_at": now})
            self._write(c, job)
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
        now = time.time()
        with self.transaction() as c:
            job = self._row(c, job_id)
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
            if to not in TRANSITIONS[job.state]:
                raise IllegalTransition(f"job {job_id!r}: {job.state} -> {to} is not allowed")
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
            self._write(c, job)
            self._event(c, job, from_state, detail, now)
        return job

    def update(self, job_id: str, *, log: str | None = None, **changes: Any) -> Job | None:
        """Change fields that are not the state (progress, inputs, timings); rewrites task.json."""
        now = time.time()
        with self.transaction() as c:
            job = self._row(c, job_id)
            if job is None:
                return None
            job = job.model_copy(update={**changes, "updated_at": now})
            self._write(c, job)
            self._outbox_write(job, log, now)
        return job

    def forget(self, job_id: str) -> None:
        """Drop a job this instance no longer holds (taken over by a peer): its row and events."""
        with self.transaction() as c:
            c.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def held(self) -> list[Job]:
        """Jobs this store holds that have not ended (queued or running)."""
        return self._query(
            "SELECT * FROM jobs WHERE state IN ('received', 'queued', 'preparing', 'rendering', "
            "'encoding') ORDER BY priority DESC, seq ASC"
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
        return self._row(self.conn, job_id)

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

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,)))

    def exists(self, job_id: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            is not None
        )

    def cancel_requested(self) -> list[Job]:
        return self._query("SELECT * FROM jobs WHERE cancel_requested = 1")

    # -- callback deliveries --------------------------------------------------------
    def due_deliveries(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            )
        )

    def next_delivery_in(self, now: float) -> float:
        """Seconds until the next pending delivery is due (60 when there is none)."""
        row = self.conn.execute(
            "SELECT MIN(next_at) FROM deliveries WHERE state = 'pending'"
        ).fetchone()
        return 60.0 if row[0] is None else max(0.0, row[0] - now)

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
        return list(
            self.db.query("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,))
        )

    # -- retention and backups ---------------------------------------------------
    def delete_if_expired(self, job_id: str, cutoff: float) -> Job | None:
        """Delete a job and its events if it is still ended before `cutoff`; the deleted Job or None."""
        with self.transaction() as c:
            job = self._row(c, job_id)
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
            r[0]
            for r in self.conn.execute("SELECT claim_dir FROM jobs WHERE claim_dir IS NOT NULL")
        }

    def backup(self, dest: Path) -> None:
        """An online, consistent copy of the database (sqlite's backup API)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        target = sqlite3.connect(tmp)
        try:
            self.conn.backup(target)
        finally:
            target.close()
        tmp.replace(dest)

    # -- recovery -------------------------------------------------------------
    def recover_interrupted(self) -> list[Job]:
        """At start-up: running jobs go back to queued (attempt counted) or fail past max_attempts.

        A job still `received` was cut off during intake: queued if its manifest
        was valid (its files were moved before the row was written), else rejected.
        """
        out = []
        for job in self._query("SELECT * FROM jobs WHERE state = 'received'"):
            if job.manifest is not None and job.duplicate_of is None:
                out.append(
                    self.transition(job.job_id, "queued", detail="intake resumed after a restart")
                )
            else:
                err = job.error or {
                    "code": "intake_interrupted",
                    "message": "the daemon stopped while taking this drop",
                    "hint": "drop it again; its files are in input/ and in the claim folder",
                    "stage": "validate",
                }
                to = "duplicate" if job.duplicate_of else "rejected"
                out.append(
                    self.transition(
                        job.job_id,
                        to,
                        detail="intake resumed after a restart",
                        error=None if to == "duplicate" else err,
                    )
                )
        for job in self._query(
            "SELECT * FROM jobs WHERE state IN ('preparing', 'rendering', 'encoding')"
        ):
            why = f"the daemon stopped during {job.state} (attempt {job.attempts})"
            if job.attempts >= job.max_attempts:
                err = {
                    "code": "interrupted",
                    "message": f"{why}; {job.attempts} of {job.max_attempts} attempts used",
                    "hint": "look at the daemon's log for why it stopped; `dropbox-daemon retry` runs it again",
                    "stage": job.state,
                }
                out.append(self.transition(job.job_id, "failed", detail=why, error=err))
            else:
                out.append(self.transition(job.job_id, "queued", detail=f"{why}; re-queued"))
        return out
