"""The model-warm worker process (spawned, never forked) and the daemon's handle on it.

The worker loads its engines once, then takes one job at a time over a pipe
and streams back stage changes, progress and the result. The daemon owns the
process: it starts it, watches it, kills and replaces it (WorkerHandle).
"""

from __future__ import annotations

import errno
import faulthandler
import multiprocessing as mp
import os
import queue
import re
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Literal

from loguru import logger

from dropbox_daemon import protocol
from dropbox_daemon.config import Config
from dropbox_daemon.errors import DaemonError, JobCancelled, RejectedDrop
from dropbox_daemon.logs import escape_controls

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


# -- inside the worker process ----------------------------------------------------
def _serve(conn: Connection, cfg: Config) -> None:
    WorkerLoop(conn, cfg).serve()


class WorkerLoop:
    """The worker's side: engines loaded once, then one job at a time from the daemon's
    orders (job, cancel, stop), each answered with stage, progress, log and result messages."""

    def __init__(self, conn: Connection, cfg: Config) -> None:
        self.conn, self.cfg = conn, cfg
        self.send_lock = threading.Lock()
        self.loaded: dict[str, Any] = {}  # engine name -> warm engine
        self.loads: dict[str, int] = {}  # engine name -> times loaded
        self.jobs: list[dict[str, Any]] = []
        self.have_job = threading.Condition()
        self.cancels: dict[str, threading.Event] = {}
        self.stopping = threading.Event()

    def send(self, msg: dict[str, Any]) -> None:
        """Send one message, checked against the protocol first: a bug that makes a malformed
        one is said here; a malformed result is sent as this job's failure instead."""
        try:
            out = protocol.FROM_WORKER.validate_python(msg)
        except protocol.ValidationError as e:
            why = protocol.what_is_wrong(e)
            logger.bind(job_id=msg.get("job_id")).error(
                "worker: a {} message that is not the protocol's was not sent ({}); this is a bug",
                msg.get("type"),
                why,
            )
            if msg.get("type") != "result" or "job_id" not in msg:
                return
            out = protocol.Result(
                job_id=str(msg["job_id"]),
                outcome="failed",
                error={
                    "code": "internal",
                    "stage": "rendering",
                    "message": f"the worker's result was malformed: {why}",
                    "hint": "this is a bug; the daemon's log has the worker's line about it",
                },
            )
        with self.send_lock:
            self.conn.send(out.model_dump(exclude={"worker_pid"}))

    def serve(self) -> None:
        threading.Thread(target=self.read_orders, name="worker-reader", daemon=True).start()
        self.preload()
        while (job := self.next_job()) is not None:
            try:
                self.run_job(job)
            finally:
                self.cancels.pop(job["job_id"], None)

    def read_orders(self) -> None:
        """The daemon's orders, queued for the serve loop (a cancel sets the job's event)."""
        while True:
            try:
                raw = self.conn.recv()
            except (EOFError, OSError):
                os._exit(1)  # the daemon is gone: nobody would record this job's result
            try:
                order = protocol.TO_WORKER.validate_python(raw)
            except protocol.ValidationError as e:
                logger.error(
                    "worker: an order that is not the protocol's was set aside ({}); this is a bug",
                    protocol.what_is_wrong(e),
                )
                continue
            with self.have_job:
                if isinstance(order, protocol.JobOrder):
                    self.cancels[order.job["job_id"]] = threading.Event()
                    self.jobs.append(dict(order.job))
                elif isinstance(order, protocol.Cancel) and order.job_id in self.cancels:
                    self.cancels[order.job_id].set()
                elif isinstance(order, protocol.Stop):
                    self.stopping.set()
                self.have_job.notify_all()
            if isinstance(order, protocol.Stop):
                return

    def next_job(self) -> dict[str, Any] | None:
        """The next job, waiting for one; None once the daemon said stop and none is left."""
        with self.have_job:
            while not self.jobs and not self.stopping.is_set():
                self.have_job.wait(1.0)
            return self.jobs.pop(0) if self.jobs else None

    def load(self, name: str) -> Any:
        """Create and load an engine once; later jobs find it warm."""
        from dropbox_daemon import engines

        eng = engines.create(name, self.cfg)
        t = time.monotonic()
        eng.load()
        self.loaded[name] = eng
        self.loads[name] = self.loads.get(name, 0) + 1
        logger.info("engine {} loaded in {:.2f} s on {}", name, time.monotonic() - t, eng.device)
        return eng

    def preload(self) -> None:
        """Load the configured engines, then tell the daemon the worker is ready (and which
        engines could not be loaded, and why)."""
        from dropbox_daemon import engines

        load_errors: dict[str, str] = {}
        for name in engines.preload(self.cfg):
            try:
                self.load(name)
            except DaemonError as e:
                load_errors[name] = e.message
                logger.error("engine {} could not be loaded: {} ({})", name, e.message, e.hint)
        devices = sorted({e.device for e in self.loaded.values()}) or ["cpu"]
        self.send(
            {
                "type": "ready",
                "pid": os.getpid(),
                "device": ",".join(devices),
                "engines": sorted(self.loaded),
                "loads": self.loads,
                "load_errors": load_errors,
            }
        )

    def engine_for(self, job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> Any:
        """The job's engine, loaded now (and said in the job's log) if no job used it yet."""
        name = job["engine"]
        if name not in self.loaded:
            t = time.monotonic()
            self.load(name)
            emit(
                {"type": "log", "message": f"engine {name} loaded in {time.monotonic() - t:.2f} s"}
            )
            emit({"type": "loads", "loads": self.loads})
        return self.loaded[name]

    def run_job(self, job: dict[str, Any]) -> None:
        """Render one job and send its result; any error ends the job, never the worker."""
        from dropbox_daemon import pipeline

        job_id = job["job_id"]

        def emit(msg: dict[str, Any]) -> None:
            self.send({**msg, "job_id": job_id})

        try:
            engine = self.engine_for(job, emit)
            result = pipeline.run(job, self.cfg, engine, emit, self.cancels[job_id])
            emit({"type": "result", "outcome": "done", "device": engine.device, **result})
        except Exception as e:  # noqa: BLE001 - any bug ends this job, not the worker
            if sticky := sticky_cuda_error(e):
                # every later CUDA call in this process fails the same way: a fresh worker
                # (a new CUDA context) takes the job again, its attempt counted by the daemon
                logger.bind(job_id=job_id, trace_id=job.get("trace_id")).error(
                    "job {}: the GPU's context is broken ({}); this worker exits and a new one "
                    "takes the job again (a recurring one: see the kernel log, nvidia-smi -q, "
                    "for Xid errors)",
                    job_id,
                    sticky,
                )
                self.exit(EXIT_GPU_BROKEN)
            emit({"type": "result", **outcome_of(e, job)})

    def exit(self, code: int) -> None:
        sys.stderr.flush()
        os._exit(code)


EXIT_GPU_BROKEN = 70  # the worker's exit status after a sticky CUDA error
# CUDA errors that leave the process's context unusable until it exits (CUDA's "sticky" errors)
STICKY_CUDA = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "device-side assert",
    "uncorrectable ECC error",
    "hardware stack error",
    "an illegal address",
    "CUDA error: launch failed",
)


def sticky_cuda_error(e: BaseException) -> str | None:
    """The words of a CUDA error that broke this process's context, anywhere in the
    exception's chain, else None."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur)
        if any(w in text for w in STICKY_CUDA):
            return " ".join(text.split())[:200]
        cur = cur.__cause__ or cur.__context__
    return None


def outcome_of(e: Exception, job: dict[str, Any]) -> dict[str, Any]:
    """A job's result message for the error that ended it: cancelled, rejected or failed, with
    the error's code, stage, message and hint (a bug's traceback goes to the daemon's log)."""
    if isinstance(e, JobCancelled):
        return {"outcome": "cancelled", "error": e.to_dict()}
    if isinstance(e, RejectedDrop):
        return {"outcome": "rejected", "error": e.to_dict()}
    if isinstance(e, DaemonError):
        return {"outcome": "failed", "error": e.to_dict()}
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = e.filename or "a work file"
        return {
            "outcome": "failed",
            "error": {
                "code": "disk_full",
                "stage": "rendering",
                "message": f"no space left on the device while rendering ({where})",
                "hint": "free space on the outbox's and the inbox's file systems, then `dropbox-daemon retry` the job",
            },
        }
    tb = "".join(traceback.format_exception(e))
    job_id = job["job_id"]
    logger.bind(job_id=job_id, trace_id=job.get("trace_id")).error(
        "job {} crashed in the worker; it fails and the worker goes on:\n{}", job_id, tb
    )
    return {
        "outcome": "failed",
        "error": {
            "code": "internal",
            "stage": "rendering",
            "message": f"unexpected error: {type(e).__name__}: {e}",
            "hint": "this is a bug; the traceback is in the daemon's log",
            "traceback": tb[-4000:],
        },
    }


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the daemon dies (kill -9 included).

    Otherwise an orphaned worker would go on rendering a job that the restarted
    daemon has already re-queued.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_format(record: Any) -> str:
    """`LEVEL [job=ID] message`: the daemon parses it back into a log record of its own."""
    job = record["extra"].get("job_id")
    part = f" [job={job}]".replace("{", "{{").replace("}", "}}") if job else ""
    return "{level}" + part + " {message}\n{exception}"


def worker_main(conn: Connection, cfg: Config, output: Connection | None = None) -> None:
    """Entry point of the spawned worker process."""
    _die_with_parent()
    # our own process group: the daemon kills the worker and its ffmpeg children together
    os.setpgrp()
    if output is not None:
        # stdout and stderr (ours, the C libraries', ffmpeg's) go through the daemon, which
        # forwards them to its own stderr and keeps the last lines for the job's record
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
    faulthandler.enable()  # a crash in native code leaves a Python traceback in those lines
    logger.remove()
    logger.configure(patcher=escape_controls)
    logger.add(sys.stderr, level=cfg.daemon.log.level, format=_worker_format)
    from dropbox_daemon import cpus

    share, every = cpus.this_share(), cpus.usable_cpus()
    if share < every:  # (torch is imported only then: a passthrough worker never needs it)
        cpus.apply(share)
        logger.info(
            "this worker uses {} of the host's {} cores: one daemon per GPU, {} GPUs",
            share,
            every,
            cpus.gpus_on_host(),
        )
    try:
        _serve(conn, cfg)
    except KeyboardInterrupt:
        pass


# -- inside the daemon -----------------------------------------------------------------
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
