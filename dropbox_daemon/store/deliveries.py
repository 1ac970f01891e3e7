"""Callback deliveries: written by the state machine with a job's final state, sent by
callbacks.py, which takes the due ones, and records each attempt and the outcome."""

from __future__ import annotations

import time
from typing import Any

from dropbox_daemon.store.core import StoreCore, rows_of
from dropbox_daemon.store.statements import QUERIES as Q


class Deliveries(StoreCore):
    """The deliveries table: due ones taken (in a farm, leased), retried, finished."""

    DELIVERY_LEASE = 600.0  # seconds a farm daemon holds the deliveries it took

    def due_deliveries(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        """Pending deliveries that are due; in a farm, leased to this daemon so no other sends them."""
        with self.transaction() as c:
            rows = rows_of(c.execute(Q.due_deliveries + self.SKIP_LOCKED, (now, limit)))
            if self.farm:
                for r in rows:
                    c.execute(Q.lease_delivery, (now + self.DELIVERY_LEASE, r["id"]))
        return rows

    def next_delivery_in(self, now: float) -> float:
        """Seconds until the next pending delivery is due (60 when there is none)."""
        rows = self._read(Q.next_delivery_at)
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
            c.execute(Q.retry_delivery, (attempts, next_at, status, error, delivery_id))

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
            c.execute(Q.finish_delivery, (state, time.time(), status, error, attempts, delivery_id))

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        return self._read(Q.deliveries_of_job, (job_id,))
