"""A daemon's link to the farm's PostgreSQL: one pool per process, a deadline on every call,
and the start-up checks that turn a database someone else made into one we can use.

- **One pool per process.** The main loop, the heartbeat, housekeeping, the status page
  and the callback senders each hold a store of their own (a store's transaction is
  one thread's); they share this link, so a daemon holds at most [store] pool_size
  connections, and knows at once, in every thread, when the database is away.
- **Deadlines on the client.** A server that is frozen (SIGSTOP, a VM paused, a hung
  disk) or a network that drops packets answers nothing and acknowledges everything,
  so neither keepalives nor the server's own timeouts notice. Each call registers its
  connection with one watcher thread; past its deadline the socket is shut, the call
  fails with StoreUnavailable and the daemon goes on (renders finish, results wait in
  memory until the database answers again).
- **No session state.** Timeouts are set per transaction (SET LOCAL), statements are
  never prepared on the server, no advisory lock outlives its transaction: so
  PgBouncer in transaction mode works as well as a direct connection.
- **Any encoding.** The connection talks UTF-8. On a UTF8 database text is stored as
  is; on SQL_ASCII (no conversion, no check) it is stored as UTF-8 bytes and read back
  leniently; on any other (LATIN1, WIN1252, EUC_JP, ...) text is stored ASCII-escaped
  (backslash, \\xNN, \\uNNNN) so that no name can be refused by the server's encoding.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg.errors
from loguru import logger
from psycopg.types.string import StrDumperUnknown, TextLoader
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.redact import url as redact_url
from dropbox_daemon.store.job import StoreUnavailable
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


@dataclass(frozen=True)
class LinkSettings:
    """[store] as the link uses it."""

    connect_timeout: float = 5.0
    call_timeout: float = 5.0  # a read's deadline; a transaction gets twice this
    pool_size: int = 3
    password_file: str = ""
    ssl: tuple[tuple[str, str], ...] = ()  # sslmode, sslrootcert, sslcert, sslkey
    config_hint: str = ""  # " --config PATH" in the commands our messages name


def settings_of(cfg: Any) -> LinkSettings:
    """The LinkSettings of a Config's [store] section."""
    s = cfg.store
    ssl = tuple(
        (k, str(getattr(s, k)))
        for k in ("sslmode", "sslrootcert", "sslcert", "sslkey")
        if getattr(s, k)
    )
    path = getattr(cfg, "source", None)
    return LinkSettings(
        connect_timeout=s.connect_timeout_seconds,
        call_timeout=s.call_timeout_seconds,
        pool_size=s.pool_size,
        password_file=str(s.password_file or ""),
        ssl=ssl,
        config_hint=f" --config {path}" if path else "",
    )


def where(url: str) -> str:
    """user@host:port/db of a URL, for messages (never its password)."""
    try:
        p = urlsplit(url)
        user = f"{p.username}@" if p.username else ""
        return f"{user}{p.hostname or 'localhost'}:{p.port or 5432}{p.path or '/'}"
    except ValueError:
        return redact_url(url)


def read_password(path: str) -> str:
    """[store] password_file: its first line; refused where others may read it (as libpq does)."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"[store] password_file: cannot read {p}: {e}",
            hint="give the daemon's user a file holding the database password on one line",
        ) from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"[store] password_file: {p} may be read by others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod 600 {p} (and chown it to the daemon's user)",
        )
    return text.splitlines()[0] if text else ""


# -- text in any server encoding ------------------------------------------------------------
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def to_ascii(s: str) -> str:
    """Reversible ASCII form of any text: backslash doubled, the rest as \\xNN/\\uNNNN."""
    if s.isascii() and "\\" not in s:
        return s
    return s.replace("\\", "\\\\").encode("ascii", "backslashreplace").decode("ascii")


def from_ascii(s: str) -> str:
    if "\\" not in s:
        return s
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), s)


class _EscapingDumper(StrDumperUnknown):
    def dump(self, obj: str) -> bytes:  # type: ignore[override]
        return super().dump(to_ascii(obj))  # type: ignore[return-value]


class _EscapedLoader(TextLoader):
    def load(self, data: Any) -> str:  # type: ignore[override]
        return from_ascii(bytes(data).decode("utf-8", "replace"))


class _LenientLoader(TextLoader):
    """SQL_ASCII stores bytes unchecked: a row another tool wrote in Latin-1 must not stop us."""

    def load(self, data: Any) -> str:  # type: ignore[override]
        return bytes(data).decode("utf-8", "replace")


def adapt_text(conn: psycopg.Connection) -> str:
    """Register how text crosses this connection, by the database's encoding; that encoding."""
    server_encoding = conn.info.parameter_status("server_encoding") or "UTF8"
    if server_encoding == "UTF8":
        return server_encoding
    loader = _LenientLoader if server_encoding == "SQL_ASCII" else _EscapedLoader
    for name in ("text", "varchar", "bpchar", "name"):
        conn.adapters.register_loader(name, loader)
    if server_encoding != "SQL_ASCII":
        conn.adapters.register_dumper(str, _EscapingDumper)
    return server_encoding


def text_mode(server_encoding: str) -> str:
    return {
        "UTF8": "UTF-8, stored as is",
        "SQL_ASCII": "SQL_ASCII: no conversion by the server; stored as UTF-8, read leniently",
    }.get(
        server_encoding,
        f"{server_encoding}: text outside ASCII is stored escaped (\\uNNNN) so no name is refused",
    )


# -- deadlines ------------------------------------------------------------------------------
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
                if _NO_SLOT.search(cls.link.connect_error):
                    cls.link.no_slot()
            raise
        if cls.link is not None:
            cls.link.connect_error = None
        return conn  # type: ignore[return-value]


class Deadlines:
    """One thread that shuts the socket of any call past its deadline."""

    def __init__(self, tick: float = 0.2) -> None:
        self.tick = tick
        self.lock = threading.Lock()
        self.due: dict[int, tuple[float, Any, float]] = {}
        self.thread: threading.Thread | None = None

    @contextmanager
    def watch(self, conn: Any, seconds: float) -> Iterator[None]:
        key = id(conn)
        with self.lock:
            self.due[key] = (time.monotonic() + seconds, conn, seconds)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="pg-deadlines", daemon=True)
                self.thread.start()
        try:
            yield
        finally:
            with self.lock:
                self.due.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self.lock:
                for key, (at, conn, seconds) in list(self.due.items()):
                    if now >= at:
                        del self.due[key]
                        conn.cut_after = seconds
                        shut(conn)


def shut(conn: Any) -> None:
    """Shut a connection's socket under libpq: the call blocked on it returns with an error."""
    try:
        fd = conn.pgconn.socket
    except (psycopg.Error, OSError):
        return
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


DEADLINES = Deadlines()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return redact_url(text.splitlines()[0]) if text else type(e).__name__


# -- what a failed connection means --------------------------------------------------------
_PERMANENT = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry|"
    r"no password supplied|does not exist|certificate|root cert|server does not support SSL|"
    r"SSL error(?!.*SYSCALL)|invalid (sslmode|connection option|URI|integer)|permission denied",
    re.IGNORECASE,
)


_NO_SLOT = re.compile(r"too many clients|remaining connection slots are reserved", re.IGNORECASE)


def explain(why: str) -> str:
    """A connection failure as an operator reads it."""
    if _NO_SLOT.search(why):
        fatal = why.rsplit("FATAL:", 1)[-1].strip()
        return (
            f"the server has no connection slot free (max_connections reached: {fatal}); "
            "this daemon retries; raise max_connections or lower [store] pool_size across "
            "the farm"
        )
    return why


def connect_hint(why: str, url: str) -> str:
    """What an operator does about a connection that failed for a reason that will not pass."""
    if re.search(r"password|authentication|pg_hba", why, re.IGNORECASE):
        return (
            "check the user and password ([store] password_file, PGPASSFILE or the URL) and "
            "that pg_hba.conf on the server lets this host in"
        )
    if "does not exist" in why and "database" in why:
        db = (urlsplit(url).path or "/").lstrip("/") or "<name>"
        return f"create it as an admin: CREATE DATABASE {db} ENCODING 'UTF8' TEMPLATE template0"
    if re.search(r"certificate|SSL|root cert", why, re.IGNORECASE):
        return (
            "check [store] sslrootcert (the CA that signed the server's certificate) and, with "
            "sslmode=verify-full, that the host in the URL is a name in the certificate"
        )
    return "`psql '<url>'` from this host tells why"


def describe_tls(conn: psycopg.Connection) -> dict[str, Any]:
    """Whether this connection is encrypted, and whether the server was verified."""
    pg = conn.pgconn
    mode = conn.info.get_parameters().get("sslmode", "prefer")
    encrypted = bool(getattr(pg, "ssl_in_use", False))
    proto = "TLS"
    if encrypted:  # the protocol as the server saw it (behind a pooler: the pooler's link)
        try:
            with conn.transaction():
                row = conn.execute(ADMIN.tls_version).fetchone()
            proto = str(row[0]) if row and row[0] else proto
        except psycopg.DatabaseError:
            pass
    verified = encrypted and mode in ("verify-ca", "verify-full")
    if encrypted and mode == "verify-full":
        text = f"encrypted ({proto}); the server's certificate and host name verified"
    elif verified:
        text = (
            f"encrypted ({proto}); the server's certificate verified, its host name not (verify-ca)"
        )
    elif encrypted:
        text = (
            f"encrypted ({proto}) but the server is not verified (sslmode={mode}): set "
            "sslmode=verify-full and sslrootcert to detect an impostor"
        )
    else:
        text = (
            f"not encrypted (sslmode={mode}): the password and job data cross the network in "
            "clear; use sslmode=verify-full unless the database is on this host"
        )
    return {
        "encrypted": encrypted,
        "verified": verified,
        "sslmode": mode,
        "protocol": proto,
        "text": text,
    }


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
        # peers come back well within stale_claim_seconds: none takes over another's jobs
        # because that one was still waiting out its back-off after an outage
        self.max_backoff = max(0.5, min(MAX_BACKOFF, stale_seconds / 4))
        # how long a call waits for a connection of the pool: after a restart of the server
        # the pool's own reconnect backs off for seconds; a loop held that long misses its
        # lease renewals and its peers take over its jobs. Past this the link is down and
        # the reviver (max_backoff) brings it back.
        self.wait = min(settings.call_timeout, max(1.0, stale_seconds / 4))
        self.capped_until: float | None = None
        self.last_error: str | None = None
        self.connect_error: str | None = None
        self.security: dict[str, Any] = {}
        call = settings.call_timeout
        idle = max(1, min(10, int(stale_seconds / 2)))
        self.local = (f"{int(call * 1000)}ms", f"{int(min(5.0, call) * 1000)}ms", f"{idle}s")
        kw: dict[str, Any] = {
            "autocommit": True,
            # PgBouncer in transaction mode keeps no prepared statement between transactions
            "prepare_threshold": None,
            "connect_timeout": max(2, int(settings.connect_timeout)),
            "client_encoding": "UTF8",
            "application_name": f"dropbox-daemon {instance}"[:63],
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # data the server never acknowledges (a cable pulled) ends the connection
            "tcp_user_timeout": int(call * 2000),
        }
        kw.update(dict(settings.ssl))
        if settings.password_file:
            kw["password"] = read_password(settings.password_file)
        self.kwargs = kw
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
            why = first_line(e)
            if _PERMANENT.search(why):
                raise ConfigError(
                    f"[store] url: PostgreSQL at {self.where} refused this daemon: {why}",
                    hint=connect_hint(why, self.url),
                ) from None
            raise _Passing(explain(why)) from None
        try:
            with DEADLINES.watch(conn, self.settings.call_timeout * 2):
                enc = adapt_text(conn)
                tls = describe_tls(conn)
                version = check_ready(conn, self.where, self.settings.config_hint)
        except psycopg.OperationalError as e:
            raise _Passing(first_line(e)) from None
        finally:
            conn.close()
        self.security = {
            **tls,
            "server_encoding": enc,
            "encoding": text_mode(enc),
            "schema_version": version,
            "pool_size": self.settings.pool_size,
        }
        if enc not in ("UTF8", "SQL_ASCII"):
            logger.info("store: the database {} is {}", self.where, text_mode(enc))
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
        if _NO_SLOT.search(why):  # keep the connections it has: slots are scarce
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


class _Passing(Exception):
    """A connection failure that may pass by itself (refused, timed out, no slot free)."""


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


def connect(url: str, settings: LinkSettings | None = None) -> psycopg.Connection:
    """One connection as the link makes them (UTF-8, text adapted to the database's
    encoding, TLS and password from [store]): for `db migrate`, doctor and tests."""
    link = Link(url, settings or LinkSettings(), instance="admin", stale_seconds=20.0)
    try:
        conn = psycopg.connect(url, **link.kwargs)
    except psycopg.OperationalError as e:
        why = first_line(e)
        raise ConfigError(
            f"[store] url: cannot connect to PostgreSQL at {link.where}: {why}",
            hint=connect_hint(why, url),
        ) from None
    adapt_text(conn)
    return conn
