"""Coordination through a farm's PostgreSQL: leases are rows aged by the database's clock,
one queue serves the farm, a dead peer's running jobs are re-queued in one statement (their
claim folders renamed to the next generation as the fence), and a start whose reply was
lost with the connection is found and put back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loguru import logger

from dropbox_daemon import claims, recovery
from dropbox_daemon.config import Config
from dropbox_daemon.coordination.base import Coordination
from dropbox_daemon.instances import Lease, StoreLeases
from dropbox_daemon.store import RUNNING, Job
from dropbox_daemon.store.postgres import PostgresStore

# every settled drop goes into the farm's queue at once: no daemon keeps a backlog of its own
UNBOUNDED = 1 << 30


class DatabaseCoordination(Coordination):
    own_store = False

    def __init__(self, cfg: Config, store: PostgresStore) -> None:
        self.db = store
        super().__init__(cfg, store)

    def _leases(self) -> StoreLeases:
        return StoreLeases(self.db, self.me, self.stale)

    def capacity(self, running: bool) -> int:
        return UNBOUNDED

    def _take_over_rows(self) -> list[Job]:
        return self.db.take_over_running(self.instance, self._rename_claim, self.dead)

    def _rename_claim(self, job: Job) -> str | None:
        """recovery.take_over for a job the database re-queues: the fence on the files."""
        if not job.claim_dir:
            return None
        cdir = Path(job.claim_dir)
        owner = claims.read_owner(cdir) or {}
        new = recovery.take_over(cdir, owner, self.instance, time.time(), "the farm's database")
        return str(new) if new else None

    def requeue_strays(self, mine: set[str]) -> None:
        """A job the database says this instance runs, but its worker does not: a start
        whose reply the database never got back to us (the connection broke at the commit)."""
        for job in self.db.held():
            if job.running and job.job_id not in mine:
                logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                    "job {} is {} on this instance in the database but not in its worker "
                    "(a reply lost with the connection); re-queued",
                    job.job_id,
                    job.state,
                )
                self.db.transition(
                    job.job_id,
                    "queued",
                    expect=RUNNING,
                    attempts=max(0, job.attempts - 1),
                    detail="started on a connection that broke before the start was confirmed",
                )

    def forget(self, job: Job) -> None:
        """Nothing: the row belongs to the instance that took the job over."""

    def _jobs(self, want: dict[str, str | None], limit: int) -> list[dict[str, Any]]:
        return [j.record() for j in self.db.jobs(**want, limit=limit)]

    def page(
        self, want: dict[str, str | None], limit: int, before: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One query on the farm's table, its cursor the last row's seq (keyset pagination)."""
        seq = int(before) if before else None  # ValueError: not a cursor of this page
        rows = self.db.page(**want, limit=limit + 1, before_seq=seq)
        more, rows = len(rows) > limit, rows[:limit]
        return [j.record() | {"seq": j.seq} for j in rows], (
            str(rows[-1].seq) if more and rows else None
        )

    def counts(self) -> dict[str, int]:
        return self.db.counts()

    def leases_by_age(self) -> list[tuple[Lease, float]]:
        return [(Lease.from_dict(r), float(r["age"])) for r in self.db.instances()]
