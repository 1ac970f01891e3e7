"""Signed HTTP callbacks: the task record POSTed to the manifest's callback_url when a job ends.

Deliveries are rows in SQLite, written in the same transaction as the job's
final state (store.py), so a daemon that restarts resumes every pending one.
A thread of its own sends them: a slow or dead receiver never delays
rendering. Every attempt is a line in the job's log.txt.

Signature: X-Dropbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>.
A receiver recomputes v1 over the raw body it received, compares in constant
time, and rejects a t older than 5 minutes (docs/client.md).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import threading
import time
from urllib.parse import urljoin, urlsplit

import httpx
from loguru import logger

from dropbox_daemon import __version__, redact
from dropbox_daemon.config import CallbacksConfig, Config
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.retry import delay, parse_retry_after, retryable_status
from dropbox_daemon.store import Store, StoreUnavailable, open_store

SIGNATURE_HEADER = "X-Dropbox-Signature"
REPLAY_WINDOW = 300  # seconds a receiver should accept a signature's timestamp
MAX_REDIRECTS = 3


def sign(key: bytes, body: bytes, t: int) -> str:
    """The X-Dropbox-Signature value for `body` sent at unix time `t`."""
    mac = hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(key: bytes, body: bytes, header: str, now: float, window: float = REPLAY_WINDOW) -> bool:
    """What a receiver does: parse t and v1, recompute, compare in constant time, refuse old t."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - t) > window:
        return False
    expected = hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


def host_allowed(url: str, cfg: CallbacksConfig) -> str | None:
    """None if `url` may be called, else why not (in words for the job's log)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not any(
        fnmatch.fnmatch(host, pat.lower()) for pat in cfg.allow_hosts + cfg.allow_http_hosts
    ):
        return f"host {host!r} is not in [callbacks] allow_hosts"
    if parts.scheme == "http" and not any(
        fnmatch.fnmatch(host, p.lower()) for p in cfg.allow_http_hosts
    ):
        return f"plain http to {host!r} is refused (https required unless the host is in allow_http_hosts)"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http(s)"
    return None


class Deliverer:
    """The callback sender: a thread that takes due deliveries from the database."""

    def __init__(self, cfg: Config, on_give_up=None) -> None:  # noqa: ANN001
        self.cfg = cfg
        self.ccfg = cfg.callbacks
        self.on_give_up = on_give_up or (lambda: None)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.store: Store | None = None
        self.outbox = Outbox(cfg.daemon.outbox)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="callbacks", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        self.store = open_store(self.cfg, self.outbox)
        with httpx.Client(
            timeout=self.ccfg.timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": f"dropbox-daemon/{__version__}"},
        ) as client:
            while not self.stopping.is_set():
                try:
                    next_due = self.loop_once(client, time.time())
                except StoreUnavailable:
                    next_due = 5.0  # the daemon's log and health say so; deliveries wait
                except Exception:  # noqa: BLE001 - the sender must outlive one bad delivery
                    logger.exception("callback sender: unexpected error; it goes on in 5 s")
                    next_due = 5.0
                self.wake.wait(min(next_due, 5.0))
                self.wake.clear()
        self.store.close()

    def loop_once(self, client: httpx.Client, now: float) -> float:
        """Send every due delivery once; seconds until the next one is due."""
        assert self.store is not None
        for row in self.store.due_deliveries(now):
            if self.stopping.is_set():
                break
            self.attempt(client, row, now)
        return self.store.next_delivery_in(time.time())

    def _log(self, row: dict, message: str) -> None:
        self.outbox.log(
            row["job_id"], row["trace_id"] or "-", f"callback: {message}", at=time.time()
        )

    def attempt(self, client: httpx.Client, row: dict, now: float) -> None:
        """One try of one delivery, recorded in the database and in log.txt."""
        assert self.store is not None
        url = row["url"]
        shown = redact.endpoint(url)  # a token in its query stays out of log.txt
        refused = host_allowed(url, self.ccfg)
        if refused:
            self.store.finish_delivery(row["id"], "refused", error=refused)
            self._log(row, f"not sent to {shown}: {refused}")
            return
        body = row["body"].encode()
        headers = {
            "Content-Type": "application/json",
            "X-Dropbox-Job": row["job_id"],
            "X-Trace-Id": row["trace_id"] or "",
        }
        key = self.ccfg.signing_key()
        if key:
            headers[SIGNATURE_HEADER] = sign(key, body, int(now))
        n = row["attempts"] + 1
        t0 = time.monotonic()
        status, error, retry_after = None, None, None
        try:
            resp = client.post(url, content=body, headers=headers)
            for _ in range(MAX_REDIRECTS):
                if not resp.is_redirect:
                    break
                target = urljoin(url, resp.headers.get("location", ""))
                if urlsplit(target).netloc != urlsplit(url).netloc:
                    error = f"redirect to another host ({urlsplit(target).netloc}) not followed"
                    break
                # every hop passes the same checks as the first: a redirect from https to
                # http would send the signed body in clear text
                if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                    error = "redirect from https to plain http not followed"
                    break
                if refused := host_allowed(target, self.ccfg):
                    error = f"redirect not followed: {refused}"
                    break
                resp = client.post(target, content=body, headers=headers)
            status = resp.status_code
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        took = time.monotonic() - t0
        answered = time.time()  # Retry-After counts from the answer, not from the request
        if status is not None and 200 <= status < 300 and error is None:
            self.store.finish_delivery(row["id"], "delivered", status=status, attempts=n)
            self._log(row, f"attempt {n} to {shown}: {status} in {took:.2f} s; delivered")
            return
        what = error or f"HTTP {status}"
        final = error is not None and status is not None  # a refused redirect
        final = final or (status is not None and not retryable_status(status) and error is None)
        wait = delay(n, self.ccfg.retry, retry_after)
        if not final and answered + wait > row["created_at"] + self.ccfg.deadline_seconds:
            final, what = True, f"{what}; deadline of {self.ccfg.deadline_seconds:.0f} s reached"
        if final:
            self.store.finish_delivery(row["id"], "failed", status=status, error=what, attempts=n)
            self._log(row, f"attempt {n} to {shown}: {what} in {took:.2f} s; giving up")
            self.on_give_up()
            logger.bind(job_id=row["job_id"], trace_id=row["trace_id"]).warning(
                "callback for job {} to {} failed for good: {}", row["job_id"], shown, what
            )
            return
        self.store.retry_delivery(
            row["id"], attempts=n, next_at=answered + wait, status=status, error=what
        )
        self._log(row, f"attempt {n} to {shown}: {what} in {took:.2f} s; retry in {wait:.1f} s")
