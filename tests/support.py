"""Test helpers: a real daemon subprocess, drops written the way writers write them,
and waiting on conditions with a deadline (never a bare sleep)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
# figures the tests measure in passing (the container image's size), printed after the run
REPORT: list[str] = []
TERMINAL = {"done", "failed", "cancelled", "rejected", "duplicate"}


def wait_for(
    cond: Callable[[], Any], timeout: float, what: str, daemon: DaemonProc | None = None
) -> Any:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = daemon.log_tail() if daemon else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.05)


def ffmpeg(*args: str) -> None:
    subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True
    )


def make_tone(path: Path, seconds: float, rate: int = 16000) -> Path:
    expr = "0.5*sin(2*PI*200*t)*abs(sin(2*PI*2*t))"
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc='{expr}':s={rate}:d={seconds}", str(path))
    return path


def make_video(path: Path, seconds: float, size: str = "320x240", rate: int = 25) -> Path:
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}:duration={seconds}",
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        str(path),
    )
    return path


def make_image(path: Path, size: str = "320x240") -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=1:duration=1", "-frames:v", "1", str(path)
    )
    return path


def put_file(dest: Path, src: Path | bytes) -> Path:
    """Write a file Maildir style: under a hidden temporary name, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:6]}.tmp")
    if isinstance(src, bytes):
        tmp.write_bytes(src)
    else:
        shutil.copyfile(src, tmp)
    os.rename(tmp, dest)
    return dest


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def put_manifest(dest: Path, data: dict[str, Any] | str | bytes) -> Path:
    """A manifest (JSON or TOML by the suffix of `dest`), renamed into place last."""
    if isinstance(data, bytes):
        return put_file(dest, data)
    if isinstance(data, str):
        return put_file(dest, data.encode())
    if dest.suffix == ".toml":
        text = "\n".join(f"{k} = {toml_value(v)}" for k, v in data.items()) + "\n"
    else:
        text = json.dumps(data)
    return put_file(dest, text.encode())


class DaemonProc:
    """`dropbox-daemon run` as a subprocess on its own inbox, outbox and state folders."""

    def __init__(
        self,
        root: Path,
        *,
        inbox: dict[str, Any] | None = None,
        daemon: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        extra_inboxes: list[dict[str, Any]] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.state = root / "state"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.prefix: list[str] = []  # a command the daemon runs under (setpriv, say)
        self.logfile = root / "daemon.log"
        d = {
            "state_dir": str(self.state),
            "outbox": str(self.outbox),
            "rescan_seconds": 1.0,
            "hang_seconds": 60.0,
            "stop_timeout_seconds": 20.0,
            **(daemon or {}),
        }
        # passthrough by default: the daemon's own tests use templates without faces
        i = {
            "name": "default",
            "path": str(self.inbox),
            "settle_seconds": 0.5,
            "engine": "passthrough",
            **(inbox or {}),
        }
        lines = [
            "[daemon]",
            *(f"{k} = {toml_value(v)}" for k, v in d.items()),
            "[daemon.log]",
            'level = "DEBUG"',
        ]
        for box in [i, *(extra_inboxes or [])]:
            lines += ["[[inbox]]", *(f"{k} = {toml_value(v)}" for k, v in box.items())]
        for name, table in {**({"limits": limits} if limits else {}), **(sections or {})}.items():
            lines += [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True) -> DaemonProc:
        before = self.logfile.stat().st_size if self.logfile.exists() else 0
        log = open(self.logfile, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "dropbox_daemon",
                "run",
                "--config",
                str(self.config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        if not wait_ready:
            return self
        # this run's lines only: a restart must not pass on the previous run's "worker ready"
        wait_for(
            lambda: (
                b"worker ready" in self.logfile.read_bytes()[before:]
                or self.proc.poll() is not None
            ),
            60,
            "the daemon to start",
            self,
        )
        assert self.proc.poll() is None, self.log_tail()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the daemon and wait for it to exit; one that does not is made to print every
        thread's stack (SIGUSR2, faulthandler) into its log, killed, and the test fails with
        that log."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR2)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: b"Thread 0x" in self.logfile.read_bytes(), 5, "a stack dump")
            self.kill9()
            raise AssertionError(
                f"the daemon did not stop within {timeout:.0f} s of signal {sig}\n"
                + self.log_tail(120)
            ) from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def daemon_dir(self) -> Path:
        """outbox/_daemon/<instance>/: this daemon's health.json and metrics.prom."""
        import socket

        from dropbox_daemon.config import default_instance_id

        return self.outbox / "_daemon" / default_instance_id(socket.gethostname(), self.state)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "--- daemon log ---\n" + "\n".join(self.log_text().splitlines()[-n:])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dropbox_daemon", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def task(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.outbox / job_id / "task.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_state(
        self, job_id: str, states: set[str] | str = TERMINAL, timeout: float = 60
    ) -> dict[str, Any]:
        want = {states} if isinstance(states, str) else states
        return wait_for(
            lambda: (t := self.task(job_id)) and t["state"] in want and t,
            timeout,
            f"job {job_id} to reach {sorted(want)}",
            self,
        )

    def tasks(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.outbox.glob("*/task.json")):
            try:
                out.append(json.loads(p.read_text()))
            except ValueError:
                pass
        return out


def astronaut(size: int = 512) -> Any:
    """skimage's astronaut portrait (a real face) as a BGR array, size x size."""
    import cv2
    import skimage.data

    img = skimage.data.astronaut()[:, :, ::-1]
    return (
        cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) if size != 512 else img.copy()
    )


def make_face_video(
    path: Path,
    seconds: float,
    size: int = 256,
    rate: int = 25,
    fade: tuple[float, float] | None = None,
    pan: float = 0.03,
    linear: bool = False,
) -> Path:
    """The astronaut drifting (a continuous motion), optionally fading to black in [a, b] s.

    linear: a steady drift by `pan` of the width over the whole clip, so that its
    first and last frames differ (a jump cut between them would show).
    """
    import cv2
    import numpy as np

    base = astronaut(size)
    n = round(seconds * rate)

    def frames():  # noqa: ANN202
        for i in range(n):
            yield frame_at(i / rate)

    def frame_at(t: float):  # noqa: ANN202
        if linear:
            dx = pan * size * (t / max(seconds, 1e-6) - 0.5)
        else:
            dx = pan * size * np.sin(2 * np.pi * t / max(seconds, 1e-6))
        m = np.float32([[1, 0, dx], [0, 1, 0]])
        frame = cv2.warpAffine(base, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        if fade is not None and fade[0] <= t < fade[1]:
            # fade out over the first 20%, black for 60%, fade in over the last 20%
            span = fade[1] - fade[0]
            k = max(0.0, 1 - (t - fade[0]) / (0.2 * span), 1 - (fade[1] - t) / (0.2 * span))
            frame = (frame * min(1.0, k)).astype(np.uint8)
        return frame

    return encode_frames(path, frames(), (size, size), rate, crf=16)


def encode_frames(
    path: Path, frames: Any, size: tuple[int, int], rate: int = 25, crf: int = 18
) -> Path:
    """Encode BGR frames (an iterable of arrays of `size` = (w, h)) into an H.264 mp4."""
    proc = subprocess.Popen(
        [
            FFMPEG,
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            f"{size[0]}x{size[1]}",
            "-framerate",
            str(rate),
            "-i",
            "pipe:",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            str(crf),
            str(path),
        ],
        stdin=subprocess.PIPE,
    )
    for frame in frames:
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return path


def make_speech(path: Path) -> Path:
    """Real speech with pauses (espeak-ng) where installed, else syllable bursts with pauses."""
    text = "Hello and welcome. [[_:::]] This is a test of the drop box. [[_:::]] Goodbye now."
    if shutil.which("espeak-ng"):
        subprocess.run(
            ["espeak-ng", "-s", "140", "-w", str(path), text.replace("[[_:::]]", ",,, ... ,,,")],
            check=True,
            capture_output=True,
        )
        return path
    expr = "0.5*sin(2*PI*160*t)*abs(sin(2*PI*3*t))*lt(mod(t,2.5),1.5)"
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc='{expr}':s=16000:d=6", str(path))
    return path


class HttpServer:
    """A real HTTP server on 127.0.0.1 (a thread); `handler(req) -> (status, headers, body)`.

    Every request is kept in `requests` as a dict: method, path, headers, body, at.
    """

    def __init__(
        self, handler: Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]]
    ) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.requests: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                req = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": self.rfile.read(n) if n else b"",
                    "at": time.time(),
                }
                outer.requests.append(req)
                status, headers, body = handler(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_reply(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json", **(headers or {})}, json.dumps(obj).encode()


class OutboxReader:
    """An upstream script polling the outbox the whole time: records any torn task.json or result."""

    def __init__(self, outbox: Path) -> None:
        import threading

        self.outbox = outbox
        self.torn: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import av

        while not self.stop_event.is_set():
            for p in list(self.outbox.glob("*/task.json")):
                try:
                    json.loads(p.read_text())
                except ValueError:
                    self.torn.append(str(p))
                except OSError:
                    pass  # replaced or removed between the listing and the read
            for p in list(self.outbox.glob("*/result.mp4")):
                try:
                    with av.open(str(p)) as c:
                        if not c.duration:
                            self.torn.append(str(p))
                except (OSError, av.FFmpegError):
                    if p.exists():
                        self.torn.append(str(p))

    def __enter__(self) -> OutboxReader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(5)


def headless_chromium():  # noqa: ANN201
    """Debian's chromium under selenium, headless, with nothing reaching out to the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
