"""Farm mode: every daemon's jobs, leases, events and deliveries in one PostgreSQL database.

- job_id is the table's primary key: unique across the farm by the database's
  constraint, not by who reached the outbox first;
- a daemon takes the next job with one statement (`FOR UPDATE SKIP LOCKED`),
  highest priority then oldest, so idle daemons never wait on each other;
- leases are timed by the database's clock (`now()`), never the hosts';
- a frozen daemon cannot block the others: its session is ended by the server
  when it idles inside a transaction (`idle_in_transaction_session_timeout`),
  statements give up on a lock after `lock_timeout`, and takeovers skip locked rows;
- when the database cannot be reached, calls fail fast with StoreUnavailable for
  a short while instead of stalling the daemon's loop on every one.

We use psycopg 3 and its pool directly rather than a queue library (procrastinate,
pgqueuer): both bring a task model of their own (task functions, their own job
table and states), while ours is a file-drop state machine with outbox writes in
the same transaction; the one idea we need from them (SKIP LOCKED dispatch with
heartbeats on the database's clock) is a few statements here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.redact import url as redact_url
from dropbox_daemon.store.base import (
    RUNNING,
    Handle,
    Job,
    JobExists,
    Store,
    StoreUnavailable,
    rows_of,
)

RETRY_AFTER = 2.0  # seconds a failed connection makes every call fail fast

# The pool's own reconnection warnings would repeat every second of an outage; the
# daemon logs the outage once ("store: unreachable") and its end.
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
SCHEMA_LOCK = 0x64726F70  # advisory lock key held while the schema is applied


class _Pg:
    """A connection as a Handle: `?` placeholders, errors of the link as StoreUnavailable."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor:
        try:
            return self.conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"the database connection failed: {e}".strip()) from e


class PostgresStore(Store):
    """One database for the farm; a small pool so threads never share a transaction."""

    backend = "postgresql"
    shared = True
    LOCK = " FOR UPDATE"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        outbox: Outbox,
        *,
        instance: str = "",
        connect_timeout: float = 5.0,
        stale_seconds: float = 120.0,
    ) -> None:
        super().__init__(outbox, instance)
        self.url = url
        self.stale_seconds = stale_seconds
        self.down_until = 0.0
        self.last_error: str | None = None
        self.connect_timeout = connect_timeout
        self.lock = threading.Lock()
        idle = max(1, min(10, int(stale_seconds / 2)))
        self.conn_kwargs = {
            "autocommit": True,
            "connect_timeout": max(2, int(connect_timeout)),
            "application_name": f"dropbox-daemon {instance}"[:63],
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "options": f"-c idle_in_transaction_session_timeout={idle}s "
            "-c lock_timeout=5s -c statement_timeout=30s",
        }
        self.pool: ConnectionPool | None = self._new_pool()
        try:
            self.pool.open(wait=True, timeout=max(2.0, connect_timeout))
        except PoolTimeout as e:
            self.pool.close()
            raise ConfigError(
                f"[store] url: cannot connect to PostgreSQL at {redact_url(url)} within "
                f"{connect_timeout:.0f} s",
                hint="check that the server runs and that this host may connect (pg_hba.conf); "
                "`psql '<url>'` from this host tells why",
            ) from e
        self.migrate()

    def _new_pool(self) -> ConnectionPool:
        # The pool gives up on a server that is away after reconnect_timeout; a new pool is
        # made at the first call after RETRY_AFTER instead, so recovery never waits on backoff.
        return ConnectionPool(
            self.url,
            min_size=1,
            max_size=3,
            open=False,
            timeout=min(2.0, self.connect_timeout),  # a call waits this long for a connection
            reconnect_timeout=RETRY_AFTER,
            check=ConnectionPool.check_connection,
            kwargs=self.conn_kwargs,
            name=f"dropbox-{self.instance}",
        )

    def close(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    # -- connections ----------------------------------------------------------------
    def _pool(self) -> ConnectionPool:
        with self.lock:
            if self.pool is None:
                self.pool = self._new_pool()
                self.pool.open(wait=False)
            return self.pool

    def _failed(self, e: BaseException, pool: ConnectionPool) -> StoreUnavailable:
        """Note a failure: calls fail fast for RETRY_AFTER, then a fresh pool tries again."""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        self.last_error = first
        self.down_until = time.monotonic() + RETRY_AFTER
        with self.lock:
            if self.pool is pool:
                self.pool = None
        pool.close(timeout=0)
        if isinstance(e, StoreUnavailable):
            return e
        return StoreUnavailable(f"the database is unreachable: {first}")

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if time.monotonic() < self.down_until:
            raise StoreUnavailable(self.last_error or "the database is unreachable")
        pool = self._pool()
        try:
            with pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError, StoreUnavailable) as e:
            raise self._failed(e, pool) from e
        self.last_error = None

    @contextmanager
    def transaction(self) -> Iterator[Handle]:
        self._pending_changes = []
        with self._connection() as conn:
            try:
                with conn.transaction():
                    yield _Pg(conn)
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"the database connection failed: {e}") from e
        self._committed()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return rows_of(_Pg(conn).execute(sql, params))

    def _next_seq(self, c: Handle) -> int:
        return int(c.execute("SELECT nextval('job_seq')").fetchone()[0])

    def _upsert(self, c: Handle, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        sets = ", ".join(f"{k} = EXCLUDED.{k}" for k in row if k != "job_id")
        c.execute(
            f"INSERT INTO jobs ({cols}) VALUES ({marks}) ON CONFLICT (job_id) DO UPDATE SET {sets}",
            tuple(row.values()),
        )

    def _insert_new(self, c: Handle, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            c.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))
        except psycopg.errors.UniqueViolation as e:
            raise JobExists(f"job {row['job_id']!r} exists already in the farm's database") from e

    def migrate(self) -> None:
        """Apply the schema (idempotent) under an advisory lock: daemons may start together."""
        sql = resources.files("dropbox_daemon.store").joinpath("postgres.sql").read_text()
        with self.transaction() as c:
            c.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            for stmt in filter(str.strip, _statements(sql)):
                c.execute(stmt)

    @property
    def schema_version(self) -> int:
        return int(self._read("SELECT MAX(version) AS v FROM schema_version")[0]["v"])

    # -- the farm's queue -------------------------------------------------------------
    def take_next(self, instance: str, last_served: dict[str, float], **changes: Any) -> Job | None:
        """The farm's next job for `instance`, highest priority then oldest, in one statement
        that skips rows other daemons are taking at this moment."""
        with self.transaction() as c:
            rows = rows_of(
                c.execute(
                    "SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq ASC "
                    "LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
            )
            if not rows:
                return None
            job = Job.from_row(rows[0])
            plan = self._dispatch_changes(job, instance, changes)
            detail = plan.pop("detail")
            return self._apply(c, job, "preparing", detail, plan)

    def take_over_running(self, instance: str, rename: Any, reasons: dict[str, str]) -> list[Job]:
        """Jobs held by instances whose lease is older than stale_seconds by the database's
        clock (or that stopped): re-queued for the farm, attempt kept, generation bumped.

        `rename(job)` moves the job's claim folder to its next generation (the fence
        a thawed holder finds) and returns the new path, or None to leave it.
        """
        taken = []
        with self.transaction() as c:
            rows = rows_of(
                c.execute(
                    "SELECT j.*, i.state AS holder_state, "
                    "EXTRACT(EPOCH FROM now() - i.lease_at)::float8 AS holder_age "
                    "FROM jobs j LEFT JOIN instances i ON i.instance = j.instance "
                    "WHERE j.state IN ('received', 'preparing', 'rendering', 'encoding') "
                    "AND j.instance IS NOT NULL AND j.instance <> ? "
                    "AND (i.instance IS NULL OR i.state = 'stopped' "
                    "OR i.lease_at < now() - make_interval(secs => ?)) "
                    "ORDER BY j.priority DESC, j.seq LIMIT 50 FOR UPDATE OF j SKIP LOCKED",
                    (instance, self.stale_seconds),
                )
            )
            for r in rows:
                age, holder_state = r.pop("holder_age"), r.pop("holder_state")
                job = Job.from_row(r)
                silent = (
                    "it stopped"
                    if holder_state == "stopped"
                    else f"its lease has not been renewed for {float(age or 0):.0f} s"
                )
                why = f"taken over from instance {job.instance} by instance {instance}: {silent}"
                to, changes, detail = self.resume_plan(job, why)
                if to == "done":
                    for stage in ("rendering", "encoding")[
                        ("preparing", "rendering", "encoding").index(job.state) :
                    ]:
                        job = self._apply(c, job, stage, "recorded late (after a crash)", {})
                new_claim = rename(job) if to == "queued" and job.state in RUNNING else None
                changes = {**changes, "generation": job.generation + 1, "instance": instance}
                if new_claim:
                    changes["claim_dir"] = new_claim
                taken.append(self._apply(c, job, to, detail, changes))
        return taken

    # -- leases -----------------------------------------------------------------------
    def register_instance(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        """The existing row of this instance id (with its age by the database's clock), then
        this instance's lease written in its place; the caller decides on a clash first."""
        rows = self._read(
            "SELECT *, EXTRACT(EPOCH FROM now() - lease_at)::float8 AS age FROM instances "
            "WHERE instance = ?",
            (lease["instance"],),
        )
        return rows[0] if rows else None

    def renew_instance(self, lease: dict[str, Any]) -> None:
        """Write this instance's lease, stamped with the database's now()."""
        cols = [k for k in lease if k not in ("renewed_at",)]
        with self.transaction() as c:
            c.execute(
                f"INSERT INTO instances ({', '.join(cols)}, lease_at) "
                f"VALUES ({', '.join('?' for _ in cols)}, now()) "
                "ON CONFLICT (instance) DO UPDATE SET "
                + ", ".join(f"{k} = EXCLUDED.{k}" for k in cols if k != "instance")
                + ", lease_at = now()",
                tuple(lease[k] for k in cols),
            )

    def instances(self) -> list[dict[str, Any]]:
        """Every instance with the age of its lease in seconds (the database's clock)."""
        return self._read(
            "SELECT *, EXTRACT(EPOCH FROM now() - lease_at)::float8 AS age, "
            "EXTRACT(EPOCH FROM lease_at)::float8 AS renewed_at FROM instances ORDER BY instance"
        )


def _statements(sql: str) -> list[str]:
    """The statements of a schema file (no semicolons inside our statements or comments)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";")]
