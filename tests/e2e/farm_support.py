"""Helpers for the farm tests: several real daemons on one inbox and outbox, and drops for them."""

from __future__ import annotations

import json
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from support import DaemonProc, put_file, put_manifest

from dropbox_daemon.config import default_instance_id


def farm(
    daemon_factory,  # noqa: ANN001
    root: Path,
    n: int,
    *,
    store_url: str = "",
    store: dict[str, Any] | None = None,
    **daemon_kw: Any,
) -> list[DaemonProc]:
    """`n` daemons, each with its own state folder and default identity, on one shared
    inbox and outbox (as hosts mounting one share, or one daemon per GPU); `store`: more
    [store] keys beside the URL (password_file, sslmode, ...)."""
    inbox, outbox = root / "shared-inbox", root / "shared-outbox"
    inbox.mkdir(parents=True, exist_ok=True)
    out = []
    for _ in range(n):
        sections = {"store": {"url": store_url, **(store or {})}} if store_url else None
        d = daemon_factory(
            inbox={"path": str(inbox), "settle_seconds": 0.5},
            daemon={"outbox": str(outbox), **daemon_kw},
            sections=sections,
        )
        d.inbox, d.outbox = inbox, outbox
        out.append(d)
    return out


def instance_of(d: DaemonProc) -> str:
    return default_instance_id(socket.gethostname(), d.state)


def drop_valid(inbox: Path, media, job_id: str, priority: int = 0, long: bool = False) -> None:  # noqa: ANN001
    """A job folder with a short passthrough job (or a longer one), renamed into place last."""
    staging = inbox / f".{job_id}.staging"
    staging.mkdir()
    put_file(staging / "a.wav", media.tone_long if long else media.tone_short)
    put_file(staging / "t.png", media.big_image if long else media.tiny_image)
    m = {"job_id": job_id, "audio": "a.wav", "template": "t.png", "priority": priority}
    (staging / "job.json").write_text(json.dumps(m))
    staging.rename(inbox / job_id)


def drop_invalid(inbox: Path, media, job_id: str, n: int) -> None:  # noqa: ANN001
    """One of three kinds of bad drop, each naming only files it brings (nothing stays behind)."""
    kind = n % 3
    if kind == 0:  # a path leading out of the inbox, in a job folder
        staging = inbox / f".{job_id}.staging"
        staging.mkdir()
        put_file(staging / "a.wav", media.tone_short)
        m = {"job_id": job_id, "audio": "a.wav", "template": "../../etc/passwd"}
        (staging / "job.json").write_text(json.dumps(m))
        staging.rename(inbox / job_id)
    elif kind == 1:  # a misspelt field, loose manifest
        put_file(inbox / f"{job_id}.wav", media.tone_short)
        put_file(inbox / f"{job_id}.png", media.tiny_image)
        put_manifest(
            inbox / f"{job_id}.json",
            {"job_id": job_id, "audio": f"{job_id}.wav", "template": f"{job_id}.png", "prio": 1},
        )
    else:  # a priority out of range
        put_file(inbox / f"{job_id}.wav", media.tone_short)
        put_file(inbox / f"{job_id}.png", media.tiny_image)
        put_manifest(
            inbox / f"{job_id}.json",
            {
                "job_id": job_id,
                "audio": f"{job_id}.wav",
                "template": f"{job_id}.png",
                "priority": 99,
            },
        )


def outcome(outbox: Path) -> dict[str, dict[str, Any]]:
    """job folder name -> its task.json (folders without a readable one map to {})."""
    out = {}
    for d in sorted(p for p in outbox.iterdir() if p.is_dir() and p.name != "_daemon"):
        try:
            out[d.name] = json.loads((d / "task.json").read_text())
        except (OSError, ValueError):
            out[d.name] = {}
    return out


def terminal_lines(outbox: Path, job_id: str) -> Counter:
    """How many times log.txt says the job reached each terminal state."""
    c: Counter = Counter()
    for line in (outbox / job_id / "log.txt").read_text().splitlines():
        for state in ("done", "rejected", "failed", "duplicate"):
            if f"-> {state}" in line or line.rstrip().endswith(f"state {state}"):
                c[state] += 1
    return c


def freeze(d: DaemonProc, sig: int = signal.SIGSTOP) -> list[int]:
    """SIGSTOP (or SIGCONT) a daemon and every process under it (worker, ffmpeg)."""
    assert d.proc is not None
    procs = [psutil.Process(d.proc.pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
    return [p.pid for p in procs]


def leftovers(inbox: Path) -> list[str]:
    """What is still in the inbox besides the daemons' own .dropbox folder."""
    return sorted(p.name for p in inbox.iterdir() if p.name != ".dropbox")
