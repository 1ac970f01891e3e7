from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

from dropbox_daemon.errors import IllegalTransition
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import (
    STATES,
    TRANSITIONS,
    Job,
    JobExists,
    SqliteStore,
    Store,
    pick_next,
)
from dropbox_daemon.store.statements import migrations


@pytest.fixture(
    params=["sqlite", "postgresql", "pg-sql_ascii", "pg-latin1", "pg-pgbouncer-transaction"]
)
def store(request, tmp_path):  # noqa: ANN001, ANN201
    """The same suite on both backends (as Django runs one suite on every database), and
    on PostgreSQL databases as operators make them (encoding, PgBouncer, a DML-only role)."""
    outbox = Outbox(tmp_path / "outbox")
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "db.sqlite3", outbox, instance="me")
    elif request.param == "postgresql":
        from dropbox_daemon.store.postgres import PostgresStore

        s = PostgresStore(request.getfixturevalue("pg_url"), outbox, instance="me")
    else:
        from dropbox_daemon.store.postgres import PostgresStore

        db = request.getfixturevalue("farm_db")(request.param[3:])
        s = PostgresStore(db.url, outbox, instance="me", settings=db.settings())
    yield s
    s.close()


def new(store: Store, job_id: str = "j", **kw) -> Job:  # noqa: ANN003
    kw.setdefault("instance", store.instance)
    return store.create(Job(job_id=job_id, inbox=kw.pop("inbox", "a"), **kw))


def test_sqlite_schema_version_and_wal(tmp_path) -> None:  # noqa: ANN001
    store = SqliteStore(tmp_path / "db.sqlite3", Outbox(tmp_path / "outbox"))
    assert store.schema_version == len(migrations("sqlite"))
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.migrate()  # idempotent
    assert store.schema_version == len(migrations("sqlite"))


def test_migrate_is_idempotent(store: Store) -> None:
    before = store.schema_version
    store.migrate()
    assert store.schema_version == before >= 1


def test_a_job_id_is_unique(store: Store) -> None:
    new(store)
    with pytest.raises(JobExists):
        new(store)
    assert store.counts()["received"] == 1


def test_fence_refuses_a_late_write(store: Store) -> None:
    new(store)
    store.transition("j", "queued")
    job = store.take_next("me", {})
    assert job is not None and job.state == "preparing" and job.generation == 1
    store.transition("j", "rendering", fence=1)
    store.transition("j", "queued", detail="taken over")
    store.take_next("other", {})  # generation 2 now, held by another instance
    with pytest.raises(IllegalTransition):
        store.transition("j", "encoding", fence=1)
    assert store.update("j", progress=0.5, fence=1) is None
    assert store.get("j").instance == "other" and store.get("j").progress == 0.0


def test_take_next_is_priority_then_oldest(store: Store) -> None:
    for job_id, prio in (("low", 0), ("high", 5), ("low2", 0)):
        new(store, job_id, priority=prio)
        store.transition(job_id, "queued")
    order = [store.take_next("me", {}).job_id for _ in range(3)]
    assert order == ["high", "low", "low2"] and store.take_next("me", {}) is None


def test_happy_path_writes_task_json_and_events(store: Store, tmp_path) -> None:  # noqa: ANN001
    new(store)
    for to in ("queued", "preparing", "rendering", "encoding", "done"):
        store.transition("j", to)
    task = json.loads((tmp_path / "outbox" / "j" / "task.json").read_text())
    assert task["state"] == "done" and task["progress"] == 1.0 and task["finished_at"].endswith("Z")
    assert [e["to_state"] for e in store.events("j")] == [
        "received",
        "queued",
        "preparing",
        "rendering",
        "encoding",
        "done",
    ]
    log = (tmp_path / "outbox" / "j" / "log.txt").read_text().splitlines()
    assert len(log) == 6 and all(f"trace={task['trace_id']}" in line for line in log)


def test_a_state_change_retried_after_a_failed_commit_is_logged_once(
    store: Store,
    tmp_path,
    monkeypatch,  # noqa: ANN001
) -> None:
    new(store)
    for to in ("queued", "preparing", "rendering", "encoding"):
        store.transition("j", to)
    real = store.transaction

    @contextmanager
    def commit_fails():  # noqa: ANN202 - log.txt and task.json are written, the commit is not
        with real() as c:
            yield c
            raise RuntimeError("the commit failed")

    monkeypatch.setattr(store, "transaction", commit_fails)
    with pytest.raises(RuntimeError):
        store.transition("j", "done", detail="result.mp4 in 0.07 s")
    monkeypatch.setattr(store, "transaction", real)
    assert store.get("j").state == "encoding"
    store.transition("j", "done", detail="result.mp4 in 0.07 s")  # the daemon's retry
    log = (tmp_path / "outbox" / "j" / "log.txt").read_text()
    assert log.count("encoding -> done: result.mp4 in 0.07 s") == 1
    assert [e["to_state"] for e in store.events("j")].count("done") == 1
    store.transition("j", "queued", detail="run again")
    store.transition("j", "preparing")
    store.transition("j", "queued", detail="run again")  # the same words, not the last line
    assert (tmp_path / "outbox" / "j" / "log.txt").read_text().count("-> queued: run again") == 2
    # killed after log.txt, before the commit; recovered at the restart with other words
    with pytest.raises(RuntimeError):
        monkeypatch.setattr(store, "transaction", commit_fails)
        store.transition("j", "preparing", detail="job j started")
    monkeypatch.setattr(store, "transaction", real)
    store.transition("j", "preparing", detail="intake resumed after a restart")
    text = (tmp_path / "outbox" / "j" / "log.txt").read_text()
    assert text.rstrip().endswith("queued -> preparing: job j started"), text  # once
    assert "intake resumed" not in text


def test_start_up_recovery_skips_a_job_a_peer_took_over_since_its_query(
    store: Store,
    monkeypatch,  # noqa: ANN001
) -> None:
    new(store)
    store.transition("j", "queued")
    stale = store.take_next("me", {})  # running here when this daemon was killed
    assert stale is not None and stale.state == "preparing"
    store.transition("j", "queued", detail="taken over")  # a peer's takeover, meanwhile
    store.take_next("other", {})
    monkeypatch.setattr(store, "_query", lambda *_a, **_k: [stale])  # the read before it
    assert store.recover_interrupted() == []  # was IllegalTransition: the restart crashed
    assert store.get("j").instance == "other" and store.get("j").state == "preparing"


def test_illegal_transitions_are_refused(store: Store) -> None:
    new(store)
    with pytest.raises(IllegalTransition):
        store.transition("j", "done")
    store.transition("j", "rejected")
    for to in ("preparing", "rendering", "done", "duplicate"):
        with pytest.raises(IllegalTransition):
            store.transition("j", to)
    assert store.get("j").state == "rejected"


def test_every_state_has_transitions_defined() -> None:
    assert set(TRANSITIONS) == set(STATES)
    assert all(t <= set(STATES) for t in TRANSITIONS.values())


def test_expect_guards_races(store: Store) -> None:
    new(store)
    store.transition("j", "queued")
    store.transition("j", "cancelled", expect=("queued",))
    with pytest.raises(IllegalTransition):
        store.transition("j", "preparing", expect=("queued",))


def test_recover_interrupted_counts_attempts(store: Store) -> None:
    new(store, "a", max_attempts=2)
    new(store, "b", max_attempts=2)
    for job_id, attempts in (("a", 1), ("b", 2)):
        store.transition(job_id, "queued")
        store.transition(job_id, "preparing", attempts=attempts)
        store.transition(job_id, "rendering")
    store.recover_interrupted()
    assert store.get("a").state == "queued" and store.get("a").attempts == 1
    b = store.get("b")
    assert b.state == "failed" and b.error["code"] == "interrupted"


def test_pick_next_priority_then_fair_between_inboxes() -> None:
    def j(job_id: str, inbox: str, prio: int = 0) -> Job:
        return Job(job_id=job_id, inbox=inbox, priority=prio)

    busy = [j(f"a{i}", "a") for i in range(5)] + [j("b0", "b")]
    assert pick_next(busy, {"a": 10.0}).job_id == "b0"  # b never served: its turn
    assert pick_next(busy, {"a": 10.0, "b": 20.0}).job_id == "a0"  # a waited longer
    urgent = [*busy, j("c0", "c", prio=5)]
    assert pick_next(urgent, {"c": 99.0}).job_id == "c0"  # priority first
    assert pick_next([], {}) is None


def test_counts_include_zeros(store: Store) -> None:
    new(store)
    counts = store.counts()
    assert counts["received"] == 1 and counts["done"] == 0 and set(counts) == set(STATES)


def test_recover_jobs_cut_off_during_intake(store: Store) -> None:
    new(store, "valid", manifest={"audio": "a.wav", "template": "t.png"})
    new(store, "invalid")
    store.recover_interrupted()
    assert store.get("valid").state == "queued"
    bad = store.get("invalid")
    assert bad.state == "rejected" and bad.error["code"] == "intake_interrupted"


def encoding(store: Store, tmp_path, job_id: str, claim_name: str):  # noqa: ANN001, ANN201
    """A job taken by this daemon and encoding, under a claim folder of its own."""
    claim = tmp_path / "claims" / claim_name
    claim.mkdir(parents=True)
    new(store, job_id, claim_dir=str(claim))
    store.transition(job_id, "queued")
    store.take_next("me", {})
    store.transition(job_id, "rendering")
    store.transition(job_id, "encoding")
    return claim


def test_a_result_published_before_a_crash_is_recorded_not_run_again(
    store: Store, tmp_path
) -> None:  # noqa: ANN001
    claim = encoding(store, tmp_path, "pub", "c1")
    # the crash: task.json and the result were written, the database's commit never came
    result = store.outbox.job_dir("pub") / "result.mp4"
    result.write_bytes(b"x" * 1234)
    record = store.get("pub").record() | {"state": "done"}
    record["output"] = {"name": "result.mp4", "bytes": 1234}
    store.outbox.write_task(record)
    store.recover_interrupted()
    job = store.get("pub")
    assert job.state == "done" and job.attempts == 1 and job.output["bytes"] == 1234
    # a result that is not there (or not whole) runs again
    new(store, "torn", claim_dir=str(claim))
    store.transition("torn", "queued")
    store.take_next("me", {})
    store.outbox.write_task(
        store.get("torn").record() | {"state": "done", "output": {"name": "r.mp4", "bytes": 9}}
    )
    store.recover_interrupted()
    assert store.get("torn").state == "queued"


def test_a_recorded_output_whose_done_never_committed_is_done_with_one_log_line(
    store: Store, tmp_path
) -> None:  # noqa: ANN001
    """The output is committed before the move to done, whose log.txt line is written before
    its own commit: a kill between the two leaves the line, and the restart must record the
    job done (not render it again and log `done` twice; seen in the farm's kill -9 storm)."""
    claim = encoding(store, tmp_path, "late", "c2")
    (store.outbox.job_dir("late") / "result.mp4").write_bytes(b"x" * 99)
    output = {"name": "result.mp4", "bytes": 99}
    store.update("late", output=output)
    job = store.get("late")
    store.outbox.log("late", job.trace_id, "state encoding -> done: result.mp4 in 0.2 s", at=1.0)
    store.recover_interrupted()
    job = store.get("late")
    assert job.state == "done" and job.attempts == 1 and job.output == output
    log = (store.outbox.job_dir("late") / "log.txt").read_text()
    assert log.count("-> done") == 1 and "queued" not in log.split("-> done")[-1], log
    # an output whose file is gone (or not whole) runs again
    new(store, "gone", claim_dir=str(claim))
    store.transition("gone", "queued")
    store.take_next("me", {})
    store.update("gone", output={"name": "result.mp4", "bytes": 5})
    store.recover_interrupted()
    assert store.get("gone").state == "queued"
