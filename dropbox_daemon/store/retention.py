"""What retention (dropbox_daemon/retention.py) asks of the store: the jobs that ended
before a cutoff, the claim folders still referenced, and deleting a job for good."""

from __future__ import annotations

from dropbox_daemon.store.core import StoreCore
from dropbox_daemon.store.job import TERMINAL, Job
from dropbox_daemon.store.statements import QUERIES as Q


class Retention(StoreCore):
    """Rows past their keep_days, never one that has not ended."""

    def ended_before(self, cutoff: float, inbox: str) -> list[Job]:
        return self._query(Q.ended_before, (inbox, cutoff))

    def delete_if_expired(self, job_id: str, cutoff: float) -> Job | None:
        """Delete a job and its events if it is still ended before `cutoff`; the deleted Job or None."""
        with self.transaction() as c:
            job = self._row(c, job_id, lock=True)
            if job is None or job.state not in TERMINAL or (job.finished_at or cutoff) >= cutoff:
                return None
            c.execute(Q.delete_events_of_job, (job_id,))
            c.execute(Q.delete_deliveries_of_job, (job_id,))
            c.execute(Q.delete_job, (job_id,))
        return job

    def claim_dirs(self) -> set[str]:
        return {r["claim_dir"] for r in self._read(Q.claim_dirs)}
