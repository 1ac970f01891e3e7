"""The logic behind what the operator reads: status's one verdict, health's phases, the
unit file's paths, ids from drop names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dropbox_daemon import health
from dropbox_daemon.cli import daemon_state
from dropbox_daemon.cli.doctor import unit_paths
from dropbox_daemon.config import load
from dropbox_daemon.job_names import name_id
from dropbox_daemon.outbox import utc_iso


@pytest.mark.parametrize(
    ("stem", "want"),
    [
        ("Démo été 01", "Demo-ete-01"),
        ("Straße", "Strasse"),
        ("日本語", "RiBenYu"),
        ("a.b.c", "a-b-c"),  # no dot: `.<n>` counts reuses of a name
        ("x.dup-1", "x-dup-1"),
        ("--help", "help"),
        ("🎉", "tada"),
        ("...", "job"),
        ("n" * 80, "n" * 48),
    ],
)
def test_name_id(stem: str, want: str) -> None:
    assert name_id(stem) == want


def _beat(pid: int, status: str, phase: str, age: float = 1.0, **more) -> dict:  # noqa: ANN003
    return {
        "pid": pid,
        "status": status,
        "phase": phase,
        "written_at": utc_iso(time.time() - age),
        "reasons": more.pop("reasons", []),
        **more,
    }


@pytest.mark.parametrize(
    ("pid", "beat", "phase", "healthy", "words"),
    [
        (None, None, "stopped", False, "never started"),
        (None, "stopped", "stopped", False, "NOT running: stopped cleanly"),
        (None, "ok", "killed", False, "did not stop cleanly"),
        (7, None, "starting", False, "no heartbeat from this run"),
        (7, "other-pid", "starting", False, "no heartbeat from this run"),
        (7, "ok", "running", True, "running (pid 7); health: healthy (ok)"),
        (7, "degraded-starting", "starting", True, "starting"),
        (7, "stopping", "draining", True, "STOPPING"),
        (7, "failing", "running", False, "NOT healthy"),
        (7, "stale", "hung", False, "hung"),
    ],
)
def test_status_says_one_thing(pid, beat, phase, healthy, words) -> None:  # noqa: ANN001
    beats = {
        None: None,
        "stopped": _beat(5, "stopped", "stopped", reasons=["stopped cleanly at T (SIGTERM)"]),
        "ok": _beat(pid or 5, "ok", "running"),
        "other-pid": _beat(5, "stopped", "stopped"),
        "degraded-starting": _beat(7, "degraded", "starting"),
        "stopping": _beat(7, "stopping", "draining"),
        "failing": _beat(7, "failing", "running"),
        "stale": _beat(7, "ok", "running", age=600),
    }
    got = daemon_state(pid, beats[beat], 10.0, time.time())
    assert (got["phase"], got["healthy"]) == (phase, healthy), got
    assert words in got["line"], got["line"]


def test_health_phases_and_their_status(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    (tmp_path / "in").mkdir()
    cfg_file.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/s"\noutbox = "{tmp_path}/o"\n'
        f'[[inbox]]\nname = "a"\npath = "{tmp_path}/in"\n'
    )
    cfg = load(str(cfg_file))
    v = health.DaemonView(worker_state="starting")
    now = time.monotonic()
    disks = {"outbox": 1 << 40}
    assert health.phase(v) == "starting"
    assert health.evaluate(v, cfg, disks, now)[0] == "degraded"
    v.ready, v.worker_state = True, "busy"
    assert (health.phase(v), health.evaluate(v, cfg, disks, now)[0]) == ("running", "ok")
    v.stopping, v.stop_reason, v.current_job = True, "SIGTERM", "j1"
    status, reasons = health.evaluate(v, cfg, disks, now)
    assert health.phase(v) == "draining" and status == "stopping"
    assert "finishing job j1" in reasons[0] and "SIGTERM" in reasons[0]
    v.worker_state, v.current_job = "stopped", None  # the worker is told to stop: not failing
    assert health.evaluate(v, cfg, disks, now)[0] == "stopping"
    v.stopped_at = time.time()
    status, reasons = health.evaluate(v, cfg, disks, now)
    assert (health.phase(v), status) == ("stopped", "stopped") and "stopped cleanly" in reasons[0]
    # a change a reader acts on changes the signature; progress alone does not
    before = health.signature(v)
    v.loop_tick += 5
    assert health.signature(v) == before
    v.current_job = "j2"
    assert health.signature(v) != before


def test_unit_paths_add_up_and_reset() -> None:
    text = (
        "# /etc/systemd/system/dropbox-daemon.service\n[Unit]\nReadWritePaths=/nope\n"
        "[Service]\nReadWritePaths=/srv/a -/srv/b\nStateDirectory=dropbox\n"
        "# /etc/systemd/system/dropbox-daemon.service.d/override.conf\n[Service]\n"
        "ReadWritePaths=/srv/c\n"
    )
    assert unit_paths(text) == [
        Path("/srv/a"),
        Path("/srv/b"),
        Path("/var/lib/dropbox"),
        Path("/srv/c"),
    ]
    assert unit_paths(text + "[Service]\nReadWritePaths=\nReadWritePaths=/d\n") == [Path("/d")]
