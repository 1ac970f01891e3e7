"""The status endpoint and page: httpx against a running daemon, and a headless Chromium."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import headless_chromium, put_file, put_manifest, wait_for

TOKEN = "t0k3n-for-tests"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_daemon(daemon_factory, media, token: str | None = TOKEN, **sections):  # noqa: ANN001, ANN003, ANN201
    port = free_port()
    http = {"listen": f"127.0.0.1:{port}"} | ({"token": token} if token else {})
    d = daemon_factory(sections={"http": http, "health": {"heartbeat_seconds": 0.5}, **sections})
    d.base = f"http://127.0.0.1:{port}"
    return d


def drop(d, media, job_id: str, **kw) -> None:  # noqa: ANN001, ANN003
    put_file(d.inbox / f"{job_id}.wav", kw.pop("audio", media.tone))
    put_file(d.inbox / f"{job_id}.png", kw.pop("template", media.image))
    put_manifest(
        d.inbox / f"{job_id}.json",
        {"job_id": job_id, "audio": f"{job_id}.wav", "template": f"{job_id}.png", **kw},
    )


def raw_get(base: str, path: str) -> int:
    """A request whose path goes out exactly as written (no client-side dot-segment cleanup)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode()
        )
        return int(s.recv(64).split()[1])


def test_endpoints(daemon_factory, media) -> None:  # noqa: ANN001
    d = web_daemon(daemon_factory, media, models={"wav2lip": str(media.wav2lip_checkpoint)})
    d.start(wait_ready=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    c = httpx.Client(base_url=d.base, timeout=10)

    def get(path: str, **kw):  # noqa: ANN003, ANN202
        try:
            return c.get(path, **kw)
        except httpx.TransportError:
            return None

    not_ready = wait_for(
        lambda: (r := get("/ready", headers=auth)) is not None and r.status_code == 503 and r,
        30,
        "/ready to answer 503 while the model loads",
        d,
    )
    assert any("worker not ready" in x for x in not_ready.json()["reasons"])
    wait_for(
        lambda: (r := get("/ready", headers=auth)) is not None and r.status_code == 200,
        60,
        "ready",
        d,
    )
    assert c.get("/ready").status_code == 401 and c.get("/api/jobs").status_code == 401
    assert c.get("/api/jobs", params={"token": "wrong"}).status_code == 401
    h = wait_for(lambda: (r := c.get("/health")).status_code == 200 and r, 10, "/health", d)
    assert h.json()["alive"] is True  # /health needs no token

    drop(d, media, "ok1", engine="passthrough")
    put_manifest(
        d.inbox / "bad1.json", {"job_id": "bad1", "audio": "none.wav", "template": "none.png"}
    )
    d.wait_state("ok1", "done", timeout=60)
    d.wait_state("bad1", "rejected", timeout=30)
    jobs = c.get("/api/jobs", headers=auth).json()
    assert {j["job_id"] for j in jobs["jobs"]} == {"ok1", "bad1"} and jobs["counts"]["done"] == 1
    done = c.get("/api/jobs", params={"state": "done", "limit": 1}, headers=auth).json()["jobs"]
    assert [j["job_id"] for j in done] == ["ok1"]
    assert c.get("/api/jobs", params={"state": "nope"}, headers=auth).status_code == 400
    page1 = c.get("/api/jobs", params={"limit": 1}, headers=auth).json()
    page2 = c.get(
        "/api/jobs", params={"limit": 1, "before": page1["next_before"]}, headers=auth
    ).json()
    assert page1["jobs"][0]["job_id"] != page2["jobs"][0]["job_id"] and page2["next_before"] is None
    rec = c.get("/api/jobs/ok1", headers=auth).json()
    assert rec["state"] == "done" and rec == d.task("ok1") | {"updated_at": rec["updated_at"]}
    assert c.get("/api/jobs/nope", headers=auth).status_code == 404
    log = c.get("/api/jobs/ok1/log", headers=auth)
    assert log.status_code == 200 and rec["trace_id"] in log.text
    video = c.get("/files/ok1/result.mp4", headers=auth)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content == (d.outbox / "ok1" / "result.mp4").read_bytes()
    part = c.get("/files/ok1/result.mp4", headers={**auth, "Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    assert (
        c.get("/files/ok1/poster.jpg", params={"token": TOKEN}).status_code == 200
    )  # <img> can't send headers
    for path in (
        "/api/jobs/../config.toml",
        "/api/jobs/..%2F..%2Fconfig.toml",
        "/files/ok1/task.json",
        "/files/ok1/..%2F..%2Fconfig.toml",
        "/files/../state/jobs.sqlite3",
        "/api/jobs/ok1/../../x",
    ):
        assert raw_get(d.base, path) == 404, path
    metrics = c.get("/metrics", headers=auth)
    fams = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    assert "dropbox_jobs" in fams and "dropbox_queue_depth" in fams
    page = c.get("/", headers=auth)
    assert page.status_code == 200 and "<title>dropbox-daemon</title>" in page.text
    assert "https://" not in page.text and "http://" not in page.text  # nothing from a CDN


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
def test_page_in_a_headless_browser(daemon_factory, media) -> None:  # noqa: ANN001
    d = web_daemon(daemon_factory, media).start()
    drop(d, media, "first", engine="passthrough")
    d.wait_state("first", "done", timeout=60)
    drop(d, media, "long", engine="passthrough", audio=media.tone_95, template=media.big_image)
    d.wait_state("long", {"rendering"}, timeout=60)
    browser = headless_chromium()
    try:
        browser.get(f"{d.base}/?token={TOKEN}")

        def progress() -> int | None:
            # read in the page's own JS turn: the list is re-rendered every second (no stale elements)
            return browser.execute_script(
                "const e = document.querySelector('.running-job[data-job=\"long\"]');"
                "const m = e && e.textContent.match(/(\\d+)%/); return m ? parseInt(m[1], 10) : null;"
            )

        p1 = wait_for(
            lambda: (p := progress()) is not None and p, 30, "the running job on the page", d
        )
        wait_for(lambda: (p := progress()) is not None and p > p1, 30, "the progress to advance", d)
        loaded = wait_for(
            lambda: browser.execute_script(
                "const i = document.querySelector('tr[data-job=\"first\"] img'); return i && i.complete && i.naturalWidth"
            ),
            30,
            "the finished job's poster",
            d,
        )
        assert loaded > 0
        assert "ok" in browser.find_element("id", "health").text
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "status-page.png"))
    finally:
        browser.quit()


def test_idle_connections_cannot_starve_the_daemon_of_descriptors(daemon_factory, media) -> None:  # noqa: ANN001
    """1,100 idle (or trickling) connections to the status endpoint of a daemon limited to
    1,024 descriptors, as systemd's default: it keeps rendering and /health answers."""
    import resource
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1300:
        pytest.skip(f"this test process may open only {hard} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    d = web_daemon(daemon_factory, media, token=None)
    d.start()
    resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    host, port = d.base.removeprefix("http://").split(":")
    idle = []
    try:
        for n in range(1100):
            s = socket.create_connection((host, int(port)), timeout=10)
            if n % 2:
                s.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
            idle.append(s)
        started = time.monotonic()
        r = wait_for(
            lambda: _health(d.base),
            15,
            "/health while 1,100 connections sit idle",
            d,
        )
        assert r.status_code == 200 and r.json()["alive"], r.text
        assert time.monotonic() - started < 15
        drop(d, media, "through-it")
        assert d.wait_state("through-it", timeout=30)["state"] == "done"
        assert d.alive()
        open_fds = len(list(Path(f"/proc/{d.proc.pid}/fd").iterdir()))
        assert open_fds < 1024, open_fds
    finally:
        for s in idle:
            s.close()


def _health(base: str):  # noqa: ANN202
    try:
        return httpx.get(f"{base}/health", timeout=3)
    except httpx.TransportError:
        return None


def test_without_a_token_only_this_hosts_names_are_served(daemon_factory, media) -> None:  # noqa: ANN001
    """DNS rebinding: a page on evil.example that points its name at 127.0.0.1 sends
    Host: evil.example; without a token the API answers only this host's own names."""
    d = web_daemon(daemon_factory, media, token=None)
    d.start()
    with httpx.Client(base_url=d.base, timeout=10) as c:
        assert c.get("/api/jobs").status_code == 200
        assert c.get("/api/jobs", headers={"Host": "evil.example"}).status_code == 403
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 200


def test_an_empty_token_file_stops_the_start(daemon_factory, media, tmp_path) -> None:  # noqa: ANN001
    empty = tmp_path / "token"
    empty.write_text("\n")
    port = free_port()
    d = daemon_factory(sections={"http": {"listen": f"127.0.0.1:{port}", "token_file": str(empty)}})
    d.start(wait_ready=False)
    assert d.proc.wait(30) != 0
    assert "token_file" in d.log_text() and "is empty" in d.log_text(), d.log_tail()
