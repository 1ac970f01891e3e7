"""The job store: one contract (base.py, assembled from its parts), SQLite for one daemon,
PostgreSQL for a farm; the SQL of both in sql/, loaded by name (statements.py)."""

from __future__ import annotations

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
]


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
    return SqliteStore(cfg.db_path, outbox, instance=cfg.instance_id)


def is_farm(cfg) -> bool:  # noqa: ANN001
    """[store] url names a farm's PostgreSQL (else this daemon's own SQLite)."""
    return bool(cfg.store.url)


def has_store(cfg) -> bool:  # noqa: ANN001
    """There is a store to read: a farm's database, or the SQLite file of a daemon that ran."""
    return is_farm(cfg) or cfg.db_path.exists()


def store_name(cfg) -> str:  # noqa: ANN001
    """The store as messages name it."""
    return "the farm database" if is_farm(cfg) else str(cfg.db_path)
