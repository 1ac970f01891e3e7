"""The job store: one contract (base.py, assembled from its parts), SQLite for one daemon,
PostgreSQL for a farm; the SQL of both in sql/, loaded by name (statements.py)."""

from __future__ import annotations

from pathlib import Path

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.outbox import CALLBACK_STATES
from dropbox_daemon.store.base import Store
from dropbox_daemon.store.job import (
    RUNNING,
    STATES,
    TERMINAL,
    TRANSITIONS,
    Job,
    JobExists,
    StoreUnavailable,
    claim_held,
    pick_next,
)
from dropbox_daemon.store.sqlite import BACKUP_GLOB, BACKUP_NAME, HOST_ERRORS, SqliteStore

__all__ = [
    "BACKUP_GLOB",
    "BACKUP_NAME",
    "CALLBACK_STATES",
    "HOST_ERRORS",
    "RUNNING",
    "STATES",
    "TERMINAL",
    "TRANSITIONS",
    "Job",
    "JobExists",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "claim_held",
    "has_store",
    "is_farm",
    "open_store",
    "store_name",
    "pick_next",
    "sqlite_path",
    "admin_url",
]


SQLITE_FILE = "jobs.sqlite3"  # in [daemon] state_dir: one daemon's own store


def sqlite_path(cfg) -> Path:  # noqa: ANN001
    """Where a daemon without a farm database keeps its jobs (SQLite)."""
    return cfg.daemon.state_dir / SQLITE_FILE


def admin_url(cfg, given: str | None = None) -> str:  # noqa: ANN001
    """The farm database `db migrate`/`db status` work on: --url (the owner's), else [store]
    url; ConfigError where there is none (SQLite migrates itself)."""
    url = given or cfg.store.url
    if not url:
        raise ConfigError(
            "db: no database: [store] url is empty (this daemon uses SQLite, which migrates "
            "itself)",
            hint="set [store] url in the config, or pass --url postgresql://owner@host/db",
        )
    return url


def open_store(cfg, outbox, on_wait=None) -> Store:  # noqa: ANN001
    """The store [store] url names: PostgreSQL for a farm, else SQLite in state_dir.

    on_wait(reason, delay) -> bool: while the farm's database cannot be reached for a
    reason that may pass, called before each retry (the daemon's start-up waits)."""
    if cfg.store.url:
        from dropbox_daemon.store.pg_conn import settings_of
        from dropbox_daemon.store.postgres import PostgresStore

        return PostgresStore(
            cfg.store.url,
            outbox,
            instance=cfg.instance_id,
            settings=settings_of(cfg),
            stale_seconds=cfg.daemon.stale_claim_seconds,
            on_wait=on_wait,
        )
    return SqliteStore(sqlite_path(cfg), outbox, instance=cfg.instance_id)


def is_farm(cfg) -> bool:  # noqa: ANN001
    """[store] url names a farm's PostgreSQL (else this daemon's own SQLite)."""
    return bool(cfg.store.url)


def has_store(cfg) -> bool:  # noqa: ANN001
    """There is a store to read: a farm's database, or the SQLite file of a daemon that ran."""
    return is_farm(cfg) or sqlite_path(cfg).exists()


def store_name(cfg) -> str:  # noqa: ANN001
    """The store as messages name it."""
    return "the farm database" if is_farm(cfg) else str(sqlite_path(cfg))
