"""The daemon's parts wired together, once its store is open: each given what it uses (the
shared state in loop.py, the store, the worker handle, the intake, the farm), none given the
daemon. daemon.py runs them; tests build them with a worker whose process they play."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dropbox_daemon.claiming import Claiming
from dropbox_daemon.coordination import Coordination
from dropbox_daemon.intake import Intake
from dropbox_daemon.loop import Loop
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.outcomes import Outcomes
from dropbox_daemon.peers import PeerDuties
from dropbox_daemon.store import Store
from dropbox_daemon.supervise import Supervisor
from dropbox_daemon.watcher import Watcher

if TYPE_CHECKING:
    from dropbox_daemon.worker import WorkerHandle


@dataclass
class Parts:
    claiming: Claiming  # drops to jobs
    supervisor: Supervisor  # the worker and the job it has
    outcomes: Outcomes  # how jobs end
    peers: PeerDuties  # the farm


def make_parts(
    loop: Loop,
    store: Store,
    intake: Intake,
    worker: WorkerHandle,
    *,
    watcher: Watcher,
    farm: Coordination,
    outbox: Outbox,
    notifier: Notifier,
    metrics: Metrics,
) -> Parts:
    outcomes = Outcomes(store, outbox, farm)
    held: list[Supervisor] = []  # claiming asks whether the worker is busy: bound below
    claiming = Claiming(
        loop, store, intake, watcher=watcher, farm=farm, outbox=outbox, busy=lambda: held[0].busy()
    )
    supervisor = Supervisor(
        loop,
        store,
        worker,
        outbox=outbox,
        farm=farm,
        intake=intake,
        outcomes=outcomes,
        notifier=notifier,
        metrics=metrics,
        claim_outranking=claiming.claim_outranking,
    )
    held.append(supervisor)
    peers = PeerDuties(
        loop,
        store,
        intake,
        outbox=outbox,
        farm=farm,
        worker=worker,
        supervisor=supervisor,
        outcomes=outcomes,
    )
    return Parts(claiming, supervisor, outcomes, peers)
