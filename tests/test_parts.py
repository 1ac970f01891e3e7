"""Each part of the daemon (claiming, supervise, outcomes, peers) built here from the
collaborators it takes, as daemon.py builds them, on a real SQLite store, inbox and outbox,
with no daemon and no worker process: the worker handle's own state rules run, and the
test plays its process (what it is sent, what it says, when it dies)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dropbox_daemon import claims, config
from dropbox_daemon.claiming import Claiming
from dropbox_daemon.coordination import Coordination, open_coordination
from dropbox_daemon.health import DaemonView
from dropbox_daemon.intake import Intake
from dropbox_daemon.loop import Flags, Loop
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.notify import Notifier
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.outcomes import Outcomes
from dropbox_daemon.parts import make_parts
from dropbox_daemon.peers import PeerDuties
from dropbox_daemon.protocol import Cancel, JobOrder, Result
from dropbox_daemon.store import Store, StoreUnavailable, open_store
from dropbox_daemon.supervise import Supervisor
from dropbox_daemon.watcher import Watcher
from dropbox_daemon.worker import WorkerHandle


class PlayedWorker(WorkerHandle):
    """A worker handle whose process the test plays; its state is the handle's own."""

    def __init__(self, cfg: config.Config) -> None:
        super().__init__(cfg)
        self.sent: list[Any] = []  # the protocol's orders, as the handle was given them
        self.living = False
        self.kills = 0
        self.number = 7000
        self.last_words = ["Traceback (most recent call last):", "RuntimeError: boom"]

    @property
    def pid(self) -> int | None:
        return self.number

    def start(self) -> None:
        self.number += 1
        self.living = True
        self.state = "starting"

    def alive(self) -> bool:
        return self.living

    def send(self, order: Any) -> bool:
        self.sent.append(order)
        return self.living

    def kill(self) -> None:
        self.kills += 1
        self.living = False
        self.state = "stopped"

    def output_tail(self, n: int = 12, wait: float = 5.0) -> list[str]:
        return list(self.last_words)

    def exit_description(self) -> str:
        return "killed by signal SIGSEGV" if not self.living else "still running"

    def says(self, **msg: Any) -> None:
        self.messages.put({**msg, "worker_pid": self.number})

    def ready(self) -> None:
        self.says(type="ready", pid=self.number, device="cpu")


@dataclass
class Bench:
    cfg: config.Config
    loop: Loop
    store: Store
    outbox: Outbox
    farm: Coordination
    worker: PlayedWorker
    claiming: Claiming
    supervisor: Supervisor
    outcomes: Outcomes
    peers: PeerDuties
    downs: list[StoreUnavailable]

    def queue(self, media, job_id: str, now: float = 1000.0) -> None:  # noqa: ANN001
        """A drop put in the inbox, seen, settled and claimed into the store."""
        folder = self.cfg.inbox[0].path / job_id
        folder.mkdir()
        shutil.copy(media.tone, folder / "a.wav")
        shutil.copy(media.image, folder / "t.png")
        (folder / "job.json").write_text(
            json.dumps({"job_id": job_id, "audio": "a.wav", "template": "t.png"})
        )
        self.claiming.rescan()
        self.claiming.take_settled(now)
        self.claiming.take_settled(now + 10.0)
        self.claiming.pull(now + 10.0)

    def pass_(self) -> None:
        self.supervisor.handle_worker(time.time())


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Bench]:
    cfg = config.from_dict(
        {
            "daemon": {
                "state_dir": str(tmp_path / "state"),
                "outbox": str(tmp_path / "outbox"),
                "max_attempts": 2,
                "job_timeout_seconds": 100.0,
                "hang_seconds": 30.0,
                "prefetch": 1,
            },
            "inbox": [{"name": "default", "path": str(tmp_path / "inbox"), "settle_seconds": 2.0}],
        },
        source=tmp_path / "config.toml",
        env={},
    )
    for p in (cfg.daemon.state_dir, cfg.daemon.outbox, cfg.inbox[0].path):
        p.mkdir(parents=True)
    claims.make_dropbox(cfg.inbox[0].path)
    outbox = Outbox(cfg.daemon.outbox)
    store = open_store(cfg, outbox)
    farm = open_coordination(cfg, store)
    farm.register(time.time())
    intake = Intake(cfg, store, outbox, own_store=farm.own_store)
    downs: list[StoreUnavailable] = []
    loop = Loop(cfg, Flags(), DaemonView(), downs.append)
    worker = PlayedWorker(cfg)
    made = make_parts(
        loop,
        store,
        intake,
        worker,
        watcher=Watcher(cfg.inbox, 60.0),  # never started: the test calls rescan itself
        farm=farm,
        outbox=outbox,
        notifier=Notifier(""),
        metrics=Metrics("t"),
    )
    worker.start()
    yield Bench(
        cfg,
        loop,
        store,
        outbox,
        farm,
        worker,
        made.claiming,
        made.supervisor,
        made.outcomes,
        made.peers,
        downs,
    )
    store.close()


def started(p: Bench, media, job_id: str) -> None:  # noqa: ANN001
    """The job queued, the worker ready, and the job sent to it."""
    p.queue(media, job_id)
    p.worker.ready()
    p.pass_()
    p.supervisor.dispatch(time.time())
    assert p.supervisor.current is not None and p.supervisor.current.job_id == job_id


def test_claiming_holds_one_job_beyond_the_running_one(parts: Bench, media) -> None:  # noqa: ANN001
    """prefetch = 1: an idle worker's daemon claims two drops, a busy one's one more."""
    started(parts, media, "first")
    for n in range(3):
        parts.queue(media, f"more{n}")
    queued = [j.job_id for j in parts.store.queued(limit=10)]
    assert queued == ["more0"]  # the running job plus one: the rest wait in the inbox
    assert len(parts.farm.ready) == 2


def test_a_job_order_reaches_the_worker_and_its_result_ends_the_job(parts: Bench, media) -> None:  # noqa: ANN001
    started(parts, media, "j1")
    order = parts.worker.sent[-1]
    assert isinstance(order, JobOrder) and order.job.job_id == "j1"
    assert order.job.outbox_dir == str(parts.outbox.job_dir("j1"))
    assert order.job.output is not None and order.job.output.name == "result.mp4"  # resolved here
    assert parts.worker.state == "busy" and parts.store.get("j1").state == "preparing"  # type: ignore[union-attr]
    parts.worker.says(type="stage", job_id="j1", stage="rendering")
    parts.worker.says(type="log", job_id="j1", message="frames: 25")
    parts.pass_()
    assert parts.store.get("j1").state == "rendering"  # type: ignore[union-attr]
    assert "frames: 25" in (parts.outbox.job_dir("j1") / "log.txt").read_text()
    parts.worker.says(
        type="result",
        job_id="j1",
        outcome="failed",
        error={"code": "engine_failed", "stage": "rendering", "message": "no face", "hint": "h"},
    )
    parts.pass_()
    job = parts.store.get("j1")
    assert job is not None and job.state == "failed" and job.error["code"] == "engine_failed"
    assert parts.supervisor.current is None and parts.worker.state == "idle"
    assert json.loads((parts.outbox.job_dir("j1") / "error.json").read_text())["code"] == (
        "engine_failed"
    )


def test_a_worker_death_requeues_its_job_with_its_last_words_then_fails_it(
    parts: Bench,
    media,  # noqa: ANN001
) -> None:
    started(parts, media, "crash")
    for attempt in (1, 2):
        parts.worker.living = False  # the process ends by itself
        parts.pass_()
        job = parts.store.get("crash")
        assert job is not None and job.attempts == attempt and parts.supervisor.current is None
        if attempt == 1:
            assert job.state == "queued"
            assert parts.worker.alive() and parts.worker.state == "starting"  # a new one at once
            assert parts.worker.restarts == 1
            parts.worker.ready()
            parts.pass_()
            parts.supervisor.dispatch(time.time())
    assert job.state == "failed" and job.error["code"] == "worker_failed"
    assert "killed by signal SIGSEGV (attempt 2 of 2)" in job.error["message"]
    assert job.error["worker_output"][-1] == "RuntimeError: boom"
    assert (parts.outbox.job_dir("crash") / "input" / "a.wav").exists()


def test_a_worker_that_dies_before_it_is_ready_is_held_back(parts: Bench) -> None:
    parts.worker.living = False  # died while starting
    parts.pass_()
    assert parts.worker.state == "restarting" and parts.worker.restarts == 0
    assert parts.supervisor.restart_at is not None
    parts.supervisor.restart_at = time.monotonic() - 0.1  # its back-off has passed
    parts.pass_()
    assert parts.worker.state == "starting" and parts.worker.restarts == 1


def test_a_hung_worker_is_killed_and_its_job_requeued(parts: Bench, media) -> None:  # noqa: ANN001
    started(parts, media, "hang")
    parts.supervisor.current.last_heard -= 31.0  # type: ignore[union-attr]
    parts.pass_()
    job = parts.store.get("hang")
    assert job is not None and job.state == "queued" and job.attempts == 1
    assert parts.worker.kills >= 1 and parts.supervisor.current is None
    assert "sent nothing for 30 s (hung)" in (parts.outbox.job_dir("hang") / "log.txt").read_text()


def test_a_cancel_the_worker_does_not_honour_kills_it(parts: Bench, media) -> None:  # noqa: ANN001
    started(parts, media, "c1")
    parts.store.update("c1", cancel_requested=1)
    parts.supervisor.handle_cancels(time.time())
    assert parts.worker.sent[-1] == Cancel(job_id="c1")
    parts.supervisor.current.cancel_sent_at -= 2.0  # type: ignore[union-attr]
    parts.pass_()
    job = parts.store.get("c1")
    assert job is not None and job.state == "cancelled" and parts.supervisor.current is None


def test_stopping_requeues_the_running_job_without_counting_it(parts: Bench, media) -> None:  # noqa: ANN001
    started(parts, media, "s1")
    parts.supervisor.abandon("the daemon was stopped during the job")
    job = parts.store.get("s1")
    assert job is not None and job.state == "queued" and job.attempts == 0
    assert parts.supervisor.current is None and not parts.worker.alive()


def test_a_result_the_store_cannot_take_is_kept_and_recorded_later(parts: Bench, media) -> None:  # noqa: ANN001
    started(parts, media, "r1")
    real = parts.store.transition

    def away(*a: Any, **kw: Any) -> Any:
        raise StoreUnavailable("the database connection failed: test")

    parts.store.transition = away  # type: ignore[method-assign]
    msg = Result(job_id="r1", outcome="cancelled", error={"code": "cancelled", "message": "asked"})
    parts.outcomes.record("r1", msg, parts.supervisor.current.generation)  # type: ignore[union-attr]
    assert [j for j, _, _ in parts.outcomes.unrecorded] == ["r1"]
    parts.store.transition = real  # type: ignore[method-assign]
    parts.outcomes.retry_unrecorded()
    assert parts.outcomes.unrecorded == [] and parts.store.get("r1").state == "cancelled"  # type: ignore[union-attr]


def test_a_job_taken_over_meanwhile_is_given_up_and_its_worker_stopped(
    parts: Bench,
    media,  # noqa: ANN001
) -> None:
    """A peer moved the job to its next generation while this daemon was frozen."""
    started(parts, media, "t1")
    assert parts.peers.lease_fields() == {"device": "cpu", "worker": "busy", "current_job": "t1"}
    parts.peers.check_current_held()  # still its own: nothing happens
    assert parts.supervisor.current is not None
    parts.store.update("t1", generation=parts.supervisor.current.generation + 1)
    parts.peers.check_current_held()
    assert parts.supervisor.current is None and parts.worker.state == "dead"
    assert parts.store.get("t1") is None  # forgotten here (one host: the row is its own)
    assert parts.peers.lease_fields()["current_job"] is None


def test_a_message_that_is_not_the_protocols_is_set_aside(parts: Bench, media) -> None:  # noqa: ANN001
    started(parts, media, "p1")
    parts.worker.says(type="stage", job_id="p1", stage="exploding")  # no such stage
    parts.worker.says(type="result", job_id="p1", outcome="done")  # done, without its output
    parts.worker.says(type="teleport", job_id="p1")
    parts.pass_()
    job = parts.store.get("p1")
    assert job is not None and job.state == "preparing" and parts.supervisor.current is not None
    assert parts.worker.refused == {"stage", "result", "teleport"}
    parts.worker.says(type="stage", job_id="p1", stage="rendering")  # the protocol's: acted on
    parts.pass_()
    assert parts.store.get("p1").state == "rendering"  # type: ignore[union-attr]


class CountedBeats:
    """A scheduler stand-in that counts the heartbeats asked for now."""

    def __init__(self) -> None:
        self.beats = 0

    def beat_now(self) -> None:
        self.beats += 1


def test_the_reporter_shares_each_change_once_and_says_an_outage_once(parts: Bench, media) -> None:  # noqa: ANN001
    """The view is copied from the worker handle and the running job; health.json is asked
    for at once only where something a reader acts on changed; the store's outage is said
    once, its return once, and the view says why meanwhile."""
    import threading

    from loguru import logger

    from dropbox_daemon.reporting import Reporter

    said: list[str] = []
    sink = logger.add(lambda m: said.append(str(m)), level="INFO")
    beats = CountedBeats()
    view = parts.loop.view
    report = Reporter(
        parts.cfg,
        view,
        Metrics(),
        Notifier(""),
        beats,  # type: ignore[arg-type]
        parts.worker,
        current=lambda: parts.supervisor.current,
        wake=threading.Event(),
        flags=Flags(),
    )
    try:
        report.share()
        assert beats.beats == 1 and view.worker_state == "starting" and view.worker_pid == 7001
        report.share()
        assert beats.beats == 1  # nothing changed: no write
        started(parts, media, "j1")
        report.share()
        assert beats.beats == 2 and view.worker_state == "busy" and view.current_job == "j1"
        for _ in range(3):
            report.store_down(StoreUnavailable("the database went away"))
        assert view.store_error == "the database went away"
        report.store_back()
        report.store_back()
    finally:
        logger.remove(sink)
    assert sum("store: unreachable" in m for m in said) == 1, said
    assert sum("store: reachable again" in m for m in said) == 1, said
    assert view.store_error is None and report.store_down_why is None
