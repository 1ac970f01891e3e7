"""What the operator reads is what the daemon is doing: status, /health and health.json at
each transition, against a real daemon and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
from support import put_file, put_manifest, wait_for
from test_web import free_port

AGREE_WITHIN = 1.0  # seconds from a transition (the daemon's own log line) to /health saying it


def _health(c: httpx.Client) -> dict:
    try:
        return c.get("/health").json()
    except (httpx.TransportError, ValueError):
        return {}


def _health_file(d) -> dict:  # noqa: ANN001
    try:
        return json.loads((d.daemon_dir / "health.json").read_text())
    except (OSError, ValueError):
        return {"worker": {}}


def _said(d, text: str, after: int) -> bool:  # noqa: ANN001
    return text.encode() in d.logfile.read_bytes()[after:]


def test_status_and_health_follow_each_transition(daemon_factory, media) -> None:  # noqa: ANN001
    port = free_port()
    # a heartbeat far apart: only a write at the change itself can keep up
    d = daemon_factory(
        daemon={"stop_timeout_seconds": 120.0},
        sections={
            "http": {"listen": f"127.0.0.1:{port}"},
            "health": {"heartbeat_seconds": 60.0},
            "models": {"wav2lip": str(media.wav2lip_checkpoint)},
        },
    )
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def agree(what: str, phase: str, status: set[str], **worker: object) -> dict:
        """/health says `phase` within AGREE_WITHIN of the transition; status --json agrees."""
        t0 = time.monotonic()
        h = wait_for(
            lambda: (h := _health(c)).get("phase") == phase and h, 30, f"/health: {what}", d
        )
        took = time.monotonic() - t0
        assert took <= AGREE_WITHIN, f"/health said {what} {took:.2f} s after it happened: {h}"
        assert h["status"] in status, h
        s = json.loads(d.cli("status", "--json").stdout)
        assert s["phase"] == phase and s["health"]["status"] in status, s["summary"]
        beat = s["health"]
        if "worker" in worker:
            assert h["worker"] == beat["worker"]["state"] == worker["worker"], (h, s["summary"])
        if "current_job" in worker:
            now = (beat.get("current_job") or {}).get("job_id")
            assert h["current_job"] == now == worker["current_job"], (h, s["summary"])
        return s

    log_at = 0
    d.start(wait_ready=False)
    wait_for(lambda: _said(d, "started as instance", log_at), 60, "the daemon's start", d)
    # the worker is still loading the model (wav2lip weights): starting, and it says so
    if not _said(d, "worker ready", log_at):
        s = agree("starting", "starting", {"ok", "degraded"})
        assert s["running"] and "starting" in s["summary"], s["summary"]
    wait_for(lambda: _said(d, "worker ready", log_at), 60, "worker ready", d)
    s = agree("ready", "running", {"ok"}, worker="idle")
    assert s["healthy"] and s["running"]

    put_file(d.inbox / "long.wav", media.tone_95)
    put_file(d.inbox / "long.png", media.image)
    put_manifest(
        d.inbox / "long.json", {"job_id": "long", "audio": "long.wav", "template": "long.png"}
    )
    wait_for(lambda: _said(d, "job long started", log_at), 60, "job long to start", d)
    # the worker held (SIGSTOP) mid-render, so the job outlasts what the test reads
    worker_pid = wait_for(lambda: _health_file(d)["worker"]["pid"], 10, "the worker's pid", d)
    os.kill(worker_pid, signal.SIGSTOP)
    s = agree("rendering", "running", {"ok"}, worker="busy", current_job="long")
    assert s["health"]["current_job"]["job_id"] == "long"
    text = d.cli("status").stdout
    assert "worker: busy" in text and "now: long" in text, text

    d.proc.send_signal(signal.SIGTERM)
    s = agree("draining", "draining", {"stopping"}, current_job="long")
    text = d.cli("status").stdout
    assert "STOPPING" in text and "finishing job long" in text, text
    os.kill(worker_pid, signal.SIGCONT)

    assert d.proc.wait(180) == 0
    assert d.task("long")["state"] == "done"  # the drain let it finish
    beat = json.loads((d.daemon_dir / "health.json").read_text())
    assert beat["status"] == "stopped" and beat["phase"] == "stopped", beat
    assert beat["worker"]["state"] == "stopped" and beat["worker"]["pid"] is None, beat["worker"]
    assert "SIGTERM" in beat["reasons"][0]
    r = d.cli("status", "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 1 and s["phase"] == "stopped" and not s["running"], s["summary"]
    text = d.cli("status").stdout
    assert "NOT running: stopped cleanly" in text and "worker:" not in text, text


def test_status_after_a_kill_says_so(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory().start()
    wait_for(lambda: (d.daemon_dir / "health.json").exists(), 30, "health.json", d)
    d.kill9()
    r = d.cli("status")
    assert r.returncode == 1 and "did not stop cleanly" in r.stdout, r.stdout
    assert json.loads(d.cli("status", "--json").stdout)["phase"] == "killed"
