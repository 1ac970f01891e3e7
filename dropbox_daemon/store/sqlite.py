"""The embedded store: SQLite in the daemon's state folder (WAL, busy timeout, migrations).

One database per daemon. Several daemons on one shared inbox coordinate through
the shared folder (coordination/folder.py), not through this database.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store.base import Handle, JobExists, Store

# the database file refused a write for the host's reasons (its disk full, the file locked
# or read-only): not the drop's fault, tried again while it lasts
HOST_ERRORS: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
BACKUP_NAME = "jobs-%Y%m%d-%H%M%S.sqlite3"  # time.strftime, UTC: they sort by age
BACKUP_GLOB = "jobs-*.sqlite3"

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
    # 5: which daemon made each transition (as in the farm's PostgreSQL schema, version 2)
    """
    ALTER TABLE events ADD COLUMN instance TEXT;
    """,
]


class SqliteStore(Store):
    """Owns the SQLite connection: WAL, busy timeout, migrations, transactions."""

    backend = "sqlite"

    def __init__(
        self, path: Path, outbox: Outbox, *, instance: str = "", busy_timeout_ms: int = 10_000
    ) -> None:
        super().__init__(outbox, instance)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            path, isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False
        )
        self.db = Database(self.conn)
        self.conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        self._wal(busy_timeout_ms / 1000)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    def _wal(self, patience: float) -> None:
        """Switch to WAL. Where another connection is creating the same new database, the
        switch answers 'locked' at once (the busy timeout does not cover it): try again."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Handle]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time across processes."""
        self._pending_changes = []
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        self._committed()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def _next_seq(self, c: Handle) -> int:
        return int(c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0])

    def _upsert(self, c: Handle, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        c.execute(f"INSERT OR REPLACE INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))

    def _insert_new(self, c: Handle, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            c.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))
        except sqlite3.IntegrityError as e:
            raise JobExists(f"job {row['job_id']!r} exists already") from e

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
