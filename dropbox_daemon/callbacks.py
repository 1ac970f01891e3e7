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
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from loguru import logger

from dropbox_daemon import __version__, redact
from dropbox_daemon.config import Config
from dropbox_daemon.config_net import CallbacksConfig
from dropbox_daemon.outbox import Outbox, utc_iso
from dropbox_daemon.retry import delay, parse_retry_after, retryable_status
from dropbox_daemon.store import Store, StoreUnavailable, open_store

SIGNATURE_HEADER = "X-Dropbox-Signature"
REPLAY_WINDOW = 300  # seconds a receiver should accept a signature's timestamp
MAX_REDIRECTS = 3
SENDERS = 4  # deliveries in flight at once


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


class Send:
    """One HTTP attempt of one delivery, run in a sender thread with a client of its own, so
    that the deliverer can close it at the deadline: a trickling answer cannot hold it. The
    answer's body is never read (its status and headers are the answer)."""

    def __init__(self, row: dict, ccfg: CallbacksConfig, now: float) -> None:
        self.row, self.ccfg, self.now = row, ccfg, now
        self.refused = host_allowed(row["url"], ccfg)
        self.status: int | None = None
        self.error: str | None = None
        self.retry_after: float | None = None
        self.took = 0.0
        self.started: float | None = None  # monotonic, once a sender thread runs it
        self.done = threading.Event()
        self.client = httpx.Client(
            timeout=ccfg.timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": f"dropbox-daemon/{__version__}"},
        )

    def wait(self) -> None:
        """Wait for the attempt; once it has run for timeout_seconds (its total, however the
        receiver trickles), close its connection and call it failed."""
        while not self.done.wait(0.2):
            started = self.started
            if started is not None and time.monotonic() - started > self.ccfg.timeout_seconds:
                self.error = f"no complete answer within {self.ccfg.timeout_seconds:.0f} s"
                self.client.close()  # the sender's blocked read ends with an error
                self.done.wait(5.0)
                self.status = None
                return

    def run(self) -> None:
        t0 = self.started = time.monotonic()
        try:
            if not self.refused:
                self._post()
        except Exception as e:  # noqa: BLE001 - httpx's or any other: this attempt's error
            self.error = self.error or f"{type(e).__name__}: {e}"
        finally:
            self.took = time.monotonic() - t0
            self.client.close()
            self.done.set()

    def _post(self) -> None:
        url, row = self.row["url"], self.row
        body = row["body"].encode()
        headers = {
            "Content-Type": "application/json",
            "X-Dropbox-Job": row["job_id"],
            "X-Trace-Id": row["trace_id"] or "",
        }
        key = self.ccfg.signing_key()
        if key:
            headers[SIGNATURE_HEADER] = sign(key, body, int(self.now))
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            with self.client.stream("POST", target, content=body, headers=headers) as resp:
                status, location = resp.status_code, resp.headers.get("location", "")
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                redirect = resp.is_redirect
            self.status, self.retry_after = status, retry_after
            if not redirect:
                return
            nxt = urljoin(target, location)
            if urlsplit(nxt).netloc != urlsplit(url).netloc:
                self.error = f"redirect to another host ({urlsplit(nxt).netloc}) not followed"
                return
            # every hop passes the same checks as the first: a redirect from https to
            # http would send the signed body in clear text
            if urlsplit(target).scheme == "https" and urlsplit(nxt).scheme != "https":
                self.error = "redirect from https to plain http not followed"
                return
            if refused := host_allowed(nxt, self.ccfg):
                self.error = f"redirect not followed: {refused}"
                return
            target = nxt


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
        with ThreadPoolExecutor(SENDERS, thread_name_prefix="callback-send") as pool:
            while not self.stopping.is_set():
                try:
                    next_due = self.loop_once(pool, time.time())
                except StoreUnavailable:
                    next_due = 5.0  # the daemon's log and health say so; deliveries wait
                except Exception:  # noqa: BLE001 - the sender must outlive one bad delivery
                    logger.exception("callback sender: unexpected error; it goes on in 5 s")
                    next_due = 5.0
                self.wake.wait(min(next_due, 5.0))
                self.wake.clear()
        self.store.close()

    def loop_once(self, pool: ThreadPoolExecutor, now: float) -> float:
        """Send every due delivery once, SENDERS at a time, each within its own total deadline
        (a receiver that trickles its answer holds one sender for timeout_seconds at most, and
        none of the others); the database is written from this thread. Seconds until the
        next one is due."""
        assert self.store is not None
        rows = [r for r in self.store.due_deliveries(now) if not self.stopping.is_set()]
        sends = [Send(row, self.ccfg, now) for row in rows]
        for send in sends:
            pool.submit(send.run)
        for send in sends:
            send.wait()
            self.record(send.row, send, now)
        return self.store.next_delivery_in(time.time())

    def _log(self, row: dict, message: str) -> None:
        self.outbox.log(
            row["job_id"], row["trace_id"] or "-", f"callback: {message}", at=time.time()
        )

    def _note(self, row: dict, state: str, reason: str | None, **more: Any) -> None:
        """The outcome so far in the job's task.json (`callback`), for readers of the outbox
        and JobHandle.callback()."""
        outcome = {"state": state, "reason": reason, "url": redact.endpoint(row["url"]), **more}
        try:
            self.outbox.note_callback(row["job_id"], row["trace_id"], outcome)
        except OSError as e:
            logger.warning(
                "callback outcome of job {} not written to task.json: {}", row["job_id"], e
            )

    def record(self, row: dict, send: Send, now: float) -> None:
        """One try of one delivery, recorded in the database and in log.txt."""
        assert self.store is not None
        url = row["url"]
        shown = redact.endpoint(url)  # a token in its query stays out of log.txt
        if send.refused:
            self.store.finish_delivery(row["id"], "refused", error=send.refused)
            self._log(row, f"not sent to {shown}: {send.refused}")
            self._note(row, "refused", send.refused, attempts=0)
            self.on_give_up()
            logger.bind(job_id=row["job_id"], trace_id=row["trace_id"]).warning(
                "callback for job {} not sent to {}: {}; the job itself ended as recorded "
                "(add the host to [callbacks] allow_hosts if it is trusted)",
                row["job_id"],
                shown,
                send.refused,
            )
            return
        n = row["attempts"] + 1
        status, error, retry_after, took = send.status, send.error, send.retry_after, send.took
        answered = time.time()  # Retry-After counts from the answer, not from the request
        if status is not None and 200 <= status < 300 and error is None:
            self.store.finish_delivery(row["id"], "delivered", status=status, attempts=n)
            self._log(row, f"attempt {n} to {shown}: {status} in {took:.2f} s; delivered")
            self._note(row, "delivered", None, attempts=n, status=status)
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
            self._note(row, "failed", what, attempts=n, status=status)
            self.on_give_up()
            logger.bind(job_id=row["job_id"], trace_id=row["trace_id"]).warning(
                "callback for job {} to {} failed for good: {}", row["job_id"], shown, what
            )
            return
        self.store.retry_delivery(
            row["id"], attempts=n, next_at=answered + wait, status=status, error=what
        )
        self._log(row, f"attempt {n} to {shown}: {what} in {took:.2f} s; retry in {wait:.1f} s")
        self._note(
            row, "pending", what, attempts=n, status=status, next_at=utc_iso(answered + wait)
        )
