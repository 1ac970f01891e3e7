"""How the daemons on one share coordinate (base.py: the contract; folder.py: by the shared
folder alone; database.py: through a farm's PostgreSQL), chosen once by the store."""

from __future__ import annotations

from dropbox_daemon.config import Config
from dropbox_daemon.coordination.base import Coordination, Ready, best, describe, prevalidate
from dropbox_daemon.coordination.folder import FolderCoordination, by_age, folder_leases
from dropbox_daemon.store import Store

__all__ = [
    "Coordination",
    "Ready",
    "best",
    "instances_view",
    "open_coordination",
    "prevalidate",
    "summary",
]


def open_coordination(cfg: Config, store: Store) -> Coordination:
    """The way the store's daemons coordinate: a farm's database, or the shared folder."""
    if store.farm:
        from dropbox_daemon.coordination.database import DatabaseCoordination
        from dropbox_daemon.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        return DatabaseCoordination(cfg, store)
    return FolderCoordination(cfg, store)


def instances_view(cfg: Config, store: Store | None) -> list[dict]:
    """Every instance of the share (`store` None: this daemon's store is not made yet, so
    the shared folder's leases)."""
    if store is None:
        return describe(by_age(folder_leases(cfg)), cfg.daemon.stale_claim_seconds)
    return open_coordination(cfg, store).instances()


def summary(cfg: Config, store: Store | None) -> tuple[list[dict], dict[str, int]]:
    """Every instance of the share, and its jobs counted by state (none before a first start)."""
    if store is None:
        return instances_view(cfg, None), {}
    coordination = open_coordination(cfg, store)
    return coordination.instances(), coordination.counts()
