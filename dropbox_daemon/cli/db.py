"""`db migrate` and `db status`: the farm database's schema."""

from __future__ import annotations

import argparse

from dropbox_daemon import __version__
from dropbox_daemon import config as config_mod
from dropbox_daemon.cli.output import say
from dropbox_daemon.errors import EXIT_FAILURE, EXIT_OK


def cmd_db(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """`db migrate` / `db status`: the farm's schema, applied by a role that owns it."""
    from dropbox_daemon.redact import url as redact_url
    from dropbox_daemon.store import admin_url, pg_schema
    from dropbox_daemon.store.pg_conn import connect, settings_of, where

    url = admin_url(cfg, args.url)
    with connect(url, settings_of(cfg)) as conn:
        have = pg_schema.current_version(conn)
        applied: list[int] = []
        if args.action == "migrate":
            applied = pg_schema.migrate(conn, release=__version__)
            if args.grant:
                pg_schema.grant(conn, args.grant)
        now = pg_schema.current_version(conn)
        enc = conn.info.parameter_status("server_encoding")
    data = {
        "database": where(url),
        "url": redact_url(url),
        "server_encoding": enc,
        "schema_version": now,
        "was": have,
        "applied": applied,
        "code_needs": pg_schema.CODE_VERSION,
        "granted_to": args.grant if args.action == "migrate" else None,
    }
    if args.action == "migrate":
        human = (
            f"{where(url)}: schema version {have} -> {now} (applied {applied})"
            if applied
            else f"{where(url)}: schema version {now}, up to date"
        )
        if args.grant:
            human += f"; role {args.grant!r} may now read and write the farm's rows"
    else:
        state = (
            "up to date"
            if now >= pg_schema.CODE_VERSION
            else (
                f"OLDER than this release needs ({pg_schema.CODE_VERSION}): run "
                "`dropbox-daemon db migrate` as the owner role"
            )
        )
        human = f"{where(url)}: schema version {now} ({state}); encoding {enc}"
    say(args, human, data)
    return EXIT_OK if now >= pg_schema.CODE_VERSION else EXIT_FAILURE
