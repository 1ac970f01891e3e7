"""The farm's schema: versioned migrations applied by `dropbox-daemon db migrate`, and the
checks a daemon makes at start-up (schema version, its role's rights) before it works.

Migrations are the files sql/postgres/NNN_*.sql, applied in order inside one
transaction under an advisory lock (two operators migrating at once wait for each
other); a released file is never edited. The daemons run with a role that may only
read and write rows: they never run DDL, and refuse to start on a schema older than
their code, naming the command that upgrades it.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
from psycopg import sql

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.store.statements import ADMIN, Migration
from dropbox_daemon.store.statements import migrations as numbered

SCHEMA_LOCK = 0x64726F70  # advisory lock key held while the schema is applied
TABLES = ("jobs", "events", "deliveries", "instances")
SEQUENCES = ("job_seq", "events_id_seq", "deliveries_id_seq")


def migrations() -> tuple[Migration, ...]:
    """The farm's migrations (sql/postgres/NNN_*.sql), version 1 first."""
    return numbered("postgres")


CODE_VERSION = len(migrations())  # the schema this code needs


def current_version(conn: psycopg.Connection) -> int:
    """The database's schema version; 0 where none was applied."""
    with conn.transaction():
        exists = conn.execute(ADMIN.schema_exists).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute(ADMIN.schema_version).fetchone()
    return int(row[0] or 0) if row else 0


def migrate(conn: psycopg.Connection, *, upto: int | None = None, release: str = "") -> list[int]:
    """Apply every migration newer than the database's schema (up to `upto`); the versions
    applied. One transaction: an upgrade that fails leaves the schema as it was."""
    try:
        return _migrate(conn, upto, release)
    except psycopg.errors.InsufficientPrivilege as e:
        raise ConfigError(
            f"db migrate: the role {conn.info.user!r} may not change the schema: "
            f"{str(e).strip().splitlines()[0]}",
            hint="run it as the database's owner: --url postgresql://<owner>@<host>/<db> "
            "(the daemons' own role needs only --grant)",
        ) from None


def _migrate(conn: psycopg.Connection, upto: int | None, release: str) -> list[int]:
    applied = []
    with conn.transaction():
        conn.execute(ADMIN.schema_lock, (SCHEMA_LOCK,))
        have = current_version(conn)
        for m in migrations():
            if m.version <= have or (upto is not None and m.version > upto):
                continue
            for stmt in m.statements():
                conn.execute(stmt)  # type: ignore[arg-type]
            if m.version > 1:  # version 1 records itself (the released file does)
                conn.execute(ADMIN.record_version, (m.version, release or None))
            applied.append(m.version)
    return applied


def grant(conn: psycopg.Connection, role: str) -> None:
    """Give `role` what a daemon needs and nothing more: rows of our tables, our sequences."""
    r = sql.Identifier(role)
    with conn.transaction():
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(_schema(conn)), r)
        )
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, TABLES)), r
            )
        )
        conn.execute(sql.SQL("GRANT SELECT ON schema_version TO {}").format(r))
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, SEQUENCES)), r
            )
        )


def _schema(conn: psycopg.Connection) -> str:
    row = conn.execute(ADMIN.current_schema).fetchone()
    return str(row[0]) if row and row[0] else "public"


def missing_rights(conn: psycopg.Connection) -> list[str]:
    """What the connected role lacks to run a daemon ("INSERT on jobs", ...); [] when nothing."""
    lacks = []
    with conn.transaction():
        for t in TABLES:
            for right in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                row = conn.execute(ADMIN.table_right, (t, right)).fetchone()
                if not row or not row[0]:
                    lacks.append(f"{right} on {t}")
        for s in SEQUENCES:
            row = conn.execute(ADMIN.sequence_right, (s, s)).fetchone()
            if not row or not row[0]:
                lacks.append(f"USAGE on sequence {s}")
    return lacks


def version_and_lacks(conn: psycopg.Connection) -> tuple[int, list[str]]:
    """The schema's version (-1: the role may not even read it) and the rights the role
    lacks where the schema is there (none are looked for in an older or missing one)."""
    try:
        have = current_version(conn)
    except psycopg.errors.InsufficientPrivilege:
        return -1, ["SELECT on schema_version", *missing_rights(conn)]
    return have, (missing_rights(conn) if have >= CODE_VERSION else [])


def check_ready(conn: psycopg.Connection, where: str, config_hint: str) -> int:
    """Refuse to run on a database without our schema, with an older one, or as a role
    that cannot write it; the schema version otherwise (newer than ours is allowed:
    migrations only add, so a daemon of the previous release keeps working during an
    upgrade of the farm)."""
    migrate_cmd = f"dropbox-daemon db migrate{config_hint}"
    have, lacks = version_and_lacks(conn)
    if lacks:
        said = (
            ", ".join(lacks)
            if len(lacks) <= 4
            else f"{', '.join(lacks[:3])} and {len(lacks) - 3} more rights"
        )
        raise ConfigError(
            f"[store] url: the role {conn.info.user!r} lacks {said} in {where}",
            hint=f"as the database's owner: `{migrate_cmd} --grant {conn.info.user}`",
        )
    if have == 0:
        raise ConfigError(
            f"[store] url: the database {where} has no dropbox-daemon schema",
            hint=f"apply it once, as a role that may create tables there (its owner): "
            f"`{migrate_cmd}` (add --grant <role> to give the daemons' role its rights)",
        )
    if have < CODE_VERSION:
        raise ConfigError(
            f"[store] url: the database {where} has schema version {have}; this daemon needs "
            f"version {CODE_VERSION}",
            hint=f"upgrade it as its owner role: `{migrate_cmd}`; the jobs in it are kept",
        )
    return have
