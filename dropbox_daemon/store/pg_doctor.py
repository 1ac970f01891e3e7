"""`doctor`'s checks of the farm's database: can this daemon connect, is the link encrypted
and the server verified, which encoding, is the schema current, may its role write the
rows, are there connection slots enough for the farm."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import psycopg

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.store import pg_schema
from dropbox_daemon.store.pg_conn import connect, describe_tls, settings_of, text_mode, where
from dropbox_daemon.store.statements import ADMIN

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def checks(cfg: Any, make: Any) -> list[Any]:
    """The checks as `make(name, status, detail, fix)` builds them (doctor.Check)."""
    url = cfg.store.url
    settings = settings_of(cfg)
    try:
        conn = connect(url, settings)
    except ConfigError as e:
        return [make("store: connection", "fail", e.message, e.hint)]
    with conn:
        out = [_link(conn, url, make), _encoding(conn, make)]
        cmd = f"dropbox-daemon db migrate{settings.config_hint}"
        have, lacks = pg_schema.version_and_lacks(conn)
        if have == -1:
            return [*out, _rights(conn.info.user, lacks, cmd, make)]
        if have < pg_schema.CODE_VERSION:
            out.append(
                make(
                    "store: schema",
                    "fail",
                    f"version {have}; this release needs {pg_schema.CODE_VERSION}",
                    f"as the database's owner: `{cmd}` (--url <owner's URL> if [store] url "
                    "is the daemons' role)",
                )
            )
            return out
        need = pg_schema.CODE_VERSION
        out.append(make("store: schema", "ok", f"version {have} (this release needs {need})"))
        out.append(_rights(conn.info.user, lacks, cmd, make))
        out.append(_slots(conn, settings.pool_size, make))
    return out


def _link(conn: psycopg.Connection, url: str, make: Any) -> Any:
    """ok where the server was verified, or a local server is reached in the clear."""
    tls = describe_tls(conn)
    host = urlsplit(url).hostname or ""
    local = host in LOCAL_HOSTS or host.startswith("/")
    if tls["verified"] or (not tls["encrypted"] and local):
        return make("store: connection", "ok", f"{where(url)}: {tls['text']}")
    return make(
        "store: connection",
        "warn",
        f"{where(url)}: {tls['text']}",
        '[store] sslmode = "verify-full" and sslrootcert = "<the CA\'s file>"',
    )


def _encoding(conn: psycopg.Connection, make: Any) -> Any:
    enc = conn.info.parameter_status("server_encoding") or "?"
    return make(
        "store: encoding",
        "ok" if enc == "UTF8" else "warn",
        f"{enc}: {text_mode(enc)}",
        "works as is; for other tools reading it, a UTF8 database is best: CREATE "
        "DATABASE <name> ENCODING 'UTF8' TEMPLATE template0, then db migrate",
    )


def _rights(user: str, lacks: list[str], cmd: str, make: Any) -> Any:
    if not lacks:
        return make("store: rights", "ok", f"role {user!r} may read and write the rows")
    return make(
        "store: rights",
        "fail",
        f"role {user!r} lacks {', '.join(lacks)}",
        f"as the owner: `{cmd} --grant {user}`",
    )


def _slots(conn: psycopg.Connection, pool_size: int, make: Any) -> Any:
    with conn.transaction():
        row = conn.execute(ADMIN.connection_slots).fetchone()
    assert row is not None
    most, reserved, used, daemons = (int(v) for v in row)
    need = max(1, daemons) * pool_size
    detail = (
        f"max_connections {most} ({reserved} reserved for superusers), {used} in use now; "
        f"{max(1, daemons)} daemon(s) x pool_size {pool_size} = {need}"
    )
    if most - reserved < need:
        return make(
            "store: connections",
            "warn",
            detail,
            "raise max_connections on the server, or lower [store] pool_size; daemons "
            "that find no slot wait and retry (health says so)",
        )
    return make("store: connections", "ok", detail)
