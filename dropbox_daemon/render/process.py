"""The worker process (spawned by worker.WorkerHandle, never forked): its entry point and
its loop. It loads its engines once, then takes one job at a time over a pipe and streams
back stage changes, progress and the result (protocol.py). Nothing heavy is imported at
the top of this module: the daemon imports it for the entry point's name only.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from loguru import logger

from dropbox_daemon import protocol
from dropbox_daemon.config import Config
from dropbox_daemon.errors import DaemonError, JobCancelled, RejectedDrop
from dropbox_daemon.logs import escape_controls

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


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
        self.jobs: list[protocol.JobSpec] = []
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
                self.cancels.pop(job.job_id, None)

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
                    self.cancels[order.job.job_id] = threading.Event()
                    self.jobs.append(order.job)
                elif isinstance(order, protocol.Cancel) and order.job_id in self.cancels:
                    self.cancels[order.job_id].set()
                elif isinstance(order, protocol.Stop):
                    self.stopping.set()
                self.have_job.notify_all()
            if isinstance(order, protocol.Stop):
                return

    def next_job(self) -> protocol.JobSpec | None:
        """The next job, waiting for one; None once the daemon said stop and none is left."""
        with self.have_job:
            while not self.jobs and not self.stopping.is_set():
                self.have_job.wait(1.0)
            return self.jobs.pop(0) if self.jobs else None

    def load(self, name: str) -> Any:
        """Create and load an engine once; later jobs find it warm."""
        from dropbox_daemon.render import engines
        from dropbox_daemon.render.media.frame_pool import return_free_memory

        eng = engines.create(name, self.cfg)
        t = time.monotonic()
        eng.load()
        return_free_memory()
        self.loaded[name] = eng
        self.loads[name] = self.loads.get(name, 0) + 1
        logger.info("engine {} loaded in {:.2f} s on {}", name, time.monotonic() - t, eng.device)
        return eng

    def preload(self) -> None:
        """Load the configured engines, then tell the daemon the worker is ready (and which
        engines could not be loaded, and why)."""
        from dropbox_daemon.render import engines

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

    def engine_for(self, job: protocol.JobSpec, emit: Callable[[dict[str, Any]], None]) -> Any:
        """The job's engine, loaded now (and said in the job's log) if no job used it yet."""
        name = job.engine
        if name not in self.loaded:
            t = time.monotonic()
            self.load(name)
            emit(
                {"type": "log", "message": f"engine {name} loaded in {time.monotonic() - t:.2f} s"}
            )
            emit({"type": "loads", "loads": self.loads})
        return self.loaded[name]

    def run_job(self, job: protocol.JobSpec) -> None:
        """Render one job and send its result; any error ends the job, never the worker."""
        from dropbox_daemon.render import pipeline
        from dropbox_daemon.render.media.frame_pool import return_free_memory

        job_id = job.job_id

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
                logger.bind(job_id=job_id, trace_id=job.trace_id).error(
                    "job {}: the GPU's context is broken ({}); this worker exits and a new one "
                    "takes the job again (a recurring one: see the kernel log, nvidia-smi -q, "
                    "for Xid errors)",
                    job_id,
                    sticky,
                )
                self.exit(EXIT_GPU_BROKEN)
            emit({"type": "result", **outcome_of(e, job)})
        finally:
            return_free_memory()

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


def outcome_of(e: Exception, job: protocol.JobSpec) -> dict[str, Any]:
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
    job_id = job.job_id
    logger.bind(job_id=job_id, trace_id=job.trace_id).error(
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
