"""What a daemon does for its farm each pass: its lease's fields, adopting the unfinished
jobs of dead peers, re-queueing jobs the database says it runs but its worker does not,
and giving up a job a peer took over while this daemon was frozen or down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dropbox_daemon.coordination import Coordination
from dropbox_daemon.intake import Intake
from dropbox_daemon.loop import Loop
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.outcomes import Outcomes
from dropbox_daemon.store import Store
from dropbox_daemon.supervise import Supervisor

if TYPE_CHECKING:
    from dropbox_daemon.worker import WorkerHandle


class PeerDuties:
    """The daemon's farm side: its lease (through `farm`), and the jobs of its peers."""

    def __init__(
        self,
        loop: Loop,
        store: Store,
        intake: Intake,
        *,
        outbox: Outbox,
        farm: Coordination,
        worker: WorkerHandle,
        supervisor: Supervisor,
        outcomes: Outcomes,
    ) -> None:
        self.loop, self.store, self.intake, self.outbox, self.farm = (
            loop,
            store,
            intake,
            outbox,
            farm,
        )
        self.worker, self.supervisor, self.outcomes = worker, supervisor, outcomes

    def lease_fields(self) -> dict[str, Any]:
        cur = self.supervisor.current
        return {
            "device": (self.worker.info or {}).get("device"),
            "worker": self.worker.state,
            "current_job": cur.job_id if cur else None,
        }

    def renew(self, now: float, mono: float) -> None:
        """This daemon's lease, when due; then whether the job it runs is still its own."""
        if self.farm.renew(now, mono, **self.lease_fields()):
            self.check_current_held()

    def take_over(self, mono: float) -> None:
        """Adopt the unfinished jobs of dead peers, as many as the worker has room for."""
        self.farm.observe(mono)
        self.loop.view.peers = {k: v.__dict__ for k, v in self.farm.peers.items()}
        if self.loop.flags.stop or not self.farm.may_take_over(mono):
            return
        room = self.farm.capacity(running=self.supervisor.busy())
        self.farm.take_over(self.intake, self.outbox, room)
        cur = self.supervisor.current
        mine = {j for j, _, _ in self.outcomes.unrecorded} | ({cur.job_id} if cur else set())
        self.farm.requeue_strays(mine)

    def forget_lost(self) -> None:
        """At start-up: jobs a peer took over while this daemon was down are theirs now."""
        for job in self.store.held():
            why = self.farm.lost(job)
            if why:
                self.outcomes.forget(job, why)

    def check_current_held(self) -> None:
        """A daemon that wakes from a freeze stops rendering a job a peer took over meanwhile."""
        cur = self.supervisor.current
        if cur is None:
            return
        job = self.store.get(cur.job_id)
        why = self.farm.lost(job, cur.generation) if job is not None else None
        if job is None or why is None:
            return
        self.supervisor.give_up(job, why)
