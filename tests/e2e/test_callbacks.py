"""Callbacks against real HTTP receivers on 127.0.0.1: retries, signatures, restarts, the allowlist."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import time

from support import HttpServer, json_reply, put_file, put_manifest, wait_for

SECRET = "s3cret-for-tests"


def receiver_verifies(body: bytes, header: str, now: float, secret: str = SECRET) -> bool:
    """The receiver's procedure from docs/client.md, written independently of the daemon's code."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    t, v1 = int(fields["t"]), fields["v1"]
    if now - t > 300:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1)


def callback_daemon(daemon_factory, allow: list[str]):  # noqa: ANN001, ANN201
    return daemon_factory(
        sections={
            "callbacks": {"allow_http_hosts": allow, "secret": SECRET},
            "callbacks.retry": {"initial_seconds": 0.2, "jitter": 0.0},
        }
    )


def drop(d, media, job_id: str, url: str) -> None:  # noqa: ANN001
    put_file(d.inbox / f"{job_id}.wav", media.tone)
    put_file(d.inbox / f"{job_id}.png", media.image)
    put_manifest(
        d.inbox / f"{job_id}.json",
        {
            "job_id": job_id,
            "audio": f"{job_id}.wav",
            "template": f"{job_id}.png",
            "callback_url": url,
        },
    )


def test_retries_503_503_429_then_200_and_the_signature_verifies(daemon_factory, media) -> None:  # noqa: ANN001
    answers = [
        json_reply({}, 503),
        json_reply({}, 503),
        json_reply({}, 429, {"Retry-After": "1"}),
        json_reply({"ok": 1}),
    ]
    server = HttpServer(lambda req: answers[min(len(server.requests), 4) - 1])
    try:
        d = callback_daemon(daemon_factory, ["127.0.0.1"]).start()
        drop(d, media, "cb1", server.url + "/hook")
        assert d.wait_state("cb1", timeout=60)["state"] == "done"
        wait_for(
            lambda: (
                len(server.requests) >= 4
                and "delivered" in (d.outbox / "cb1" / "log.txt").read_text()
            ),
            30,
            "the callback to be delivered",
            d,
        )
        reqs = server.requests
        assert len(reqs) == 4 and all(r["path"] == "/hook" and r["method"] == "POST" for r in reqs)
        assert reqs[3]["at"] - reqs[2]["at"] >= 1.0  # Retry-After: 1 honoured
        log = (d.outbox / "cb1" / "log.txt").read_text()
        attempts = re.findall(r"callback: attempt (\d) to \S+: (.*?) in", log)
        assert [(n, what) for n, what in attempts] == [
            ("1", "HTTP 503"),
            ("2", "HTTP 503"),
            ("3", "HTTP 429"),
            ("4", "200"),
        ]
        body, header = reqs[3]["body"], reqs[3]["headers"]["X-Dropbox-Signature"]
        record = json.loads(body)
        assert (
            record["job_id"] == "cb1"
            and record["state"] == "done"
            and record["output"]["name"] == "result.mp4"
        )
        now = time.time()
        assert receiver_verifies(body, header, now)
        assert not receiver_verifies(
            body.replace(b'"done"', b'"failed"'), header, now
        )  # tampered body
        assert not receiver_verifies(body, header, now + 301)  # replayed 5 minutes later
        # one accepted delivery, nothing left to send
        db = sqlite3.connect(f"file:{d.state / 'jobs.sqlite3'}?mode=ro", uri=True)
        rows = db.execute(
            "SELECT state, attempts, last_status FROM deliveries WHERE job_id = 'cb1'"
        ).fetchall()
        assert rows == [("delivered", 4, 200)]
        assert len(server.requests) == 4
        cb = wait_for(lambda: (d.task("cb1") or {}).get("callback"), 10, "task.json's callback", d)
        assert (cb["state"], cb["attempts"], cb["status"]) == ("delivered", 4, 200), cb
    finally:
        server.stop()


def test_pending_callback_survives_a_daemon_kill(daemon_factory, media) -> None:  # noqa: ANN001
    up = {"ok": False}
    server = HttpServer(lambda req: json_reply({}, 200 if up["ok"] else 503))
    try:
        d = callback_daemon(daemon_factory, ["127.0.0.1"]).start()
        drop(d, media, "cb2", server.url + "/hook")
        wait_for(lambda: len(server.requests) >= 1, 60, "a first attempt", d)
        d.kill9()
        up["ok"] = True
        d.start()
        wait_for(
            lambda: "delivered" in (d.outbox / "cb2" / "log.txt").read_text(),
            30,
            "delivery after restart",
            d,
        )
        assert server.requests[-1]["headers"]["X-Dropbox-Job"] == "cb2"
        assert sum(1 for r in server.requests if json.loads(r["body"])["job_id"] == "cb2") >= 2
    finally:
        server.stop()


def test_host_not_on_the_allowlist_is_never_called(daemon_factory, media) -> None:  # noqa: ANN001
    server = HttpServer(lambda req: json_reply({}))
    try:
        d = callback_daemon(daemon_factory, ["hooks.example.com"]).start()
        drop(d, media, "cb3", server.url + "/hook")
        assert d.wait_state("cb3", timeout=60)["state"] == "done"
        log = wait_for(
            lambda: "not sent" in (t := (d.outbox / "cb3" / "log.txt").read_text()) and t,
            30,
            "refusal",
            d,
        )
        assert "'127.0.0.1' is not in [callbacks] allow_hosts" in log
        assert server.requests == []
        # not only in the job's log: the daemon's log warns, task.json and the client say it
        # the job's log is written first; the daemon's log line follows it (and its stream is
        # buffered), so it is waited for, never read once
        line = wait_for(
            lambda: next(
                (x for x in d.log_text().splitlines() if "callback for job cb3" in x), None
            ),
            30,
            "the daemon's warning",
            d,
        )
        assert "WARNING" in line and "not sent" in line and "allow_hosts" in line, line
        from dropbox_daemon.client import JobHandle

        outcome = JobHandle("cb3", d.outbox).callback(timeout=10)
        assert outcome["state"] == "refused" and "allow_hosts" in outcome["reason"], outcome
        assert d.task("cb3")["callback"] == outcome and d.task("cb3")["state"] == "done"
    finally:
        server.stop()


def test_rejected_drop_calls_back_too(daemon_factory, media) -> None:  # noqa: ANN001
    server = HttpServer(lambda req: json_reply({}))
    try:
        d = callback_daemon(daemon_factory, ["127.0.0.1"]).start()
        put_manifest(
            d.inbox / "bad.json",
            {
                "job_id": "cb4",
                "audio": "nope.wav",
                "template": "x.png",
                "callback_url": server.url + "/hook",
            },
        )
        assert d.wait_state("cb4", timeout=30)["state"] == "rejected"
        wait_for(lambda: server.requests, 30, "the callback", d)
        rec = json.loads(server.requests[0]["body"])
        assert rec["state"] == "rejected" and rec["error"]["code"] == "missing_file"
    finally:
        server.stop()


def test_a_trickling_receiver_holds_neither_its_attempt_nor_the_others(
    daemon_factory, media
) -> None:  # noqa: ANN001
    """A receiver that sends its answer a byte a second (each read within the timeout, the
    whole never) is cut off at timeout_seconds; another job's callback is delivered meanwhile."""
    import socket
    import threading

    slow = socket.socket()
    slow.bind(("127.0.0.1", 0))
    slow.listen(8)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                slow.settimeout(0.5)
                conn, _ = slow.accept()
            except OSError:
                continue
            conn.recv(65536)
            for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if stop.is_set():
                    break
                try:
                    conn.sendall(bytes([ch]))
                except OSError:
                    break
                time.sleep(0.5)
            conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    fast = HttpServer(lambda req: json_reply({"ok": 1}))
    try:
        d = daemon_factory(
            sections={
                "callbacks": {"allow_http_hosts": ["127.0.0.1"], "timeout_seconds": 2.0},
                "callbacks.retry": {"initial_seconds": 30.0, "jitter": 0.0},
            }
        ).start()
        drop(d, media, "trickle", f"http://127.0.0.1:{slow.getsockname()[1]}/hook?token=abc")
        assert d.wait_state("trickle", timeout=60)["state"] == "done"
        drop(d, media, "quick", fast.url + "/hook")
        assert d.wait_state("quick", timeout=60)["state"] == "done"
        started = time.monotonic()
        wait_for(
            lambda: "delivered" in (d.outbox / "quick" / "log.txt").read_text(),
            15,
            "the other job's callback",
            d,
        )
        assert time.monotonic() - started < 15
        log = wait_for(
            lambda: (
                (t := (d.outbox / "trickle" / "log.txt").read_text())
                and "no complete answer within 2 s" in t
                and t
            ),
            20,
            "the trickling attempt to be cut off",
            d,
        )
        assert "token=abc" not in log and "/hook?..." in log  # the token stays out of log.txt
        task = json.loads((d.outbox / "trickle" / "task.json").read_text())
        assert task["callback_url"].endswith("/hook?...")  # shown without its query
    finally:
        stop.set()
        fast.stop()
        slow.close()
