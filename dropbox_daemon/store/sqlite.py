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
from dropbox_daemon.store.base import Store
from dropbox_daemon.store.core import Handle
from dropbox_daemon.store.job import JobExists
from dropbox_daemon.store.statements import SQLITE, migrations

# the database file refused a write for the host's reasons (its disk full, the file locked
# or read-only): not the drop's fault, tried again while it lasts
HOST_ERRORS: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
BACKUP_NAME = "jobs-%Y%m%d-%H%M%S.sqlite3"  # time.strftime, UTC: they sort by age
BACKUP_GLOB = "jobs-*.sqlite3"


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
        return int(c.execute(SQLITE.next_seq).fetchone()[0])

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
        return int(self.conn.execute(SQLITE.schema_version).fetchone()[0])

    def migrate(self) -> None:
        """Apply every migration (sql/sqlite/NNN_*.sql) newer than the database's user_version."""
        with self.transaction() as c:
            version = int(c.execute(SQLITE.schema_version).fetchone()[0])
            for m in migrations("sqlite")[version:]:
                for stmt in m.statements():
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version = {int(m.version)}")

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
