"""Farm mode on PostgreSQL as operators run it: the kill -9 storm of test_farm on databases
made as other people make them (SQL_ASCII and LATIN1 encodings, PgBouncer in transaction and
session mode, TLS verified against the operator's CA), each reached by a role that may only
read and write rows; a server without enough connection slots
for the farm; an upgrade from the previous release's schema; and the password in none of
what the daemons, the CLI or the outbox show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FARM_DB_KINDS
from farm_support import (
    drop_valid,
    farm,
    instance_of,
    outcome,
    terminal_lines,
)
from pg import PASSWORD
from support import wait_for
from test_farm import INVALID, VALID, storm

from dropbox_daemon.store.pg_conn import connect
from dropbox_daemon.store.pg_schema import CODE_VERSION, grant, migrate


def terminal_ends(admin_url: str) -> dict[str, int]:
    with connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT job_id, count(*) FROM events WHERE to_state IN ('done', 'rejected', "
            "'duplicate') GROUP BY job_id"
        ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def shown_everywhere(ds, outbox: Path) -> str:  # noqa: ANN001
    """Every log, every file in the outbox, and what the CLI prints (status, doctor, jobs,
    db status, in both forms): what an operator or a script can read."""
    parts = [d.log_text() for d in ds]
    parts += [p.read_text(errors="replace") for p in outbox.rglob("*") if p.is_file()]
    for args in (["status"], ["doctor"], ["jobs"], ["db", "status"]):
        for form in ([], ["--json"]):
            r = ds[0].cli(*args, *form)
            parts += [r.stdout, r.stderr]
    return "\n".join(parts)


@pytest.mark.parametrize("kind", FARM_DB_KINDS)
def test_the_kill9_storm_on_a_database_made_by_someone_else(
    daemon_factory, media, tmp_path, farm_db, kind
) -> None:  # noqa: ANN001
    db = farm_db(kind)
    ds = farm(
        daemon_factory, tmp_path, 4, stale_claim_seconds=4.0, store_url=db.url, store=db.store
    )
    for d in ds:
        d.start()
    result = storm(ds, media, tmp_path)
    by = {t["instance"] for t in result.values() if t["state"] == "done"}
    assert len(by) >= 2, by
    ends = terminal_ends(db.admin_url)
    assert set(ends.values()) == {1} and len(ends) == VALID + INVALID
    health = json.loads((ds[0].daemon_dir / "health.json").read_text())
    link = health["store_connection"]
    assert link["server_encoding"] == {"sql_ascii": "SQL_ASCII", "latin1": "LATIN1"}.get(
        kind, "UTF8"
    )
    if kind == "tls":
        assert link["encrypted"] and link["verified"], link
    shown = shown_everywhere(ds, ds[0].outbox)
    assert PASSWORD not in shown
    doctor = json.loads(ds[0].cli("doctor", "--json").stdout)
    store_checks = {c["name"]: c for c in doctor if c["name"].startswith("store")}
    assert store_checks["store: schema"]["status"] == "ok", store_checks
    assert store_checks["store: rights"]["status"] == "ok", store_checks
    tls_check = store_checks["store: connection"]
    assert ("host name verified" in tls_check["detail"]) == (kind == "tls"), tls_check


def health_of(d) -> dict:  # noqa: ANN001
    try:
        return json.loads((d.daemon_dir / "health.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.parametrize("own_server", [10], indirect=True)
def test_too_few_connection_slots_for_the_farm(daemon_factory, media, tmp_path, own_server) -> None:  # noqa: ANN001
    import psycopg

    admin = own_server.new_database()
    role = own_server.dml_role(admin)
    db = admin.rsplit("/", 1)[1]
    url = own_server.url(role, db, password=True)
    # max_connections 10, 3 reserved for superusers: 7 for the role; another service holds 4
    held = [psycopg.connect(url) for _ in range(4)]
    ds = farm(daemon_factory, tmp_path, 4, stale_claim_seconds=4.0, store_url=url)
    try:
        for d in ds:
            d.start(wait_ready=False)

        def said(d) -> bool:  # noqa: ANN001
            return "cannot use the farm's database yet (the server has no connection slot" in (
                d.log_text()
            )

        wait_for(
            lambda: any(said(d) for d in ds), 90, "a daemon to wait for a connection slot", ds[0]
        )
        waiting = [d for d in ds if said(d)]
        wait_for(
            lambda: any(
                "no connection slot free" in (health_of(d).get("store_error") or "")
                for d in waiting
            ),
            30,
            "health.json to say so",
            ds[0],
        )
        inbox, outbox = ds[0].inbox, ds[0].outbox
        ids = [f"v{n:03d}" for n in range(60)]
        for job_id in ids:
            drop_valid(inbox, media, job_id)
        wait_for(
            lambda: sum(t.get("state") == "done" for t in outcome(outbox).values()) >= 10,
            120,
            "10 jobs done by the daemons that got a slot",
            ds[0],
        )
        assert all(d.alive() for d in ds), [d.log_tail() for d in ds]
    finally:
        for c in held:  # the other service goes away: slots free
            c.close()

    def ended() -> dict:
        o = outcome(outbox)
        return o if sum(t.get("state") == "done" for t in o.values()) >= len(ids) else {}

    result = wait_for(ended, 240, "every drop done", ds[0])
    assert sorted(result) == sorted(ids)
    for job_id in ids:
        assert terminal_lines(outbox, job_id) == {"done": 1}, job_id
    assert set(terminal_ends(admin).values()) == {1}
    for d in ds:
        assert d.alive(), d.log_tail()
        # backed off, did not spin: a few lines about it, not one per pass
        assert d.log_text().count("no connection slot free") < 10, d.log_tail()
    wait_for(
        lambda: all(health_of(d).get("store") == "ok" for d in ds), 60, "every store ok", ds[0]
    )
    # the daemons that waited take work now: 4 long jobs, one per idle daemon
    wait_for(lambda: all("worker ready" in d.log_text() for d in ds), 60, "every worker", ds[0])
    more = [f"long{n}" for n in range(4)]
    for job_id in more:
        drop_valid(inbox, media, job_id, long=True)
    tasks = {j: ds[0].wait_state(j, "done", timeout=120) for j in more}
    assert {t["instance"] for t in tasks.values()} == {instance_of(d) for d in ds}, {
        j: t["instance"] for j, t in tasks.items()
    }
    assert PASSWORD not in shown_everywhere(ds, outbox)


def test_the_previous_releases_schema_is_upgraded_by_db_migrate(
    daemon_factory, media, tmp_path, pg_server
) -> None:  # noqa: ANN001
    admin = pg_server.new_database(migrate=False)
    with connect(admin) as conn:
        assert migrate(conn, upto=1) == [1]  # what release 0.1.0 made
        for n in range(3):
            conn.execute(
                "INSERT INTO jobs (job_id, seq, trace_id, inbox, state, created_at, updated_at, "
                "finished_at) VALUES (%s, nextval('job_seq'), %s, 'default', 'done', 1, 1, 1)",
                (f"old{n}", f"trace{n}"),
            )
            conn.execute(
                "INSERT INTO events (job_id, at, from_state, to_state) VALUES (%s, 1, 'encoding', "
                "'done')",
                (f"old{n}",),
            )
    role = pg_server.dml_role(admin)  # the daemons' role, granted on the old schema
    db = admin.rsplit("/", 1)[1]
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    (d,) = farm(
        daemon_factory,
        tmp_path,
        1,
        store_url=pg_server.url(role, db),
        store={"password_file": str(pw)},
    )
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(60) == 3, d.log_tail()
    said = d.log_text()
    assert f"schema version 1; this daemon needs version {CODE_VERSION}" in said, said
    assert "dropbox-daemon db migrate" in said
    # the daemons' role cannot upgrade it, and says why; the owner can
    r = d.cli("db", "migrate")
    assert r.returncode == 3 and "may not change the schema" in r.stderr, r
    r = d.cli("db", "migrate", "--url", admin, "--grant", role)
    assert r.returncode == 0, r.stderr
    assert f"schema version 1 -> {CODE_VERSION}" in r.stdout, r.stdout
    r = d.cli("db", "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["schema_version"] == CODE_VERSION, r
    d.start()
    listed = {j["job_id"]: j for j in json.loads(d.cli("jobs", "--json").stdout)}
    assert {"old0", "old1", "old2"} <= set(listed) and listed["old1"]["state"] == "done"
    drop_valid(d.inbox, media, "new1")
    wait_for(lambda: (d.task("new1") or {}).get("state") == "done", 60, "the new job", d)
    with connect(admin) as conn:
        by = conn.execute("SELECT DISTINCT instance FROM events WHERE job_id = 'new1'").fetchall()
        old = conn.execute("SELECT count(*) FROM events WHERE job_id LIKE 'old%'").fetchone()
    assert by == [(instance_of(d),)] and old == (3,)
    assert PASSWORD not in shown_everywhere([d], d.outbox)
    with connect(admin) as conn:  # a second migrate: nothing to do
        assert migrate(conn) == [] and grant(conn, role) is None
