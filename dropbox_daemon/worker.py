"""The daemon's handle on its model-warm worker process (render/process.py is the process).

The daemon owns the process: it starts it (spawned, never forked), sends it job orders,
reads its messages and output, watches it, kills and replaces it (WorkerHandle).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Literal

from loguru import logger

from dropbox_daemon import protocol
from dropbox_daemon.config import Config
from dropbox_daemon.render.process import worker_main

WorkerState = Literal["stopped", "starting", "idle", "busy", "dead", "restarting"]
OUTPUT_KEPT = 500  # a faulthandler report lists every thread: keep its headline in view
OUTPUT_LINE_MAX = 500  # characters of each kept line


WORKER_LINE = re.compile(
    r"(TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL) (?:\[job=([^\]\s]+)\] )?(.*)", re.S
)


def _log_worker_line(pid: int, line: str) -> None:
    """One line of the worker's output as a daemon log record (journald priority, daemon.jsonl,
    job id); lines that are not the worker's own log format (native code, tracebacks'
    continuation lines, faulthandler) are logged as warnings."""
    m = WORKER_LINE.fullmatch(line)
    level, job, text = m.groups() if m else ("WARNING", None, line)
    bound = logger.bind(worker_pid=pid, **({"job_id": job} if job else {}))
    bound.log(level, "worker[{}] {}", pid, text)


class WorkerHandle:
    """The daemon's side of one worker process: start, send, poll, stop, kill."""

    def __init__(self, cfg: Config, wake: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.wake = wake
        self.messages: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.proc: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None
        # written here only: stopped | starting | idle | busy | dead | restarting (held back)
        self.state: WorkerState = "stopped"
        self.info: dict[str, Any] = {}
        self.started_at = 0.0
        self.restarts = 0
        self.last_output: deque[str] = deque(maxlen=OUTPUT_KEPT)
        self.relay: threading.Thread | None = None
        self.refused: set[str] = set()  # kinds of malformed message already said

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        out_r, out_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=worker_main, args=(child, self.cfg, out_w), name="dropbox-worker"
        )
        self.proc.start()
        child.close()
        out_w.close()
        self.conn = parent
        self.last_output = deque(maxlen=OUTPUT_KEPT)
        threading.Thread(
            target=self._pump, args=(parent, self.proc.pid), name="worker-pump", daemon=True
        ).start()
        self.relay = threading.Thread(
            target=self._relay,
            args=(out_r, self.proc.pid, self.last_output),
            name="worker-output",
            daemon=True,
        )
        self.relay.start()
        self.state = "starting"
        self.started_at = time.monotonic()
        logger.info("worker started (pid {}), loading engines", self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    # -- what the supervisor tells the handle of its worker ----------------------------
    def on_ready(self, msg: dict[str, Any], busy: bool) -> None:
        """Its READY message: what it runs on; busy where a job was sent before it."""
        self.state = "busy" if busy else "idle"
        self.info = msg

    def on_loads(self, loads: Any) -> None:
        self.info = {**self.info, "loads": loads}

    def took_job(self) -> None:
        self.state = "busy"

    def job_ended(self) -> None:
        self.state = "idle"

    def put_down(self) -> None:
        """Kill it (dead, a hang, a job past its limit, taken over): the supervisor starts
        the next one."""
        self.kill()
        self.state = "dead"

    def hold_back(self) -> None:
        """It keeps dying before it is ready: the next start waits (restart_delay)."""
        self.state = "restarting"

    def restart(self) -> None:
        self.restarts += 1
        self.kill()
        self.start()

    def send(self, order: protocol.JobOrder | protocol.Cancel | protocol.Stop) -> bool:
        if self.conn is None:
            return False
        try:
            self.conn.send(order.model_dump())
        except (OSError, BrokenPipeError):
            return False
        return True

    def _pump(self, conn: Connection, pid: int) -> None:
        """Move the worker's messages onto a queue and wake the main loop for each."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self.wake()
                return
            if not isinstance(msg, dict):  # not the protocol's: poll() says so
                msg = {"type": type(msg).__name__}
            msg["worker_pid"] = pid  # so that a replaced worker's last words are ignored
            self.messages.put(msg)
            self.wake()

    @staticmethod
    def _relay(reader: Connection, pid: int, kept: deque[str]) -> None:
        """Log the worker's raw output line by line through the daemon's logger, keeping the
        last lines; ends when the worker and everything it started have closed the pipe."""
        fd, rest = reader.fileno(), b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            for raw in lines:
                WorkerHandle._take(pid, raw, kept)
        if rest:
            WorkerHandle._take(pid, rest, kept)
        reader.close()

    @staticmethod
    def _take(pid: int, raw: bytes, kept: deque[str]) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.strip():
            return
        kept.append(line[:OUTPUT_LINE_MAX])
        try:
            _log_worker_line(pid, line)
        except Exception:  # noqa: BLE001 - a log line must never stop the relay
            pass

    def output_tail(self, n: int = 12, wait: float = 5.0) -> list[str]:
        """What the worker said last: its last crash report or traceback when there is one
        (the headline and the crashed thread's stack), else its last n lines. Call it once the
        worker and its children are gone: it waits (up to `wait` s) for the relay to read the
        pipe to its end, so a report written just before the crash is never missed."""
        if self.relay is not None:
            self.relay.join(wait)
        lines = [line for line in self.last_output if line.strip()]
        starts = [
            i
            for i, line in enumerate(lines)
            if line.startswith(("Fatal Python error", "Traceback"))
        ]
        if not starts:
            return lines[-n:]
        head = starts[-1]
        # faulthandler lists every thread: the crashed one ("Current thread") is what matters
        current = [i for i in range(head, len(lines)) if lines[i].startswith("Current thread")]
        body = current[0] if current else head + 1
        return [lines[head], *lines[body : body + n - 1]]

    def poll(self) -> list[protocol.FromWorker]:
        """Messages waiting from the worker (never blocks), each checked against the
        protocol: one that is not the protocol's is said once per kind and set aside."""
        out: list[protocol.FromWorker] = []
        while True:
            try:
                raw = self.messages.get_nowait()
            except queue.Empty:
                return out
            try:
                out.append(protocol.FROM_WORKER.validate_python(raw))
            except protocol.ValidationError as e:
                kind = str(raw.get("type"))[:40]
                if kind not in self.refused:
                    self.refused.add(kind)
                    logger.error(
                        "worker (pid {}): a {} message that is not the protocol's was set aside "
                        "({}); a worker of another version, or a bug",
                        raw.get("worker_pid"),
                        kind,
                        protocol.what_is_wrong(e),
                    )

    def exit_description(self) -> str:
        if self.proc is None or self.proc.exitcode is None:
            return "still running"
        code = self.proc.exitcode
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (its ffmpeg encodes)."""
        if self.proc is not None and self.proc.pid is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        self._close()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit after its current job; kill it after `timeout`."""
        if self.proc is None:
            return
        self.send(protocol.Stop())
        self.proc.join(timeout)
        if self.proc.is_alive():
            logger.warning(
                "worker (pid {}) did not stop within {:.0f}s; killing it", self.proc.pid, timeout
            )
            self.kill()
        self._close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.state = "stopped"
