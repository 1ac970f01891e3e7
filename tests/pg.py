"""Real PostgreSQL servers (and PgBouncers) for the farm tests, each in a temporary folder
on a free port, set up as operators' servers are: a UTF8 cluster whose databases may be
made in other encodings, password logins (scram) for every role but the admin, TLS with
a CA the test makes, a small max_connections, PgBouncer in front.

The server binaries come from Debian's `postgresql` package and PgBouncer from
`pgbouncer` (.ci/run installs both): /usr/lib/postgresql/<version>/bin, /usr/sbin.
initdb and pgbouncer refuse to run as root, so when the tests run as root (CI) they
run as the unprivileged `postgres` user that the package creates, via
`runuser -u postgres --`; their folder is made outside pytest's private tmp folder
(0700, root's) and given to that user.

Without the binaries the tests that need a server are skipped with a reason,
unless DROPBOX_TEST_REQUIRE_POSTGRES=1 (set by .ci/run), which makes that a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

REQUIRE_ENV = "DROPBOX_TEST_REQUIRE_POSTGRES"
PASSWORD = "s3cret-Pw-7d1f0c"  # every test role's: the tests grep outputs for it


def pg_bin() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pgbouncer_bin() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Owned:
    """A temporary folder owned by the user the servers run as."""

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.as_user: list[str] = []
        self.uid = os.geteuid()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
            self.uid = user.pw_uid

    def write(self, name: str, text: str, mode: int = 0o600) -> Path:
        p = self.root / name
        p.write_text(text)
        os.chmod(p, mode)
        if os.geteuid() == 0:
            os.chown(p, self.uid, -1)
        return p


class PgServer(_Owned):
    """initdb + pg_ctl start on 127.0.0.1:<free port>; close() removes everything.

    tls: a CA and a server certificate for localhost/127.0.0.1 (self.ca is the CA's file),
    and TCP logins only over TLS. max_connections: as an operator sets it."""

    def __init__(self, *, tls: bool = False, max_connections: int = 200) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
        super().__init__("dropbox-pg-")
        self.bin = bindir
        self.port = free_port()
        self.data = self.root / "data"
        self.tls = tls
        self.max_connections = max_connections
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        # the admin logs in without a password (the tests' own); every other role by scram
        host = "hostssl" if tls else "host"
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"{host} all postgres 127.0.0.1/32 trust\n"
            # the role cert_dropbox: a client certificate signed by the CA, no password
            + ("hostssl all cert_dropbox 127.0.0.1/32 cert\n" if tls else "")
            + f"{host} all all 127.0.0.1/32 scram-sha-256\n"
        )
        if tls:
            self.ca = make_certificates(self)
        self.start()
        self.admin_url = self.url("postgres", "postgres")

    def url(self, user: str, db: str, host: str = "127.0.0.1", password: bool = False) -> str:
        auth = f"{user}:{PASSWORD}" if password else user
        tls = "?sslmode=require" if self.tls else ""
        return f"postgresql://{auth}@{host}:{self.port}/{db}{tls}"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            f"-c fsync=off -c max_connections={self.max_connections}"
        )
        if self.tls:
            opts += (
                f" -c ssl=on -c ssl_cert_file={self.root}/server.crt "
                f"-c ssl_key_file={self.root}/server.key -c ssl_ca_file={self.root}/ca.crt"
            )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def pids(self) -> list[int]:
        """The postmaster and every backend (what a SIGSTOP of "the server" stops)."""
        import psutil

        top = int((self.data / "postmaster.pid").read_text().split()[0])
        p = psutil.Process(top)
        return [top, *(c.pid for c in p.children(recursive=True))]

    def freeze(self, sig: int = signal.SIGSTOP) -> None:
        """SIGSTOP (or SIGCONT) the server: it answers nothing; its kernel still acks."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def admin(self, sql: str, db: str = "postgres") -> None:
        from dropbox_daemon.store.pg_conn import connect

        with connect(self.url("postgres", db)) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, encoding: str = "UTF8", migrate: bool = True) -> str:
        """A fresh database (in `encoding`, made from template0 as a DBA would) with the
        farm's schema applied by its owner (the admin) unless migrate=False; its admin URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin(f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0")
        url = self.url("postgres", name)
        if migrate:
            from dropbox_daemon.store.pg_conn import connect
            from dropbox_daemon.store.pg_schema import migrate as apply

            with connect(url) as conn:
                apply(conn)
        return url

    def dml_role(self, db_url: str) -> str:
        """A role (login, password) with rows rights only on the farm's tables in the
        database of `db_url`; its name."""
        from dropbox_daemon.store.pg_conn import connect
        from dropbox_daemon.store.pg_schema import grant

        role = "rw_" + uuid.uuid4().hex[:8]
        self.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        with connect(db_url) as conn:
            grant(conn, role)
        return role

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)


def self_signed_ca(folder: Path, name: str = "not the farm's CA") -> Path:
    """A CA certificate (and its key, ca.key) in `folder`; its path."""
    openssl(
        folder,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    return folder / "ca.crt"


def client_certificate(server: PgServer, user: str, folder: Path) -> tuple[Path, Path]:
    """A client certificate for `user` signed by the server's CA, in `folder`: (cert, key)."""
    d = server.root
    key, csr, crt = folder / f"{user}.key", folder / f"{user}.csr", folder / f"{user}.crt"
    openssl(
        folder,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={user}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    openssl(
        folder,
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        str(crt),
    )
    key.chmod(0o600)
    return crt, key


def make_certificates(server: PgServer) -> Path:
    """A CA and a server certificate it signs (names localhost and 127.0.0.1); the CA's path."""
    d = server.root
    ca = self_signed_ca(d, "test farm CA")
    openssl(
        d,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        d,
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    for name in ("server.key", "server.crt"):
        os.chmod(d / name, 0o600)
        if os.geteuid() == 0:
            os.chown(d / name, server.uid, -1)
    os.chmod(ca, 0o644)
    return ca


class PgBouncer(_Owned):
    """Debian's pgbouncer in front of `server`, in `mode` (transaction or session), for
    the roles named (logging in with PASSWORD)."""

    def __init__(self, server: PgServer, mode: str, roles: list[str]) -> None:
        exe = pgbouncer_bin()
        if exe is None:
            raise RuntimeError("no pgbouncer (apt-get install pgbouncer)")
        super().__init__("dropbox-pgb-")
        self.port = free_port()
        users = "".join(f'"{r}" "{PASSWORD}"\n' for r in roles)
        self.write("users.txt", users)
        ini = self.write(
            "pgbouncer.ini",
            "[databases]\n"
            f"* = host=127.0.0.1 port={server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.root}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.root}/users.txt\n"
            f"pool_mode = {mode}\n"
            "max_client_conn = 500\ndefault_pool_size = 20\n"
            f"logfile = {self.root}/log\npidfile = {self.root}/pid\n",
        )
        self.proc = subprocess.Popen(
            [*self.as_user, exe, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"pgbouncer did not start: {err}") from None
                time.sleep(0.1)

    def url(self, user: str, db: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        try:  # runuser waits on pgbouncer: stop pgbouncer itself
            os.kill(int((self.root / "pid").read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
