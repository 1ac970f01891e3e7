"""One connection to the farm's PostgreSQL as the link makes it: its settings ([store]),
its password, its text in any server encoding, its deadline, its TLS, and the words for
its failures.

- **Deadlines on the client.** A server that is frozen (SIGSTOP, a VM paused, a hung
  disk) or a network that drops packets answers nothing and acknowledges everything,
  so neither keepalives nor the server's own timeouts notice. Each call registers its
  connection with one watcher thread (Deadlines); past its deadline the socket is shut.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg.errors
from psycopg.types.string import StrDumperUnknown, TextLoader

from dropbox_daemon.errors import ConfigError
from dropbox_daemon.redact import url as redact_url
from dropbox_daemon.store.statements import ADMIN


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
PERMANENT = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry|"
    r"no password supplied|does not exist|certificate|root cert|server does not support SSL|"
    r"SSL error(?!.*SYSCALL)|invalid (sslmode|connection option|URI|integer)|permission denied",
    re.IGNORECASE,
)


NO_SLOT = re.compile(r"too many clients|remaining connection slots are reserved", re.IGNORECASE)


def explain(why: str) -> str:
    """A connection failure as an operator reads it."""
    if NO_SLOT.search(why):
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


def connect_kwargs(settings: LinkSettings, instance: str) -> dict[str, Any]:
    """psycopg's connection arguments for [store]: UTF-8, no server-side prepared statements
    (PgBouncer in transaction mode), keepalives, a send deadline, TLS, the password file."""
    call = settings.call_timeout
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
    return kw


def connect(url: str, settings: LinkSettings | None = None) -> psycopg.Connection:
    """One connection as the link makes them (UTF-8, text adapted to the database's
    encoding, TLS and password from [store]): for `db migrate`, doctor and tests."""
    try:
        conn = psycopg.connect(url, **connect_kwargs(settings or LinkSettings(), "admin"))
    except psycopg.OperationalError as e:
        why = first_line(e)
        raise ConfigError(
            f"[store] url: cannot connect to PostgreSQL at {where(url)}: {why}",
            hint=connect_hint(why, url),
        ) from None
    adapt_text(conn)
    return conn
