"""What every part of the store stands on: the hooks a backend supplies (connection,
transactions, the few statements whose SQL differs) and reading rows as Jobs."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store.job import Job
from dropbox_daemon.store.statements import QUERIES as Q


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


class StoreCore:
    """The backend's hooks and the reads every part uses."""

    backend = "base"
    farm = False  # True: one database for every daemon of a farm (PostgreSQL)
    LOCK = ""  # appended to a row read inside a transaction that will write it
    SKIP_LOCKED = ""  # appended where a farm's daemons must not take the same rows

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

    def close(self) -> None:
        raise NotImplementedError

    def _committed(self) -> None:
        changes, self._pending_changes = self._pending_changes, []
        if self.on_change is not None:
            for job, from_state in changes:
                self.on_change(job, from_state)

    # -- reading jobs ---------------------------------------------------------------
    def _row(self, c: Handle, job_id: str, lock: bool = False) -> Job | None:
        rows = rows_of(c.execute(Q.job + (self.LOCK if lock else ""), (job_id,)))
        return Job.from_row(rows[0]) if rows else None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Job]:
        return [Job.from_row(r) for r in self._read(sql, params)]

    def get(self, job_id: str) -> Job | None:
        rows = self._read(Q.job, (job_id,))
        return Job.from_row(rows[0]) if rows else None
