"""Farm mode: every daemon's jobs, leases, events and deliveries in one PostgreSQL database.

- job_id is the table's primary key: unique across the farm by the database's
  constraint, not by who reached the outbox first;
- a daemon takes the next job with one statement (`FOR UPDATE SKIP LOCKED`),
  highest priority then oldest, so idle daemons never wait on each other;
- leases are timed by the database's clock (`now()`), never the hosts';
- a frozen daemon cannot block the others: its transaction is ended by the server
  when it idles inside it (`idle_in_transaction_session_timeout`), statements give
  up on a lock after `lock_timeout`, and takeovers skip locked rows;
- a frozen *server* (or a network that drops packets) cannot block the daemon: every
  call has a client-side deadline, past which its socket is shut (pg_conn.py);
- when the database cannot be reached, calls fail fast with StoreUnavailable for
  a short while instead of stalling the daemon's loop on every one.

Databases as operators make them: any server encoding (the connection talks UTF-8;
on one that is neither UTF8 nor SQL_ASCII, text is stored ASCII-escaped so nothing is
refused), TLS from the URL or [store], PgBouncer in session or transaction mode (no
server-side prepared statements, no session settings: each transaction sets its own
timeouts with SET LOCAL), and a role with only DML rights: the schema is applied by
`dropbox-daemon db migrate`, never by the daemons.

We use psycopg 3 and its pool directly rather than a queue library (procrastinate,
pgqueuer): both bring a task model of their own (task functions, their own job
table and states), while ours is a file-drop state machine with outbox writes in
the same transaction; the one idea we need from them (SKIP LOCKED dispatch with
heartbeats on the database's clock) is a few statements here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors

from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store.base import Store
from dropbox_daemon.store.core import Handle, rows_of
from dropbox_daemon.store.job import RUNNING, Job, JobExists
from dropbox_daemon.store.pg_conn import LinkSettings
from dropbox_daemon.store.pg_link import Link, link_for
from dropbox_daemon.store.statements import POSTGRES


class _Pg:
    """A connection as a Handle: `?` placeholders, errors of the link as StoreUnavailable."""

    def __init__(self, conn: psycopg.Connection, link: Link) -> None:
        self.conn, self.link = conn, link

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor:
        try:
            return self.conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        except psycopg.OperationalError as e:
            raise self.link.lost(e, self.conn) from e


class PostgresStore(Store):
    """One database for the farm; the process's one pool (pg_link) so threads never share
    a transaction and a daemon holds at most [store] pool_size connections."""

    backend = "postgresql"
    farm = True  # one database for every daemon of a farm
    LOCK = " FOR UPDATE"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        outbox: Outbox,
        *,
        instance: str = "",
        settings: LinkSettings | None = None,
        stale_seconds: float = 120.0,
        on_wait: Callable[[str, float], bool] | None = None,
    ) -> None:
        super().__init__(outbox, instance)
        self.stale_seconds = stale_seconds
        s = settings or LinkSettings()
        self.link = link_for(url, s, instance=instance, stale_seconds=stale_seconds)
        self.link.open(on_wait=on_wait)

    def close(self) -> None:
        """Stores share the process's link; it is closed with the last of them."""
        self.link.release()

    @property
    def security(self) -> dict[str, Any]:
        """How this daemon's connection is protected and what it talks to (doctor, status)."""
        return dict(self.link.security)

    # -- connections ----------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Handle]:
        self._pending_changes = []
        with self.link.transaction() as conn:
            yield _Pg(conn, self.link)
        self._committed()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.link.transaction(read=True) as conn:
            return rows_of(_Pg(conn, self.link).execute(sql, params))

    def _next_seq(self, c: Handle) -> int:
        return int(c.execute(POSTGRES.next_seq).fetchone()[0])

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
        """Daemons never change the farm's schema: `dropbox-daemon db migrate` does (pg_schema)."""

    @property
    def schema_version(self) -> int:
        rows = self._read(POSTGRES.schema_version)
        return int(rows[0]["v"] or 0) if rows else 0

    # -- the farm's queue -------------------------------------------------------------
    def take_next(self, instance: str, last_served: dict[str, float], **changes: Any) -> Job | None:
        """The farm's next job for `instance`, highest priority then oldest, in one statement
        that skips rows other daemons are taking at this moment."""
        with self.transaction() as c:
            rows = rows_of(c.execute(POSTGRES.take_next))
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
            rows = rows_of(c.execute(POSTGRES.takeover_candidates, (instance, self.stale_seconds)))
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
        rows = self._read(POSTGRES.instance, (lease["instance"],))
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
        return self._read(POSTGRES.instances)
