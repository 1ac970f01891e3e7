"""A daemon's link to the farm's PostgreSQL: one pool per process, a deadline on every call,
and the start-up checks that turn a database someone else made into one we can use.

- **One pool per process.** The main loop, the heartbeat, housekeeping, the status page
  and the callback senders each hold a store of their own (a store's transaction is
  one thread's); they share this link, so a daemon holds at most [store] pool_size
  connections, and knows at once, in every thread, when the database is away.
- **Deadlines on the client** (pg_conn.Deadlines): past its deadline a call's socket is
  shut, the call fails with StoreUnavailable and the daemon goes on (renders finish,
  results wait in memory until the database answers again).
- **No session state.** Timeouts are set per transaction (SET LOCAL), statements are
  never prepared on the server, no advisory lock outlives its transaction: so
  PgBouncer in transaction mode works as well as a direct connection.
- **Any encoding**, TLS, the password file: each connection as pg_conn.py makes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from loguru import logger
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.store.job import StoreUnavailable
from dropbox_daemon.store.pg_conn import (
    DEADLINES,
    NO_SLOT,
    PERMANENT,
    LinkSettings,
    adapt_text,
    connect_hint,
    connect_kwargs,
    describe_tls,
    explain,
    first_line,
    text_mode,
    where,
)
from dropbox_daemon.store.pg_schema import check_ready
from dropbox_daemon.store.statements import ADMIN

RETRY_FIRST = 0.5  # seconds from a failure to the first try to reconnect, doubling to
MAX_BACKOFF = 8.0  # this (or a quarter of stale_claim_seconds) while the database stays away
MAX_IDLE = 15.0  # a connection idle this long beyond the first goes back to the server
# A daemon refused a connection for want of a slot stops growing its pool for this long: the
# slots that free go to the daemons that have none, not to those that have some.
CAP_SECONDS = 60.0

import logging  # noqa: E402 - the pool's own warnings would repeat every second of an outage

logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


class _Conn(psycopg.Connection):
    """A pooled connection that tells its link why it could not connect, and whether a
    deadline cut it."""

    link: Link | None = None
    cut_after: float | None = None

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> _Conn:  # type: ignore[override]
        try:
            conn = super().connect(conninfo, **kwargs)
        except psycopg.Error as e:
            if cls.link is not None:
                cls.link.connect_error = first_line(e)
                if NO_SLOT.search(cls.link.connect_error):
                    cls.link.no_slot()
            raise
        if cls.link is not None:
            cls.link.connect_error = None
        return conn  # type: ignore[return-value]


SET_LOCAL = ADMIN.set_local_timeouts


class Link:
    """One process's connections to one farm database (see the module's doc)."""

    def __init__(
        self, url: str, settings: LinkSettings, *, instance: str, stale_seconds: float
    ) -> None:
        self.url, self.settings, self.instance = url, settings, instance
        self.where = where(url)
        self.lock = threading.Lock()
        self.opening = threading.Lock()
        self.users = 0
        self.opened = False
        self.pool: ConnectionPool | None = None
        self.down = False  # calls fail fast; one thread (the reviver) tries to reconnect
        self.closed = False
        self.max_backoff, self.wait, self.local = clocks(settings.call_timeout, stale_seconds)
        self.capped_until: float | None = None
        self.last_error: str | None = None
        self.connect_error: str | None = None
        self.security: dict[str, Any] = {}
        self.kwargs = connect_kwargs(settings, instance)
        self.conn_class = type("FarmConnection", (_Conn,), {"link": self})

    # -- opening ------------------------------------------------------------------------
    def open(self, on_wait: Callable[[str, float], bool] | None = None) -> None:
        """Check the database once per process: reachable, our schema, our rights. A reason
        that will not pass by itself (password, no such database, old schema, certificate)
        is a ConfigError at once; one that may (refused, timed out, too many clients) is
        waited out while `on_wait(reason, delay)` returns True, else a ConfigError."""
        with self.lock:
            self.users += 1
        try:
            self._open(on_wait)
        except BaseException:
            self.release()
            raise

    def _open(self, on_wait: Callable[[str, float], bool] | None) -> None:
        with self.opening:
            delay = 1.0
            while not self.opened:
                try:
                    self._probe()
                except _Passing as e:
                    if on_wait is None or not on_wait(str(e), delay):
                        raise ConfigError(
                            f"[store] url: cannot use PostgreSQL at {self.where}: {e}",
                            hint="check that the server runs and that this host may connect "
                            "(pg_hba.conf, max_connections); `psql '<url>'` from this host "
                            "tells why",
                        ) from None
                    delay = min(5.0, delay * 2)
                    continue
                self.opened, self.closed = True, False

    def _probe(self) -> None:
        try:
            conn = self.conn_class.connect(self.url, **self.kwargs)
        except psycopg.OperationalError as e:
            raise refusal(first_line(e), self.where, self.url) from None
        try:
            self.security = first_look(conn, self.where, self.settings)
        finally:
            conn.close()
        self._pool()  # its first connection opens in the background

    def _new_pool(self) -> ConnectionPool:
        # The pool gives up on a server that is away after reconnect_timeout; after a failure
        # the reviver finds the server back and the next call makes a new pool (_pool).
        return ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.settings.pool_size,
            open=False,
            timeout=self.wait,  # a call waits this long for a connection
            reconnect_timeout=max(2.0, self.settings.connect_timeout),
            max_idle=MAX_IDLE,
            check=self._check,
            configure=self._configure,
            kwargs=self.kwargs,
            connection_class=self.conn_class,
            name=f"dropbox-{self.instance}",
        )

    def no_slot(self) -> None:
        """The server has no connection slot free: hold the pool at the connections it has."""
        with self.lock:
            pool = self.pool
            if pool is None:
                return
            # the pool counts the attempt that just failed among its connections
            have = max(1, int(pool.get_stats().get("pool_size", 1)) - 1)
            first = self.capped_until is None
            self.capped_until = time.monotonic() + CAP_SECONDS
        if first and have < self.settings.pool_size:
            logger.warning(
                "store: the database server has no connection slot free; this daemon keeps to "
                "the {} connection(s) it has for {:.0f} s (raise max_connections, or lower "
                "[store] pool_size across the farm)",
                have,
                CAP_SECONDS,
            )
            pool.resize(1, have)

    def _uncap(self, pool: ConnectionPool) -> None:
        if self.capped_until is not None and time.monotonic() >= self.capped_until:
            self.capped_until = None
            pool.resize(1, self.settings.pool_size)

    def _check(self, conn: psycopg.Connection) -> None:
        """The pool's check of a connection before it lends it, under a deadline too."""
        seconds = min(2.0, self.wait)
        try:
            with DEADLINES.watch(conn, seconds):
                ConnectionPool.check_connection(conn)
        except psycopg.OperationalError:
            if getattr(conn, "cut_after", None):
                self.connect_error = (
                    f"the database did not answer within {seconds:.0f} s (a server that hangs "
                    "or a network that drops packets)"
                )
            raise

    def _configure(self, conn: psycopg.Connection) -> None:
        adapt_text(conn)

    def release(self) -> None:
        """A store is done with the link; the last one closes the pool."""
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
            pool, self.pool = self.pool, None
            self.opened = False
            self.closed = True
        with _LINKS_LOCK:
            if _LINKS.get(self.key) is self:
                del _LINKS[self.key]
        if pool is not None:
            pool.close()

    key: tuple[Any, ...] = ()

    # -- calls --------------------------------------------------------------------------
    def _pool(self) -> ConnectionPool:
        """The pool, made (its first connection opening in the background) where there is none."""
        with self.lock:
            if self.pool is None:
                self.pool = self._new_pool()
                self.pool.open(wait=False)
            return self.pool

    @contextmanager
    def transaction(self, read: bool = False) -> Iterator[psycopg.Connection]:
        """One transaction with its own timeouts (SET LOCAL) and a deadline on the client."""
        seconds = self.settings.call_timeout * (1 if read else 2)
        with self._connection(seconds) as conn:
            try:
                with conn.transaction():
                    conn.execute(SET_LOCAL, self.local)
                    yield conn
            except psycopg.OperationalError as e:
                raise self.lost(e, conn) from e

    @contextmanager
    def _connection(self, seconds: float) -> Iterator[psycopg.Connection]:
        if self.down:
            raise StoreUnavailable(self.last_error or "the database is unreachable")
        pool = self._pool()
        self._uncap(pool)
        try:
            with pool.connection() as conn, DEADLINES.watch(conn, seconds):
                yield conn
        except PoolClosed as e:  # another thread found the database gone and closed the pool
            raise StoreUnavailable(self.last_error or "the database is unreachable") from e
        except PoolTimeout as e:
            raise self._no_connection(e, pool) from e
        except psycopg.OperationalError as e:
            raise self._failed(self.lost(e, None), pool) from e
        except StoreUnavailable as e:
            raise self._failed(e, pool) from e
        self.last_error = None

    def lost(self, e: psycopg.OperationalError, conn: Any) -> StoreUnavailable:
        """The StoreUnavailable for an error of the link, saying whether a deadline cut it."""
        cut = getattr(conn, "cut_after", None)
        if cut:
            return StoreUnavailable(
                f"the database did not answer within {cut:.0f} s (a server that hangs or a "
                "network that drops packets); the connection was closed"
            )
        return StoreUnavailable(f"the database connection failed: {first_line(e)}")

    def _no_connection(self, e: PoolTimeout, pool: ConnectionPool) -> StoreUnavailable:
        why = self.connect_error
        if why is None:  # connections exist, all busy: the database is slow, not gone
            return StoreUnavailable(
                f"every connection of this daemon to the database stayed busy for {self.wait:.0f} s"
            )
        if NO_SLOT.search(why):  # keep the connections it has: slots are scarce
            return StoreUnavailable(explain(why))
        why = explain(why)
        return self._failed(
            StoreUnavailable(why if why.startswith("the ") else f"cannot connect: {why}"),
            pool,
        )

    def _failed(self, e: StoreUnavailable, pool: ConnectionPool) -> StoreUnavailable:
        """Note a failure: every call fails fast from now on, and one thread tries to
        reconnect with back-off; no caller waits on a database that is away."""
        with self.lock:
            self.last_error = e.message
            start = not self.down and not self.closed
            self.down = True
            if self.pool is pool:
                self.pool = None
            else:
                pool = None  # type: ignore[assignment]
        if pool is not None:
            pool.close(timeout=0)
        if start:
            threading.Thread(target=self._revive, name="pg-reviver", daemon=True).start()
        return e

    def _revive(self) -> None:
        delay = RETRY_FIRST
        while not self.closed:
            time.sleep(delay)
            conn = None
            try:
                conn = self.conn_class.connect(self.url, **self.kwargs)
                try:
                    with DEADLINES.watch(conn, self.settings.call_timeout):
                        conn.execute(ADMIN.ping)
                finally:
                    conn.close()
            except psycopg.Error as e:
                self.last_error = (
                    self.lost(e, conn).message
                    if getattr(conn, "cut_after", None)
                    else f"cannot connect: {explain(first_line(e))}"
                )
                delay = min(self.max_backoff, delay * 2)
                continue
            self.down = False  # the next call makes a new pool (_pool)
            return


def clocks(call: float, stale_seconds: float) -> tuple[float, float, tuple[str, str, str]]:
    """A link's times: (the reviver's longest back-off, how long a call waits for a pooled
    connection, the SET LOCAL statement, lock and idle-in-transaction timeouts)."""
    # peers come back well within stale_claim_seconds: none takes over another's jobs
    # because that one was still waiting out its back-off after an outage
    max_backoff = max(0.5, min(MAX_BACKOFF, stale_seconds / 4))
    # after a restart of the server the pool's own reconnect backs off for seconds; a loop
    # held that long misses its lease renewals and its peers take over its jobs. Past this
    # wait the link is down and the reviver (max_backoff) brings it back.
    wait = min(call, max(1.0, stale_seconds / 4))
    idle = max(1, min(10, int(stale_seconds / 2)))
    return (
        max_backoff,
        wait,
        (f"{int(call * 1000)}ms", f"{int(min(5.0, call) * 1000)}ms", f"{idle}s"),
    )


class _Passing(Exception):
    """A connection failure that may pass by itself (refused, timed out, no slot free)."""


def refusal(why: str, where: str, url: str) -> Exception:
    """A failed first connection: ConfigError where it will not pass by itself (password, no
    such database, certificate), else _Passing (the start-up waits and tries again)."""
    if PERMANENT.search(why):
        return ConfigError(
            f"[store] url: PostgreSQL at {where} refused this daemon: {why}",
            hint=connect_hint(why, url),
        )
    return _Passing(explain(why))


def first_look(conn: psycopg.Connection, where: str, settings: LinkSettings) -> dict[str, Any]:
    """The start-up checks on one connection (text adapted to the server's encoding, TLS, our
    schema and rights), as the link's description: what doctor, status and health show."""
    try:
        with DEADLINES.watch(conn, settings.call_timeout * 2):
            enc = adapt_text(conn)
            tls = describe_tls(conn)
            version = check_ready(conn, where, settings.config_hint)
    except psycopg.OperationalError as e:
        raise _Passing(first_line(e)) from None
    if enc not in ("UTF8", "SQL_ASCII"):
        logger.info("store: the database {} is {}", where, text_mode(enc))
    return {
        **tls,
        "server_encoding": enc,
        "encoding": text_mode(enc),
        "schema_version": version,
        "pool_size": settings.pool_size,
    }


_LINKS: dict[tuple[Any, ...], Link] = {}
_LINKS_LOCK = threading.Lock()


def link_for(url: str, settings: LinkSettings, *, instance: str, stale_seconds: float) -> Link:
    """This process's link to `url` (made on first use)."""
    key = (url, settings, instance, stale_seconds)
    with _LINKS_LOCK:
        link = _LINKS.get(key)
        if link is None:
            link = _LINKS[key] = Link(url, settings, instance=instance, stale_seconds=stale_seconds)
            link.key = key
        return link
