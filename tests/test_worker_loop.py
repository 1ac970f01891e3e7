"""The worker's serve loop in this process, over a real pipe: orders in, messages out."""

from __future__ import annotations

import errno
import multiprocessing as mp
import threading
from pathlib import Path

from test_render_steps import make_cfg, make_job

from dropbox_daemon.errors import JobCancelled, RejectedDrop, RenderError
from dropbox_daemon.protocol import JobSpec
from dropbox_daemon.render.process import WorkerLoop, outcome_of


def test_errors_become_outcomes_a_person_can_act_on() -> None:
    job = JobSpec(job_id="j1", inbox="default", outbox_dir="/outbox/j1")
    assert outcome_of(JobCancelled("stopped", stage="rendering"), job)["outcome"] == "cancelled"
    rejected = outcome_of(RejectedDrop("bad wav", code="audio_invalid", field="audio"), job)
    assert rejected["outcome"] == "rejected" and rejected["error"]["code"] == "audio_invalid"
    assert outcome_of(RenderError("no", code="no_face"), job)["error"]["code"] == "no_face"
    full = outcome_of(OSError(errno.ENOSPC, "No space left", "/out/x.partial"), job)
    assert full["error"]["code"] == "disk_full" and "/out/x.partial" in full["error"]["message"]
    bug = outcome_of(ZeroDivisionError("division by zero"), job)["error"]
    assert bug["code"] == "internal" and "ZeroDivisionError" in bug["traceback"]


def test_the_loop_renders_a_job_answers_each_step_and_stops_when_told(
    tmp_path: Path, media
) -> None:  # noqa: ANN001
    daemon_end, worker_end = mp.Pipe(duplex=True)
    cfg = make_cfg(tmp_path)
    loop = WorkerLoop(worker_end, cfg)
    thread = threading.Thread(target=loop.serve, daemon=True)
    thread.start()
    ready = daemon_end.recv()  # passthrough is not preloaded: the job loads it (a log line)
    assert ready["type"] == "ready" and ready["device"] == "cpu"
    job = make_job(tmp_path, media.tone, media.image).model_copy(update={"engine": "passthrough"})
    daemon_end.send({"type": "job", "job": job.model_dump()})
    daemon_end.send({"type": "stop"})
    said = []
    while not said or said[-1]["type"] != "result":
        assert daemon_end.poll(60), said
        said.append(daemon_end.recv())
    kinds = [m["type"] for m in said]
    assert (
        kinds[0] == "log"
        and "inputs" in kinds
        and "stage" in kinds
        and all(m["job_id"] == "j1" for m in said)
    )
    assert said[-1]["outcome"] == "done", said[-1]
    assert (tmp_path / "outbox" / "j1" / "result.mp4").exists()
    thread.join(10)
    assert not thread.is_alive()  # stop: the loop ends once no job is left
    assert loop.cancels == {}


def test_a_sticky_cuda_error_ends_the_worker_not_only_the_job(monkeypatch) -> None:  # noqa: ANN001
    """After an illegal memory access every CUDA call of the process fails: the worker exits
    (its job re-queued by the daemon, as for any worker death) instead of failing each next
    job; an ordinary error fails only its job."""
    from dropbox_daemon.errors import EngineError
    from dropbox_daemon.render import process as W

    assert W.sticky_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    wrapped = EngineError("render failed", code="render")
    wrapped.__cause__ = RuntimeError("CUDA error: device-side assert triggered")
    assert "device-side assert" in W.sticky_cuda_error(wrapped)
    assert W.sticky_cuda_error(RuntimeError("CUDA out of memory")) is None
    assert W.sticky_cuda_error(ValueError("bad frame")) is None

    sent, exits = [], []
    loop = W.WorkerLoop.__new__(W.WorkerLoop)
    loop.send = sent.append  # type: ignore[method-assign]
    loop.cancels = {"j": None}
    loop.exit = exits.append  # type: ignore[method-assign]
    loop.cfg = None

    def fails(error):  # noqa: ANN001, ANN202
        def engine_for(job, emit):  # noqa: ANN001, ANN202
            raise error

        return engine_for

    monkeypatch.setattr(
        loop,
        "engine_for",
        fails(RuntimeError("CUDA error: an illegal memory access")),
        raising=False,
    )
    loop.run_job(JobSpec(job_id="j", inbox="default", outbox_dir="/outbox/j"))
    assert exits == [W.EXIT_GPU_BROKEN]
    monkeypatch.setattr(
        loop, "engine_for", fails(EngineError("no face", code="no_face")), raising=False
    )
    exits.clear()
    loop.run_job(JobSpec(job_id="j", inbox="default", outbox_dir="/outbox/j"))
    assert exits == [] and sent[-1]["outcome"] == "failed"


def test_the_worker_sends_only_the_protocols_messages_and_a_bad_result_as_a_failure() -> None:
    from dropbox_daemon.render import process as W

    class Pipe:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        def send(self, msg: dict) -> None:
            self.sent.append(msg)

    loop = W.WorkerLoop(Pipe(), None)  # type: ignore[arg-type]
    loop.send({"type": "progress", "job_id": "j1", "progress": 0.5, "frames": 10, "fps": 25.0})
    loop.send({"type": "progress", "job_id": "j1", "progress": 7})  # past 1: a bug, not sent
    loop.send({"type": "result", "job_id": "j1", "outcome": "done", "output": {"name": "r"}})
    sent = loop.conn.sent  # type: ignore[attr-defined]
    assert [m["type"] for m in sent] == ["progress", "result"]
    assert sent[0]["progress"] == 0.5 and "worker_pid" not in sent[0]
    failed = sent[1]
    assert failed["outcome"] == "failed" and failed["error"]["code"] == "internal"
    assert "timings" in failed["error"]["message"] or "output" in failed["error"]["message"]
