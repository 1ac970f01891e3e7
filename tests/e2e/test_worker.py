"""The model-warm worker and the wav2lip engine, driven through a real daemon."""

from __future__ import annotations

import json
import os
import signal
import time

import av
import psutil
import torch
from support import put_file, put_manifest, wait_for

from dropbox_daemon.render.engines.precision import cpu_has_amx
from dropbox_daemon.render.engines.wav2lip import CPU_BATCH


def drop(d, media, job_id: str, engine: str | None = None, audio=None, template=None) -> None:  # noqa: ANN001
    put_file(d.inbox / f"{job_id}.wav", audio or media.tone)
    put_file(d.inbox / f"{job_id}.png", template or media.face_image)
    m = {"job_id": job_id, "audio": f"{job_id}.wav", "template": f"{job_id}.png"}
    if engine:
        m["engine"] = engine
    put_manifest(d.inbox / f"{job_id}.json", m)


def worker_pid(d) -> int:  # noqa: ANN001
    """The worker's pid from a heartbeat written while it runs (never None: psutil would take ours)."""
    return wait_for(lambda: health(d)["worker"]["pid"], 10, "a heartbeat naming the worker", d)


def health(d) -> dict:  # noqa: ANN001
    return json.loads((d.daemon_dir / "health.json").read_text())


FAST = {"health": {"heartbeat_seconds": 0.5, "disk_warn_bytes": 0, "disk_fail_bytes": 0}}


def test_wav2lip_renders_and_loads_the_model_once(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(
        inbox={"engine": "auto"},
        sections={**FAST, "models": {"wav2lip": str(media.wav2lip_checkpoint)}},
    ).start()
    wait_for(
        lambda: health(d)["worker"]["model_loads"] == {"wav2lip": 1},
        30,
        "the model loaded at start",
        d,
    )
    for n in range(10):
        drop(d, media, f"w{n}")
    for n in range(10):
        task = d.wait_state(f"w{n}", timeout=120)
        assert task["state"] == "done" and task["engine"] == "wav2lip", task
    # the precision and batch of this CPU's class (make test-avx2 caps a bf16 host to fp32)
    precision = "bf16" if cpu_has_amx() else "fp32"
    if torch.cuda.is_available():  # a GPU host: fp16 on CUDA, the batch fitted to its memory
        assert task["device"] == "cuda/fp16", task["device"]
        assert "wav2lip batch" in d.log_text() and "on the GPU" in d.log_text()
    else:
        assert task["device"] == f"cpu/{precision}", task["device"]
        batch = CPU_BATCH[torch.bfloat16 if precision == "bf16" else torch.float32]
        assert f"wav2lip batch {batch} on the CPU in {precision}" in d.log_text()
    with av.open(str(d.outbox / "w9" / "result.mp4")) as c:
        assert c.streams.video[0].frames == task["output"]["frames"] == 50
    assert d.log_text().count("engine wav2lip loaded") == 1  # at start, before READY
    assert health(d)["worker"]["model_loads"] == {"wav2lip": 1}
    assert not any("loaded in" in (d.outbox / f"w{n}" / "log.txt").read_text() for n in range(10))
    # torch, OpenCV and PyAV live in the worker only: their libraries are mapped there, and
    # not in the daemon, which has taken, recorded and answered ten jobs meanwhile
    worker, daemon = libraries(worker_pid(d)), libraries(d.proc.pid)
    for package in ("torch", "cv2", "av"):
        assert f"site-packages/{package}/" in worker, package
        assert f"site-packages/{package}/" not in daemon, package


def libraries(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_damaged_checkpoint_fails_its_jobs_and_preview_still_serves(
    daemon_factory, media, tmp_path
) -> None:  # noqa: ANN001
    bad = tmp_path / "wav2lip_gan.pth"
    bad.write_bytes(media.wav2lip_checkpoint.read_bytes()[:4096])  # a truncated download
    d = daemon_factory(sections={**FAST, "models": {"wav2lip": str(bad)}}).start()
    drop(d, media, "broken", engine="wav2lip")
    task = d.wait_state("broken", timeout=60)
    assert task["state"] == "failed" and task["error"]["code"] == "weights_invalid", task
    assert str(bad) in task["error"]["message"] and task["error"]["hint"]
    wait_for(
        lambda: "wav2lip" in health(d)["worker"]["load_errors"], 10, "the load error in health", d
    )
    drop(d, media, "fine", engine="preview")
    assert d.wait_state("fine", timeout=60)["state"] == "done"


def test_worker_killed_mid_job_is_replaced_and_the_job_done(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(sections=FAST).start()
    drop(d, media, "victim", audio=media.tone_long, template=media.big_image)
    d.wait_state("victim", {"rendering"}, timeout=60)
    old = worker_pid(d)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(
        lambda: (
            (p := health(d)["worker"]["pid"])
            and p != old
            and health(d)["worker"]["state"] != "dead"
        ),
        30,
        "a new worker",
        d,
    )
    assert time.monotonic() - t0 < 10
    task = d.wait_state("victim", timeout=120)
    assert task["state"] == "done" and task["attempts"] == 2, task
    log = (d.outbox / "victim" / "log.txt").read_text()
    assert "killed by signal SIGKILL" in log and "re-queued" in log
    assert health(d)["worker"]["restarts"] == 1 and d.alive()


def test_hung_worker_is_killed_after_hang_seconds(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(daemon={"hang_seconds": 3.0}, sections=FAST).start()
    drop(d, media, "frozen", audio=media.tone_long, template=media.big_image)
    d.wait_state("frozen", {"rendering"}, timeout=60)
    pid = worker_pid(d)
    psutil.Process(pid).suspend()  # SIGSTOP: alive, silent
    t0 = time.monotonic()
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        30,
        "the hung worker to be killed",
        d,
    )
    # hang_seconds count from the worker's last message, which came up to a progress interval
    # (0.5 s, longer while a slow batch runs) before the SIGSTOP
    assert 2.0 <= time.monotonic() - t0 < 15
    task = d.wait_state("frozen", timeout=120)
    assert task["state"] == "done" and task["attempts"] == 2, task
    assert "sent nothing for 3 s (hung)" in (d.outbox / "frozen" / "log.txt").read_text()


def test_job_past_its_time_limit_is_stopped(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory(
        daemon={"job_timeout_seconds": 2.0, "max_attempts": 1}, sections=FAST
    ).start()
    drop(d, media, "slowpoke", audio=media.tone_95, template=media.big_image)  # ~10 s of work
    task = d.wait_state("slowpoke", timeout=60)
    assert task["state"] == "failed" and task["error"]["code"] == "worker_failed", task
    assert "passed its time limit of 2 s" in task["error"]["message"]
    assert (d.outbox / "slowpoke" / "input" / "slowpoke.wav").exists()
    drop(d, media, "after", template=media.image)  # and the daemon goes on
    assert d.wait_state("after", timeout=60)["state"] == "done"


def test_a_crashed_workers_last_words_reach_the_job_and_the_daemon_log(
    daemon_factory, media
) -> None:  # noqa: ANN001
    """A native crash (SIGSEGV): its traceback lands in log.txt, error.json and the daemon's log."""
    d = daemon_factory(daemon={"max_attempts": 1}, sections=FAST).start()
    drop(d, media, "crash", audio=media.tone_long, template=media.big_image)
    d.wait_state("crash", {"rendering"}, timeout=60)
    os.kill(worker_pid(d), signal.SIGSEGV)
    task = d.wait_state("crash", timeout=60)
    assert task["state"] == "failed" and "killed by signal SIGSEGV" in task["error"]["message"]
    assert any("Segmentation fault" in line for line in task["error"]["worker_output"]), task[
        "error"
    ]
    log = (d.outbox / "crash" / "log.txt").read_text()
    assert "worker output: Fatal Python error: Segmentation fault" in log, log
    wait_for(
        lambda: "its last output: Fatal Python error" in d.log_text(),
        10,
        "the daemon's log line",
        d,
    )
    drop(d, media, "after")  # a fresh worker serves the next job
    assert d.wait_state("after", timeout=60)["state"] == "done"
