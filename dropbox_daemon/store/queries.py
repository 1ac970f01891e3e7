"""Reading the store: lists, pages and counts of jobs and their events (no writes)."""

from __future__ import annotations

from typing import Any

from dropbox_daemon.store.core import StoreCore
from dropbox_daemon.store.job import STATES, Job
from dropbox_daemon.store.statements import QUERIES as Q

PAGE_FILTERS = ("state", "inbox", "instance")  # the columns a page may be filtered on


class Queries(StoreCore):
    """What the CLI, the web page, health and the main loop read."""

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
        sql, params = page_query(
            {"state": state, "inbox": inbox, "instance": instance}, before_seq, limit
        )
        return self._query(sql, params)

    def page_by_time(
        self, filters: dict[str, str | None], limit: int, before: tuple[float, str] | None
    ) -> list[Job]:
        """Jobs newest first by (created_at, job_id), `limit` of them, older than `before`: the
        order in which several daemons' lists merge (each one's seq counts only its own)."""
        sql, params = page_query(filters, None, limit, by_time=True, before_time=before)
        return self._query(sql, params)

    def queued(self, limit: int = 500) -> list[Job]:
        return self._query(Q.queued, (limit,))

    def count_queued(self) -> int:
        """Jobs waiting in state queued (an index lookup: called on the main loop's every pass)."""
        return int(self._read(Q.count_queued)[0]["n"])

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        out = dict.fromkeys(STATES, 0)
        for r in self._read(Q.counts_by_state):
            out[r["state"]] = int(r["n"])
        return out

    def counts_by_inbox(self) -> dict[str, dict[str, int]]:
        """Jobs waiting or running, by inbox and state."""
        out: dict[str, dict[str, int]] = {}
        for r in self._read(Q.active_by_inbox):
            out.setdefault(r["inbox"], {})[r["state"]] = int(r["n"])
        return out

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._read(Q.events_of_job, (job_id,))

    def job_ids(self) -> set[str]:
        """Every job id in this store (a page of the share skips their task.json)."""
        return {r["job_id"] for r in self._read(Q.job_ids)}

    def exists(self, job_id: str) -> bool:
        return bool(self._read(Q.job_exists, (job_id,)))

    def cancel_requested(self) -> list[Job]:
        return self._query(Q.cancel_requested)

    def held(self) -> list[Job]:
        """Jobs that have not ended and are this daemon's to finish (in a farm: this instance's)."""
        if self.farm:
            return self._query(Q.held_by_instance, (self.instance,))
        return self._query(Q.held)


def page_query(
    filters: dict[str, str | None],
    before_seq: int | None,
    limit: int,
    *,
    by_time: bool = False,
    before_time: tuple[float, str] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The one statement built here rather than named: a page of jobs with only the filters
    given (each a fixed column, so no index is defeated by `? IS NULL OR` tests), newest
    first by seq, or `by_time` by (created_at, job_id)."""
    where, params = [], []
    for col in PAGE_FILTERS:
        if filters.get(col):
            where.append(f"{col} = ?")
            params.append(filters[col])
    if before_seq is not None:
        where.append("seq < ?")
        params.append(before_seq)
    if before_time is not None:
        where.append("(created_at < ? OR (created_at = ? AND job_id < ?))")
        params += [before_time[0], before_time[0], before_time[1]]
    order = "created_at DESC, job_id DESC" if by_time else "seq DESC"
    sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
    return sql + f" ORDER BY {order} LIMIT ?", (*params, limit)
