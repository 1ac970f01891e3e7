"""The optional local HTTP listener: /health, /ready, /metrics, the jobs API and a status page.

Standard library server in a thread of the daemon (never the worker); every
request reads the database on a connection of its own thread. Files are
served only from outbox/<job_id>/, by job id and known names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dropbox_daemon import health
from dropbox_daemon.config import Config
from dropbox_daemon.coordination import Coordination, open_coordination
from dropbox_daemon.errors import ConfigError
from dropbox_daemon.listener import BoundedServer, allowed_hosts, is_loopback
from dropbox_daemon.metrics import Metrics
from dropbox_daemon.outbox import LOG_TXT, POSTER, Outbox
from dropbox_daemon.store import STATES, Store, is_farm, open_store

PAGE = Path(__file__).parent / "assets" / "index.html"
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")  # matched whole
MAX_LIMIT = 500
CHUNK = 1 << 16


LOG_MAX_BYTES = 1 << 20  # of log.txt served by /api/jobs/<id>/log
REQUEST_SECONDS = 10.0  # per socket operation: an idle or trickling client is dropped after


def log_tail(path: Path, limit: int = LOG_MAX_BYTES) -> bytes:
    """A job's log.txt, its last `limit` bytes where it is longer (from a line's start)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return b""
    if size > limit:
        data = b"(earlier lines left out)\n" + data.split(b"\n", 1)[-1]
    return data


class Web:
    """Owns the listener thread: start() and stop() are its whole life."""

    def __init__(self, cfg: Config, view: health.DaemonView, metrics: Metrics) -> None:
        self.cfg, self.view, self.metrics = cfg, view, metrics
        self.lock = threading.Lock()
        self.sqlite_lock = threading.Lock()
        self._store: Store | None = None
        self._coordination: Coordination | None = None
        self.server: BoundedServer | None = None
        self.thread: threading.Thread | None = None
        self.token: str | None = None
        self.hosts: set[str] = set()

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """The listener's one store, opened once (not a connection, a migration check and a
        write lock per request): SQLite's connection used by one request at a time,
        PostgreSQL's pool by every request thread at once."""
        with self.lock:
            if self._store is None:
                self._store = open_store(self.cfg, Outbox(self.cfg.daemon.outbox))
        if is_farm(self.cfg):  # its pool is thread-safe; one SQLite connection is not
            yield self._store
            return
        with self.sqlite_lock:
            yield self._store

    def start(self) -> None:
        if not self.cfg.http.listen:
            return
        host, port = self.cfg.http.listen.rsplit(":", 1)
        self.token = self.cfg.http.bearer()  # read once; an empty token_file stops the start
        if not self.token and not is_loopback(host):
            raise ConfigError(
                f"[http] listen = {self.cfg.http.listen!r} reaches beyond this host without a "
                "token: anyone on the network could read every job",
                hint="set [http] token_file (or token), or listen on 127.0.0.1",
            )
        self.hosts = allowed_hosts(self.cfg.http.listen)
        web = self

        class Handler(_Handler):
            app = web

        self.server = BoundedServer((host, int(port)), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.thread.start()
        logger.info("http: status page and API on http://{}/", self.cfg.http.listen)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- what the endpoints answer ------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            beat = json.loads((self.cfg.daemon_dir / health.HEALTH_JSON).read_text())
            written = dt.datetime.fromisoformat(
                beat["written_at"].replace("Z", "+00:00")
            ).timestamp()
        except (OSError, ValueError, KeyError):
            return 503, {"alive": False, "reason": "no heartbeat written yet"}
        age = time.time() - written
        fresh = age <= 3 * self.cfg.health.heartbeat_seconds + 5
        body = {
            "alive": fresh,
            "status": beat.get("status"),
            "phase": beat.get("phase"),
            "worker": (beat.get("worker") or {}).get("state"),
            "current_job": (beat.get("current_job") or {}).get("job_id"),
            "heartbeat_age_seconds": round(age, 1),
            "reasons": beat.get("reasons", []),
            "store": beat.get("store"),
            # farm mode: whether the link to the database is encrypted and verified
            "store_connection": beat.get("store_connection"),
        }
        return (200 if fresh else 503), body

    def ready(self) -> tuple[int, dict[str, Any]]:
        v = self.view
        reasons = []
        if v.stopping:
            reasons.append(f"the daemon is stopping ({v.stop_reason}); no new job starts")
        elif not v.ready:
            reasons.append(f"worker not ready ({v.worker_state}: loading its models)")
        if not v.watch_modes:
            reasons.append("inboxes not watched yet")
        try:
            with self.store() as store:
                store.counts()
        except Exception as e:  # noqa: BLE001 - any database trouble means not ready
            reasons.append(f"store not readable: {e}")
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "worker": v.worker_state,
            "engines": v.worker_info.get("engines", []),
        }
        return (503 if reasons else 200), body

    def jobs(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        state = (query.get("state") or [None])[0]
        inbox = (query.get("inbox") or [None])[0]
        instance = (query.get("instance") or [None])[0]
        if state and state not in STATES:
            return 400, {"error": f"unknown state {state!r}", "states": list(STATES)}
        try:
            limit = min(MAX_LIMIT, max(1, int((query.get("limit") or ["50"])[0])))
        except ValueError:
            return 400, {"error": "limit must be an integer"}
        before = (query.get("before") or [None])[0]
        want = {"state": state, "inbox": inbox, "instance": instance}
        with self.store() as store:
            share = self.coordination(store)  # the share's jobs, in either way
            try:
                rows, cursor = share.page(want, limit, before)
            except ValueError:
                return 400, {"error": "before must be the next_before of an earlier page"}
            counts = share.counts()
        return 200, {"jobs": rows, "next_before": cursor, "counts": counts}

    def coordination(self, store: Store) -> Coordination:
        """The way this daemon's share coordinates, opened once beside the listener's store
        (on a shared folder it keeps the peers' records between requests)."""
        if self._coordination is None or self._coordination.store is not store:
            self._coordination = open_coordination(self.cfg, store)
        return self._coordination

    def instances(self) -> tuple[int, Any]:
        """Every daemon of the farm (or of the shared inboxes) and which one answers."""
        with self.store() as store:
            return 200, {
                "me": self.cfg.instance_id,
                "instances": self.coordination(store).instances(),
            }

    def job(self, job_id: str) -> tuple[int, Any]:
        job = None
        if JOB_ID.fullmatch(job_id):
            with self.store() as store:
                job = store.get(job_id)
        if job is None:
            return 404, {"error": f"no job {job_id!r}"}
        return 200, job.record()


class _Handler(BaseHTTPRequestHandler):
    app: Web
    server_version = "dropbox-daemon"
    timeout = REQUEST_SECONDS  # each read and write of the socket

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.head_read(self.connection)  # type: ignore[attr-defined]
        return ok

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.debug("http: {} {}", self.address_string(), fmt % args)

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        token = self.app.token
        if not token:
            # no token: only this host's own names, so a page elsewhere cannot read the API
            # through a DNS name it points at 127.0.0.1 (DNS rebinding)
            return self.headers.get("Host", "").lower() in self.app.hosts
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        try:
            if path == "/health":
                self._json(*self.app.health())
                return
            if not self._authorised(query):
                if not self.app.token:
                    self._json(403, {"error": "this Host is not one this listener serves"})
                    return
                self._send(
                    401,
                    b'{"error": "a bearer token is required"}',
                    "application/json",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            self._route(path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # noqa: BLE001 - one bad request must not stop the listener
            logger.exception("http: {} failed; answered 500", path)
            self._json(500, {"error": "internal error; see the daemon's log"})

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        app = self.app
        if path == "/ready":
            self._json(*app.ready())
        elif path == "/metrics":
            self._send(200, generate_latest(app.metrics.registry), CONTENT_TYPE_LATEST)
        elif path in ("/", "/index.html"):
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/api/instances":
            self._json(*self.app.instances())
        elif path == "/api/jobs":
            self._json(*app.jobs(query))
        elif m := re.fullmatch(r"/api/jobs/([^/]+)", path):
            self._json(*app.job(m.group(1)))
        elif m := re.fullmatch(r"/api/jobs/([^/]+)/log", path):
            status, rec = app.job(m.group(1))
            if status != 200:
                self._json(status, rec)
                return
            self._send(
                200,
                log_tail(app.cfg.daemon.outbox / rec["job_id"] / LOG_TXT),
                "text/plain; charset=utf-8",
            )
        elif m := re.fullmatch(r"/files/([^/]+)/([^/]+)", path):
            self._file(m.group(1), m.group(2))
        else:
            self._json(404, {"error": f"no such endpoint {path}"})

    def _file(self, job_id: str, name: str) -> None:
        """A job's result or poster, by job id and the names the job itself gives."""
        status, rec = self.app.job(job_id)
        allowed = {POSTER: "image/jpeg"}
        if status == 200 and rec.get("output"):
            allowed[rec["output"]["name"]] = "video/mp4"
        if status != 200 or name not in allowed:
            self._json(404, {"error": "no such file"})
            return
        root = self.app.cfg.daemon.outbox.resolve()
        path = (root / rec["job_id"] / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            self._json(404, {"error": "no such file"})
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if rng and size:
            if rng.group(1):
                start, end = int(rng.group(1)), int(rng.group(2) or size - 1)
            else:
                start = max(0, size - int(rng.group(2) or 0))
            end = min(end, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if rng else HTTPStatus.OK)
        self.send_header("Content-Type", allowed[name])
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(max(0, end - start + 1)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                self.wfile.write(chunk)
                left -= len(chunk)
