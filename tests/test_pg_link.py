"""The farm's database as operators run it, one property at a time, on real servers:
text in any encoding, TLS verified or not, the schema and the role's rights checked at
start-up, a frozen server cut off by the client's deadline, a server with no free
connection slot waited out, and no password in any message."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pg import PASSWORD, client_certificate, self_signed_ca

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import Job, StoreUnavailable, pg_schema
from dropbox_daemon.store.pg_conn import LinkSettings, connect, from_ascii, to_ascii
from dropbox_daemon.store.postgres import PostgresStore

ODD = "boîte ☃ 日本語 😀 back\\slash \\u00e9 \\x41 tab\there"


@given(st.text())
def test_ascii_escaping_round_trips_any_text(s: str) -> None:
    assert to_ascii(s).isascii()
    assert from_ascii(to_ascii(s)) == s


@pytest.mark.parametrize("kind", ["sql_ascii", "latin1"])
def test_any_text_survives_a_database_that_is_not_utf8(farm_db, tmp_path, kind) -> None:  # noqa: ANN001
    db = farm_db(kind)
    s = PostgresStore(db.url, Outbox(tmp_path / "out"), instance="me ☃", settings=db.settings())
    try:
        s.create(Job(job_id="j1", inbox=ODD, error={"message": ODD}, meta={"name": ODD}))
        s.transition("j1", "rejected", detail=ODD)
        job = s.get("j1")
        assert job is not None and job.inbox == ODD and job.error == {"message": ODD}
        assert job.meta == {"name": ODD}
        assert [e["detail"] for e in s.events("j1")][-1] == ODD
        assert s.events("j1")[-1]["instance"] == "me ☃"
        assert s.jobs(inbox=ODD)[0].job_id == "j1"  # equality on escaped text still holds
        assert s.security["server_encoding"] == kind.upper()
    finally:
        s.close()
    import psycopg

    # what psql shows: SQL_ASCII holds the UTF-8 bytes, LATIN1 the escaped form
    with psycopg.connect(db.admin_url, client_encoding="UTF8") as conn:
        raw = conn.execute("SELECT inbox FROM jobs").fetchone()[0]
    assert raw == (ODD if kind == "sql_ascii" else to_ascii(ODD))


def test_tls_verified_against_the_operators_ca(farm_db, pg_tls_server, tmp_path) -> None:  # noqa: ANN001
    db = farm_db("tls")
    s = PostgresStore(db.url, Outbox(tmp_path / "out"), instance="me", settings=db.settings())
    try:
        sec = s.security
        assert sec["encrypted"] and sec["verified"] and sec["sslmode"] == "verify-full", sec
        assert "host name verified" in sec["text"]
        s.create(Job(job_id="j1", inbox="a"))
    finally:
        s.close()
    # sslmode=require: encrypted, and the status says the server is not verified
    plain = LinkSettings(password_file=db.store["password_file"], ssl=(("sslmode", "require"),))
    s = PostgresStore(db.url, Outbox(tmp_path / "out"), instance="me2", settings=plain)
    try:
        assert s.security["encrypted"] and not s.security["verified"]
        assert "not verified" in s.security["text"]
    finally:
        s.close()
    # another CA: refused at once, saying it is the certificate
    other = self_signed_ca(tmp_path)
    bad = LinkSettings(
        password_file=db.store["password_file"],
        ssl=(("sslmode", "verify-full"), ("sslrootcert", str(other))),
    )
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        PostgresStore(db.url, Outbox(tmp_path / "out"), instance="me3", settings=bad)
    assert time.monotonic() - t0 < 10
    assert "certificate" in e.value.message and "sslrootcert" in e.value.hint, e.value


def test_a_client_certificate_instead_of_a_password(pg_tls_server, tmp_path) -> None:  # noqa: ANN001
    admin = pg_tls_server.new_database()
    user = "cert_dropbox"  # pg_hba.conf: this role logs in by certificate (tests/pg.py)
    pg_tls_server.admin(f"CREATE ROLE {user} LOGIN")
    with connect(admin) as conn:
        pg_schema.grant(conn, user)
    crt, key = client_certificate(pg_tls_server, user, tmp_path)
    db = admin.rsplit("/", 1)[1].split("?")[0]
    url = f"postgresql://{user}@localhost:{pg_tls_server.port}/{db}"
    ssl = (("sslmode", "verify-full"), ("sslrootcert", str(pg_tls_server.ca)))
    certs = (("sslcert", str(crt)), ("sslkey", str(key)))
    with pytest.raises(ConfigError) as e:  # no certificate: refused at once, said why
        PostgresStore(url, Outbox(tmp_path / "o"), settings=LinkSettings(ssl=ssl))
    assert "certificate" in e.value.message, e.value
    s = PostgresStore(url, Outbox(tmp_path / "o"), settings=LinkSettings(ssl=ssl + certs))
    try:
        s.create(Job(job_id="j1", inbox="a"))
        assert s.security["verified"] and s.get("j1") is not None
    finally:
        s.close()


def test_doctor_names_what_the_database_lacks(pg_server, tmp_path) -> None:  # noqa: ANN001
    from dropbox_daemon import config
    from dropbox_daemon.cli.doctor import Check
    from dropbox_daemon.store import pg_doctor

    def checks(url: str, **store: str) -> dict:
        cfg = config.from_dict(
            {
                "daemon": {"state_dir": str(tmp_path / "s"), "outbox": str(tmp_path / "o")},
                "store": {"url": url, **store},
                "inbox": [{"name": "default", "path": str(tmp_path / "in")}],
            },
            source=tmp_path / "config.toml",
            env={},
        )
        return {c.name: c for c in pg_doctor.checks(cfg, Check)}

    empty = pg_server.new_database(migrate=False)
    got = checks(empty)
    assert got["store: schema"].status == "fail" and "db migrate" in got["store: schema"].fix
    assert got["store: connection"].status == "ok"  # not encrypted, but on this host
    assert got["store: encoding"].status == "ok"
    ready = pg_server.new_database()
    got = checks(ready)
    assert {c.status for c in got.values()} == {"ok"}, got
    assert "max_connections 200" in got["store: connections"].detail
    latin = pg_server.new_database("LATIN1")
    bare = f"bare_{uuid.uuid4().hex[:8]}"
    pg_server.admin(f"CREATE ROLE {bare} LOGIN PASSWORD '{PASSWORD}'")
    db = latin.rsplit("/", 1)[1]
    got = checks(pg_server.url(bare, db, password=True))
    assert got["store: encoding"].status == "warn" and "escaped" in got["store: encoding"].detail
    assert got["store: rights"].status == "fail" and f"--grant {bare}" in got["store: rights"].fix
    wrong = checks(pg_server.url(bare, db).replace(bare, f"{bare}:wrong"))
    assert wrong["store: connection"].status == "fail"
    assert "password authentication failed" in wrong["store: connection"].detail


def test_the_daemon_never_changes_the_schema_and_says_what_to_run(pg_server, tmp_path) -> None:  # noqa: ANN001
    out = Outbox(tmp_path / "out")
    empty = pg_server.new_database(migrate=False)
    with pytest.raises(ConfigError) as e:
        PostgresStore(empty, out, instance="me")
    assert "has no dropbox-daemon schema" in e.value.message
    assert "dropbox-daemon db migrate" in e.value.hint
    with connect(empty) as conn:
        assert pg_schema.current_version(conn) == 0  # the daemon did not apply it
        pg_schema.migrate(conn, upto=1)  # the previous release's schema
    with pytest.raises(ConfigError) as e:
        PostgresStore(empty, out, instance="me")
    assert (
        f"schema version 1; this daemon needs version {pg_schema.CODE_VERSION}" in e.value.message
    )
    assert "db migrate" in e.value.hint


def test_a_role_without_rights_is_refused_naming_the_grant(pg_server, tmp_path) -> None:  # noqa: ANN001
    admin = pg_server.new_database()
    pg_server.admin(f"CREATE ROLE bare_{id(tmp_path)} LOGIN PASSWORD '{PASSWORD}'")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    db = admin.rsplit("/", 1)[1]
    url = pg_server.url(f"bare_{id(tmp_path)}", db)
    with pytest.raises(ConfigError) as e:
        PostgresStore(url, Outbox(tmp_path / "o"), settings=LinkSettings(password_file=str(pw)))
    assert (
        "lacks SELECT on schema_version, SELECT on jobs" in e.value.message
        and "--grant" in e.value.hint
    )


def test_a_password_is_never_in_a_message(pg_server, tmp_path) -> None:  # noqa: ANN001
    admin = pg_server.new_database()
    role = pg_server.dml_role(admin)
    db = admin.rsplit("/", 1)[1]
    wrong = f"postgresql://{role}:{PASSWORD}x@127.0.0.1:{pg_server.port}/{db}"
    with pytest.raises(ConfigError) as e:
        PostgresStore(wrong, Outbox(tmp_path / "o"))
    assert "password authentication failed" in e.value.message
    assert PASSWORD not in e.value.message + e.value.hint
    open_file = tmp_path / "pw"
    open_file.write_text(PASSWORD)
    open_file.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        PostgresStore(
            pg_server.url(role, db),
            Outbox(tmp_path / "o"),
            settings=LinkSettings(password_file=str(open_file)),
        )
    assert "chmod 600" in e.value.hint and PASSWORD not in e.value.message


def test_a_frozen_server_is_cut_off_by_the_clients_deadline(own_server, tmp_path) -> None:  # noqa: ANN001
    url = own_server.new_database()
    settings = LinkSettings(call_timeout=2.0)
    s = PostgresStore(url, Outbox(tmp_path / "o"), instance="me", settings=settings)
    other = PostgresStore(url, Outbox(tmp_path / "o"), instance="me", settings=settings)
    assert other.link is s.link  # one pool per process
    try:
        s.create(Job(job_id="j1", inbox="a"))
        own_server.freeze()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as e:
            s.get("j1")
        took = time.monotonic() - t0
        assert 1.5 < took < 4.0, took
        assert "did not answer within 2 s" in e.value.message
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):  # every thread's store fails fast meanwhile
            other.counts()
        assert time.monotonic() - t0 < 0.5
        own_server.freeze(__import__("signal").SIGCONT)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert s.get("j1") is not None
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not come back"
                time.sleep(0.2)
    finally:
        own_server.freeze(__import__("signal").SIGCONT)
        other.close()
        s.close()


@pytest.mark.parametrize("own_server", [6], indirect=True)
def test_no_free_connection_slot_is_waited_out(own_server, tmp_path) -> None:  # noqa: ANN001
    import psycopg

    admin = own_server.new_database()
    role = own_server.dml_role(admin)
    db = admin.rsplit("/", 1)[1]
    url = own_server.url(role, db, password=True)
    # max_connections 6, 3 reserved for superusers: 3 slots for the role, all taken
    held = [psycopg.connect(url) for _ in range(3)]
    with pytest.raises(ConfigError) as e:  # no waiting (the CLI): said at once
        PostgresStore(url, Outbox(tmp_path / "o"), instance="cli")
    assert "no connection slot free" in e.value.message and PASSWORD not in e.value.message
    waits: list[str] = []

    def on_wait(reason: str, delay: float) -> bool:
        waits.append(reason)
        if len(waits) == 2:
            held.pop().close()  # a slot frees
        time.sleep(0.2)
        return True

    s = PostgresStore(url, Outbox(tmp_path / "o"), instance="d", on_wait=on_wait)
    try:
        assert len(waits) >= 2 and all("no connection slot free" in w for w in waits), waits
        s.create(Job(job_id="j1", inbox="a"))
        # the pool cannot grow past the server's slots: calls from threads still go through
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for _ in range(10):
                    s.get("j1")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    finally:
        s.close()
        for c in held:
            c.close()
