"""`dropbox-daemon demo`: make a sample audio and template, drop them, wait, print the result.

Starts a daemon for the duration of the demo when none runs on this config.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dropbox_daemon import client
from dropbox_daemon.config import Config
from dropbox_daemon.errors import CliError
from dropbox_daemon.health import disk_free, holding
from dropbox_daemon.render.media.encode import ffmpeg_binary

DEMO_SECONDS = 6.0


PRESENTER = Path(__file__).parents[1] / "assets" / "presenter.jpg"  # NASA portrait, public domain


def make_samples(folder: Path, ffmpeg: str, seconds: float = DEMO_SECONDS) -> tuple[Path, Path]:
    """A syllable-like tone with pauses (wav) and the bundled presenter photo."""
    folder.mkdir(parents=True, exist_ok=True)
    audio, template = folder / "demo-speech.wav", folder / "demo-presenter.jpg"
    # 4 syllables a second, silent every other second: audible rhythm to sync to
    expr = "0.6*sin(2*PI*180*t)*abs(sin(2*PI*2*t))*(lt(mod(t,2),1.2))"
    run = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run(
        [*run, "-f", "lavfi", "-i", f"aevalsrc='{expr}':s=16000:d={seconds}", str(audio)],
        check=True,
    )
    shutil.copyfile(PRESENTER, template)
    return audio, template


def start_daemon(cfg: Config) -> subprocess.Popen[bytes]:
    from dropbox_daemon.pidfile import read_pid

    cmd = [sys.executable, "-m", "dropbox_daemon", "run", "--config", str(cfg.source)]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 60
    while read_pid(cfg) != proc.pid:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CliError(
                "the demo's daemon did not start", hint="run `dropbox-daemon run` to see why"
            )
        time.sleep(0.1)
    return proc


def run(cfg: Config, *, json_out: bool = False) -> int:
    from dropbox_daemon.pidfile import read_pid

    low = holding(
        {"outbox": disk_free(cfg.daemon.outbox), "state": disk_free(cfg.daemon.state_dir)}, cfg
    )
    if low:  # the daemon would hold the job until there is room: say so now, not in 600 s
        raise CliError(
            f"demo: {low}, under [health] disk_fail_bytes ({cfg.health.disk_fail_bytes >> 20} "
            "MiB): the daemon takes no new work with so little space",
            hint="free some, or lower disk_fail_bytes in the config",
        )
    samples = make_samples(cfg.daemon.state_dir / "demo", ffmpeg_binary(cfg.media.ffmpeg))
    proc = None if read_pid(cfg) else start_daemon(cfg)
    try:
        handle = client.submit(cfg.inbox[0].path, *samples, outbox=cfg.daemon.outbox)
        print(f"dropped job {handle.job_id} into {cfg.inbox[0].path}", file=sys.stderr)
        try:
            rec = handle.wait(timeout=600)
        except client.JobFailed as e:
            raise CliError(
                f"demo job {e.record['state']}: {e.error.get('message')}",
                hint=e.error.get("hint") or f"see {handle.folder / 'log.txt'}",
            ) from None
        result = handle.folder / rec["output"]["name"]
        if json_out:
            print(json.dumps(rec, indent=2))
        else:
            print(f"result: {result}")
            print(
                f"engine {rec['engine']}, {rec['output']['duration']:.2f} s video, "
                f"rendered in {rec['timings']['total']:.2f} s; log: {handle.folder / 'log.txt'}"
            )
        return 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
