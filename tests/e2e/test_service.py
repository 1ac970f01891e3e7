"""The service as operators see it: sd_notify, heartbeat, metrics, status, logs, doctor, smoke, the unit."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import put_file, put_manifest, wait_for

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "dropbox-daemon.service"
FAST = {"health": {"heartbeat_seconds": 0.5, "disk_warn_bytes": 0, "disk_fail_bytes": 0}}


def drop(d, media, job_id: str, template: str = "ok") -> None:  # noqa: ANN001
    put_file(d.inbox / f"{job_id}.wav", media.tone)
    if template == "ok":
        put_file(d.inbox / f"{job_id}.png", media.image)
    put_manifest(
        d.inbox / f"{job_id}.json",
        {"job_id": job_id, "audio": f"{job_id}.wav", "template": f"{job_id}.png"},
    )


def test_notify_heartbeat_metrics_status_logs(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    seen: list[str] = []
    reading = threading.Event()

    def read() -> None:  # as systemd does: always reading, whatever the test is doing
        while not reading.is_set():
            try:
                seen.extend(sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    d = daemon_factory(sections=FAST).start(env={"NOTIFY_SOCKET": sock_path})
    wait_for(lambda: {"READY=1", "WATCHDOG=1"} <= set(seen), 30, "READY and WATCHDOG", d)
    assert any(m.startswith("STATUS=") for m in seen)
    assert "worker ready" in d.log_text()  # READY only once the worker had loaded

    drop(d, media, "m1")
    drop(d, media, "m2")
    drop(d, media, "m3", template="missing")
    for j in ("m1", "m2", "m3"):
        d.wait_state(j, timeout=60)
    prom = d.daemon_dir / "metrics.prom"

    def jobs_metric() -> dict:
        fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
        return {
            (s.labels["state"], s.labels["inbox"]): s.value
            for s in fams["dropbox_jobs"].samples
            if s.name == "dropbox_jobs_total"
        }

    counts = wait_for(
        lambda: (c := jobs_metric()) and c.get(("rejected", "default")) == 1 and c, 30, "metrics", d
    )
    assert counts == {("done", "default"): 2.0, ("rejected", "default"): 1.0}
    fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    render = {s.name: s.value for s in fams["dropbox_render_seconds"].samples}
    assert render["dropbox_render_seconds_count"] == 2
    assert {s.name: s.value for s in fams["dropbox_pickup_latency_seconds"].samples}[
        "dropbox_pickup_latency_seconds_count"
    ] >= 2
    assert fams["dropbox_last_success_timestamp_seconds"].samples[0].value > 0
    beat = json.loads((d.daemon_dir / "health.json").read_text())
    assert beat["status"] == "ok" and beat["ready"] and beat["worker"]["state"] == "idle"
    assert beat["worker"]["memory_bytes"] > 10 << 20
    assert beat["last_done"]["job_id"] in ("m1", "m2") and beat["jobs_by_state"]["rejected"] == 1
    assert beat["config_hash"] == d.task("m1")["config_hash"]
    assert set(beat["disk_free_bytes"]) == {"outbox", "state"}
    written = beat["written_at"]
    wait_for(
        lambda: json.loads((d.daemon_dir / "health.json").read_text())["written_at"] != written,
        10,
        "the next heartbeat",
        d,
    )

    r = d.cli("status")
    assert (
        r.returncode == 0 and "health: healthy (ok)" in r.stdout and "worker: idle" in r.stdout
    ), r.stdout
    r = d.cli("logs", "m1", "--daemon")
    assert (
        r.returncode == 0 and "state encoding -> done" in r.stdout and "job m1 started" in r.stdout
    )
    jsonl = (d.state / "logs" / "daemon.jsonl").read_text().splitlines()
    assert any(json.loads(line)["record"]["extra"].get("job_id") == "m1" for line in jsonl)
    assert d.stop() == 0
    wait_for(lambda: "STOPPING=1" in seen, 10, "STOPPING=1", d)
    reading.set()
    reader.join(5)
    sock.close()
    r = d.cli("status")
    assert r.returncode == 1 and "NOT running" in r.stdout


def test_smoke_passes_through_a_running_daemon(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory(
        inbox={"engine": "auto"}, extra_inboxes=[{"name": "smoke", "path": "smoke-in"}]
    )
    d.start()
    r = d.cli("smoke", "--timeout", "120")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        r.stdout.startswith("PASS smoke") and "engine preview" in r.stdout and "10.00 s" in r.stdout
    )
    report = json.loads(d.cli("smoke", "--json").stdout)
    assert report["passed"] and Path(report["result"]).exists()


def test_smoke_fails_clearly_without_a_daemon(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory(extra_inboxes=[{"name": "smoke", "path": "smoke-in"}])
    r = d.cli("smoke")
    assert r.returncode == 1 and "FAIL" in r.stdout and "not running" in r.stdout


@pytest.mark.skipif(
    not shutil.which("systemd-analyze"),
    reason="systemd-analyze not installed (apt-get install systemd)",
)
@pytest.mark.parametrize("unit", [UNIT, UNIT.with_name("dropbox-daemon@.service")])
def test_unit_verifies_and_is_hardened(unit: Path, tmp_path: Path) -> None:
    if "@" in unit.name:  # a template is verified as one of its instances
        unit = Path(shutil.copy(unit, tmp_path / "dropbox-daemon@0.service"))
        text = unit.read_text()
        for needed in (
            "CUDA_VISIBLE_DEVICES=%i",
            "DROPBOX_DAEMON_STATE_DIR=/var/lib/dropbox-daemon/gpu%i",
            "DROPBOX_DAEMON_INSTANCE=%H-gpu%i",
            "StateDirectory=dropbox-daemon/gpu%i",
        ):
            assert needed in text, needed
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd="/"
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
    )
    line = [x for x in r.stdout.splitlines() if "Overall exposure level" in x][0]
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.0, line
    text = unit.read_text()
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "User=dropbox",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "MemoryMax=",
        "TasksMax=",
        "LimitNOFILE=",
        "UMask=0027",
        "DeviceAllow=char-nvidia* rw",
        "Wants=network-online.target dropbox-daemon-gpu.service",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "NoNewPrivileges=yes",
    ):
        assert needed in text, needed


def doctor(d) -> tuple[int, dict]:  # noqa: ANN001
    r = d.cli("doctor", "--json")
    checks = json.loads(r.stdout)
    return r.returncode, {c["name"]: c for c in checks}


def test_doctor_good_setup_exits_zero(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory()
    d.outbox.mkdir()
    d.state.mkdir()
    rc, checks = doctor(d)
    assert rc == 0, [c for c in checks.values() if c["status"] == "fail"]
    assert (
        checks["encoder libx264"]["status"] == "ok"
        and checks["claims in inbox default"]["status"] == "ok"
    )
    assert checks["template cache"]["detail"].startswith("0 template(s), 0 MiB of 4096 MiB")


def test_doctor_fails_where_others_can_write_dropbox(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory()
    d.outbox.mkdir()
    d.state.mkdir()
    rc, checks = doctor(d)
    assert rc == 0 and checks[".dropbox/ of inbox default"]["status"] == "ok"
    (d.inbox / ".dropbox").chmod(0o777)  # a share set up for everyone
    rc, checks = doctor(d)
    c = checks[".dropbox/ of inbox default"]
    assert rc == 1 and c["status"] == "fail" and "drwxrwxrwx" in c["detail"], c
    assert c["fix"].startswith("chmod -R go-w")


def test_doctor_warns_when_the_template_cache_could_fill_the_disk(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory(sections={"media": {"template_cache_bytes": 1 << 50}})  # a petabyte
    d.outbox.mkdir()
    d.state.mkdir()
    rc, checks = doctor(d)
    cache = checks["template cache"]
    assert rc == 0 and cache["status"] == "warn", cache
    assert "lower [media] template_cache_bytes below" in cache["fix"]


def test_doctor_fails_on_missing_weights_and_encoder(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    import imageio_ffmpeg

    real = imageio_ffmpeg.get_ffmpeg_exe()
    # an ffmpeg build without libx264: the real binary, its encoder list without that line
    fake = tmp_path / "ffmpeg-no-x264"
    fake.write_text(f'#!/bin/sh\n"{real}" "$@" | grep -v libx264\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    d = daemon_factory(
        sections={"media": {"ffmpeg": str(fake)}, "models": {"wav2lip": str(tmp_path / "nope.pth")}}
    )
    d.outbox.mkdir()
    d.state.mkdir()
    rc, checks = doctor(d)
    assert rc == 1
    assert (
        checks["encoder libx264"]["status"] == "fail"
        and "libx264" in checks["encoder libx264"]["detail"]
    )
    assert (
        checks["wav2lip weights"]["status"] == "fail"
        and "does not exist" in checks["wav2lip weights"]["detail"]
    )
    assert all(c["fix"] for c in checks.values() if c["status"] == "fail")


def _mount_tmpfs(path: Path, *opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(["size=4m", *opts]), "tmpfs", str(path)],
        capture_output=True,
    )
    return r.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a test file system")
def test_doctor_fails_on_unwritable_outbox_and_foreign_claim_folder(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory()
    d.state.mkdir()
    claimed = d.inbox / ".dropbox" / "claimed"
    if not _mount_tmpfs(d.outbox, "ro") or not _mount_tmpfs(claimed):
        pytest.skip("mount is not permitted here")
    try:
        rc, checks = doctor(d)
        assert rc == 1
        assert (
            checks["outbox folder"]["status"] == "fail"
            and "not writable" in checks["outbox folder"]["detail"]
        )
        claim = checks["claims in inbox default"]
        assert claim["status"] == "fail" and (
            "another file system" in claim["detail"] or "cannot rename" in claim["detail"]
        )
    finally:
        subprocess.run(["umount", str(d.outbox)], capture_output=True)
        subprocess.run(["umount", str(claimed)], capture_output=True)


def test_a_main_loop_that_cannot_get_through_is_degraded_with_why_and_recovers(
    daemon_factory, media
) -> None:  # noqa: ANN001
    """Another process holds the state database's write lock (a `sqlite3` shell left in a
    transaction): every pass stops at its first write with 'database is locked'. Health says
    so within 30 s (degraded, the reason, the watchdog still fed: a restart would not help)
    and is ok again once the lock is gone; the job renders on meanwhile and is done after."""
    import sqlite3

    health = {"heartbeat_seconds": 0.5, "loop_stall_seconds": 12.0}
    d = daemon_factory(sections={"health": {**FAST["health"], **health}}).start()
    put_file(d.inbox / "held.wav", media.tone_95)
    put_file(d.inbox / "held.png", media.big_image)
    put_manifest(  # 95 s at 50 fps: it renders well past the 12 s the loop is held
        d.inbox / "held.json",
        {"job_id": "held", "audio": "held.wav", "template": "held.png", "output": {"fps": 50}},
    )
    d.wait_state("held", {"rendering"}, timeout=60)
    beat = lambda: json.loads((d.daemon_dir / "health.json").read_text())  # noqa: E731
    lock = sqlite3.connect(d.state / "jobs.sqlite3", isolation_level=None, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        h = wait_for(
            lambda: (b := beat()) and "no pass has got through" in " ".join(b["reasons"]) and b,
            30,
            "health to say the main loop cannot get through",
            d,
        )
        assert h["status"] == "degraded" and "database is locked" in " ".join(h["reasons"]), h
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: beat()["status"] == "ok", 30, "health to recover", d)
    assert d.wait_state("held", "done", timeout=180)["state"] == "done"


# /proc/devices of NVIDIA drivers: current ones (major 195 as nvidia and nvidiactl) and older
# ones (nvidia-frontend); nvidia-uvm, nvidia-caps and nvidia-nvswitch take dynamic majors
PROC_DEVICES = {
    "current": "Character devices:\n  1 mem\n  4 tty\n195 nvidia\n195 nvidiactl\n"
    "236 nvidia-nvswitch\n237 nvidia-caps\n511 nvidia-uvm\n\nBlock devices:\n  8 sd\n",
    "older": "Character devices:\n  1 mem\n195 nvidia-frontend\n240 nvidia-uvm\n"
    "241 nvidia-caps\n\nBlock devices:\n",
}


def allowed_groups(unit_text: str, proc_devices: str) -> set[str]:
    """The character device groups a unit's DeviceAllow=char-<glob> lines let through, as
    systemd matches them against /proc/devices (fnmatch)."""
    import fnmatch

    patterns = [
        line.split("=", 1)[1].split()[0].removeprefix("char-")
        for line in unit_text.splitlines()
        if line.startswith("DeviceAllow=char-")
    ]
    chars = proc_devices.split("Block devices:")[0].splitlines()[1:]
    groups = {line.split()[1] for line in chars if line.strip()}
    return {g for g in groups if any(fnmatch.fnmatchcase(g, p) for p in patterns)}


@pytest.mark.parametrize("unit", [UNIT, UNIT.with_name("dropbox-daemon@.service")])
@pytest.mark.parametrize("driver", sorted(PROC_DEVICES))
def test_units_let_every_nvidia_device_through(unit: Path, driver: str) -> None:
    text = unit.read_text()
    got = allowed_groups(text, PROC_DEVICES[driver])
    want = {
        "nvidia",
        "nvidiactl",
        "nvidia-frontend",
        "nvidia-uvm",
        "nvidia-caps",
        "nvidia-nvswitch",
    }
    assert got == want & set(PROC_DEVICES[driver].split()), got  # and nothing else (mem, tty)
    # the groups are read at start: the modules are loaded before, by a unit that may
    assert "After=network-online.target remote-fs.target dropbox-daemon-gpu.service" in text
    gpu = (UNIT.parent / "dropbox-daemon-gpu.service").read_text()
    assert "nvidia-modprobe -u" in gpu and "Type=oneshot" in gpu


def test_gpu_units_count_gpus_as_nvidia_smi_does() -> None:
    text = UNIT.with_name("dropbox-daemon@.service").read_text()
    assert "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID" in text
    assert text.index("CUDA_DEVICE_ORDER=") < text.index("Environment=CUDA_VISIBLE_DEVICES=%i")
