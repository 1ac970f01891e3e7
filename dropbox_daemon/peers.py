"""What a daemon does for its farm each pass: its lease's fields, adopting the unfinished
jobs of dead peers, re-queueing jobs the database says it runs but its worker does not,
and giving up a job a peer took over while this daemon was frozen or down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger

from dropbox_daemon.store import RUNNING

if TYPE_CHECKING:
    from dropbox_daemon.daemon import Daemon


class PeerDuties:
    """The daemon's farm side (its state is the daemon's; see daemon.py)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d

    def lease_fields(self) -> dict[str, Any]:
        w = self.d.worker
        return {
            "device": (w.info or {}).get("device"),
            "worker": w.state,
            "current_job": self.d.current.job_id if self.d.current else None,
        }

    def take_over(self, mono: float) -> None:
        """Adopt the unfinished jobs of dead peers, as many as the worker has room for."""
        assert self.d.store is not None and self.d.intake is not None
        self.d.farm.observe(mono)
        self.d.view.peers = {k: v.__dict__ for k, v in self.d.farm.peers.items()}
        if self.d.flags.stop or not self.d.farm.may_take_over(mono):
            return
        room = self.d.farm.capacity(self.d.store, running=self.d.current is not None)
        self.d.farm.take_over(self.d.intake, self.d.store, self.d.outbox, room)
        if self.d.store.shared:
            self.requeue_strays()

    def requeue_strays(self) -> None:
        """A farm job the database says this instance runs, but its worker does not: a start
        whose reply the database never got back to us (the connection broke at the commit)."""
        assert self.d.store is not None
        mine = {j for j, _ in self.d.outcomes.unrecorded} | (
            {self.d.current.job_id} if self.d.current else set()
        )
        for job in self.d.store.held():
            if job.running and job.job_id not in mine:
                logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                    "job {} is {} on this instance in the database but not in its worker "
                    "(a reply lost with the connection); re-queued",
                    job.job_id,
                    job.state,
                )
                self.d.store.transition(
                    job.job_id,
                    "queued",
                    expect=RUNNING,
                    attempts=max(0, job.attempts - 1),
                    detail="started on a connection that broke before the start was confirmed",
                )

    def forget_lost(self) -> None:
        """At start-up: jobs a peer took over while this daemon was down are theirs now."""
        assert self.d.store is not None
        for job in self.d.store.held():
            why = self.d.farm.lost(job)
            if why:
                self.d.outcomes.forget(job, why)

    def check_current_held(self) -> None:
        """A daemon that wakes from a freeze stops rendering a job a peer took over meanwhile."""
        assert self.d.store is not None
        cur = self.d.current
        if cur is None:
            return
        job = self.d.store.get(cur.job_id)
        why = self.d.farm.lost(job, cur.generation) if job is not None else None
        if job is None or why is None:
            return
        self.d.worker.kill()
        self.d.worker.state = "dead"
        self.d.current = None
        self.d.outcomes.forget(job, why)
