"""The http engine against real services on 127.0.0.1 that mimic /human/generate (sync) and submit/poll (async).

The services render for real (ffmpeg: a solid red picture for the audio's length)
on a "shared volume" they name differently (path_map), like a container would.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import av
from support import HttpServer, ffmpeg, json_reply, put_file, put_manifest

REMOTE = "/volume"  # how the service names the daemon's folder


class FakeService:
    """Renders a red video with the job's audio at save_path; fails or stalls on request."""

    def __init__(
        self,
        local_root: Path,
        fail_first: int = 0,
        stall: bool = False,
        slow: float = 0.0,
        answer: dict | None = None,
    ) -> None:
        self.local_root, self.fail_first, self.stall = local_root, fail_first, stall
        self.slow, self.answer = slow, answer  # seconds a render takes; an answer to send instead
        self.calls = 0
        self.tasks: dict[str, dict] = {}
        self.ids = itertools.count(1)
        self.server = HttpServer(self.handle)

    def local(self, remote: str) -> Path:
        assert remote.startswith(REMOTE + "/"), remote  # the daemon mapped its paths
        return self.local_root / remote[len(REMOTE) + 1 :]

    def render(self, req: dict) -> str:
        audio, save = self.local(req["audio_path"]), self.local(req["save_path"])
        assert self.local(req["video_path"]).exists()
        with av.open(str(audio)) as c:
            seconds = c.duration / 1e6
        ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=160x120:r=25",
            "-i",
            str(audio),
            "-t",
            f"{seconds:.3f}",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(save),
        )
        return req["save_path"]

    def handle(self, req: dict) -> tuple[int, dict[str, str], bytes]:
        self.calls += 1
        if req["method"] == "POST" and self.calls <= self.fail_first:
            return json_reply({"code": 500, "message": "busy"}, 500)
        if req["path"] == "/human/generate":
            body = json.loads(req["body"])
            task = f"t{next(self.ids)}"
            time.sleep(self.slow)
            if self.answer is not None:
                self.render(body)
                return json_reply(self.answer)
            return json_reply(
                {
                    "code": 10000,
                    "message": "ok",
                    "data": {"save_path": self.render(body), "task_id": task},
                }
            )
        if req["path"] == "/submit":
            task = f"t{next(self.ids)}"
            self.tasks[task] = {"req": json.loads(req["body"]), "polls": 0}
            return json_reply({"task_id": task})
        if req["path"].startswith("/status/"):
            t = self.tasks[req["path"].rsplit("/", 1)[1]]
            t["polls"] += 1
            if self.stall or t["polls"] < 3:
                return json_reply({"status": "running", "progress": 0.5})
            return json_reply({"status": "done", "save_path": self.render(t["req"])})
        return json_reply({"error": "not found"}, 404)


def http_daemon(
    daemon_factory, tmp_path: Path, service: FakeService, mode: str, daemon=None, **http
):  # noqa: ANN001, ANN003, ANN201
    d = daemon_factory(
        daemon=daemon,
        sections={
            "engines.http": {
                "base_url": service.server.url,
                "mode": mode,
                "poll_seconds": 0.2,
                "path_map": [[str(tmp_path), REMOTE]],
                **http,
            },
            "engines.http.retry": {"initial_seconds": 0.1, "jitter": 0.0},
        },
    )
    return d.start()


def drop(d, media, job_id: str) -> None:  # noqa: ANN001
    put_file(d.inbox / f"{job_id}.wav", media.tone)
    put_file(d.inbox / f"{job_id}.png", media.image)
    put_manifest(
        d.inbox / f"{job_id}.json",
        {"job_id": job_id, "audio": f"{job_id}.wav", "template": f"{job_id}.png", "engine": "http"},
    )


def assert_services_video(d, job_id: str) -> None:  # noqa: ANN001
    task = d.wait_state(job_id, timeout=90)
    assert task["state"] == "done", task
    assert task["engine"] == "http" and abs(task["output"]["duration"] - 2.0) <= 0.05
    with av.open(str(d.outbox / job_id / "result.mp4")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="bgr24").astype(float)
    assert (task["output"]["width"], task["output"]["height"]) == (160, 120)
    top = frame[:60]  # above the AI label: the service's red picture
    assert top[..., 2].mean() > 200 and top[..., 1].mean() < 40


def test_sync_service_retried_after_500s(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    service = FakeService(tmp_path, fail_first=3)
    try:
        d = http_daemon(daemon_factory, tmp_path, service, "sync")
        drop(d, media, "h1")
        assert_services_video(d, "h1")
        log = (d.outbox / "h1" / "log.txt").read_text()
        assert log.count("HTTP 500; retrying") == 3
        assert "task t1 done" in log and d.task("h1")["trace_id"] in log
    finally:
        service.server.stop()


def test_async_service_submit_and_poll(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    service = FakeService(tmp_path)
    try:
        d = http_daemon(daemon_factory, tmp_path, service, "async")
        drop(d, media, "h2")
        assert_services_video(d, "h2")
        log = (d.outbox / "h2" / "log.txt").read_text()
        assert "submitted as task t1" in log and service.tasks["t1"]["polls"] >= 3
    finally:
        service.server.stop()


def test_stuck_service_times_out_naming_its_task(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    service = FakeService(tmp_path, stall=True)
    try:
        d = http_daemon(daemon_factory, tmp_path, service, "async", job_timeout_seconds=2.0)
        drop(d, media, "h3")
        task = d.wait_state("h3", timeout=60)
        assert task["state"] == "failed" and task["error"]["code"] == "engine_timeout", task
        assert "task t1" in task["error"]["message"] and "t1" in task["error"]["hint"]
        assert (d.outbox / "h3" / "input" / "h3.wav").exists()
    finally:
        service.server.stop()


def test_unreachable_service_fails_clearly(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    d = daemon_factory(
        sections={
            "engines.http": {"base_url": "http://127.0.0.1:9", "max_attempts": 2},
            "engines.http.retry": {"initial_seconds": 0.1},
        }
    ).start()
    drop(d, media, "h4")
    task = d.wait_state("h4", timeout=60)
    assert task["state"] == "failed" and task["error"]["code"] == "engine_unreachable"
    assert "127.0.0.1:9" in task["error"]["message"]


def test_a_render_longer_than_hang_seconds_is_not_taken_for_a_hang(
    daemon_factory, media, tmp_path
) -> None:  # noqa: ANN001
    """The worker tells the daemon it lives while the service renders: hang_seconds 3, a
    sync render of 8 s, done on the first attempt."""
    service = FakeService(tmp_path, slow=8.0)
    try:
        d = http_daemon(daemon_factory, tmp_path, service, "sync", daemon={"hang_seconds": 3.0})
        drop(d, media, "slow1")
        assert_services_video(d, "slow1")
        assert d.task("slow1")["attempts"] == 1
        assert "hung" not in d.log_text()
    finally:
        service.server.stop()


def test_a_save_path_outside_the_jobs_folder_is_not_read(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    answer = {"code": 10000, "data": {"save_path": f"{REMOTE}/secret.mp4"}}
    err = failed_with(daemon_factory, media, tmp_path, answer, "engine_output")
    assert "outside this job's folder" in err["message"]
    assert secret.read_bytes() == b"not yours"


def test_an_endless_answer_is_refused(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    answer = {"code": 10000, "pad": "x" * (2 << 20)}
    err = failed_with(daemon_factory, media, tmp_path, answer, "engine_protocol")
    assert "over 1048576 bytes" in err["message"]


def failed_with(daemon_factory, media, tmp_path: Path, answer: dict, code: str) -> dict:  # noqa: ANN001
    """A job against a sync service that renders and then answers `answer`: failed with `code`."""
    service = FakeService(tmp_path, answer=answer)
    try:
        d = http_daemon(daemon_factory, tmp_path, service, "sync")
        drop(d, media, "odd1")
        task = d.wait_state("odd1", timeout=60)
        assert task["state"] == "failed" and task["error"]["code"] == code, task
        return task["error"]
    finally:
        service.server.stop()
