"""`dropbox-daemon smoke`: render a 10-second job through the running daemon and say pass or fail.

The post-deploy check, and a monitoring cron's: it goes through the real drop
protocol into the `smoke` inbox, with the default engine, and checks the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dropbox_daemon import client
from dropbox_daemon.cli.demo import make_samples
from dropbox_daemon.config import SMOKE_INBOX, Config
from dropbox_daemon.render.media.encode import ffmpeg_binary

SMOKE_SECONDS = 10.0


def run(
    cfg: Config, *, timeout: float = 600, start_daemon: bool = False
) -> tuple[bool, dict[str, Any]]:
    """(passed, report): the report says what was checked, with the result path and timings."""
    from dropbox_daemon.cli.demo import start_daemon as start
    from dropbox_daemon.pidfile import read_pid

    report: dict[str, Any] = {"inbox": SMOKE_INBOX}
    try:
        inbox = cfg.inbox_by_name(SMOKE_INBOX)
    except Exception:  # noqa: BLE001 - ConfigError: say what to add
        report["error"] = (
            f'no [[inbox]] named "{SMOKE_INBOX}" in {cfg.source}: add one (see config.toml)'
        )
        return False, report
    proc = None
    if not read_pid(cfg):
        if not start_daemon:
            report["error"] = "the daemon is not running (systemctl status dropbox-daemon)"
            return False, report
        proc = start(cfg)
    try:
        samples = make_samples(
            cfg.daemon.state_dir / "smoke-samples", ffmpeg_binary(cfg.media.ffmpeg), SMOKE_SECONDS
        )
        job_id = time.strftime("smoke-%Y%m%d-%H%M%S")
        t0 = time.monotonic()
        handle = client.submit(inbox.path, *samples, outbox=cfg.daemon.outbox, job_id=job_id)
        report["job_id"] = job_id
        try:
            rec = handle.wait(timeout=timeout)
        except client.JobFailed as e:
            report["error"] = f"job ended {e.record.get('state')}: {e.error.get('message')}"
            return False, report
        except TimeoutError as e:
            report["error"] = str(e)
            return False, report
        out = rec["output"]
        report.update(
            result=str(Path(handle.folder) / out["name"]),
            engine=rec["engine"],
            wall_seconds=round(time.monotonic() - t0, 2),
            timings=rec["timings"],
            duration=out["duration"],
            size=f"{out['width']}x{out['height']}",
        )
        if abs(out["duration"] - SMOKE_SECONDS) > 1.0 / out["fps"] + 0.03:
            report["error"] = f"result lasts {out['duration']} s, expected {SMOKE_SECONDS}"
            return False, report
        return True, report
    finally:
        if proc is not None:
            import signal

            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
