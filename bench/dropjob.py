"""Drop to done through a real daemon: `dropbox-daemon run` as a subprocess, each job dropped
as a job folder renamed into its inbox, timed from that rename to task.json saying done,
with the peak resident memory of the daemon's whole process tree (daemon, worker, ffmpeg)
and the CPU time each of them spent on the job."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from common import DaemonProc, wait_for


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (by /proc's parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TreePeak:
    """Samples the VmHWM (peak resident set) of a process and all its descendants every
    `every` seconds; peak_mb() is the sum over every process seen of its own peak, an upper
    bound of the tree's peak at any one moment."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.peaks: dict[int, float] = {}
        self.names: dict[int, str] = {}  # pid -> what it is (its command line, shortened)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            for p in [self.pid, *children(self.pid)]:
                mb = vm_hwm_mb(p)
                if mb is not None:
                    self.peaks[p] = max(self.peaks.get(p, 0.0), mb)
                    if p not in self.names:
                        self.names[p] = process_name(p)

    def peak_mb(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.peaks.values())

    def by_process(self) -> dict[str, float]:
        """Each kind of process's own peak (MB), summed over processes of that kind."""
        out: dict[str, float] = {}
        for p, mb in self.peaks.items():
            name = self.names.get(p, "?")
            out[name] = out.get(name, 0.0) + mb
        return out


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(its own, its ended children's) CPU seconds, user + system, of a process."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system, t.children_user + t.children_system


class TreeCpu:
    """The CPU seconds the processes of a tree spend from now to used(), by kind: the daemon,
    the worker, and the programs the worker ran and waited for (the ffmpeg encoder)."""

    def __init__(self, pid: int) -> None:
        self.before = {p: cpu_seconds(p) for p in [pid, *children(pid)]}

    def used(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p, before in self.before.items():
            now, name = cpu_seconds(p), process_name(p)
            if before is None or now is None:
                continue
            out[name] = out.get(name, 0.0) + now[0] - before[0]
            if now[1] > before[1]:
                kid = "ffmpeg" if name == "worker" else f"{name}'s children"
                out[kid] = out.get(kid, 0.0) + now[1] - before[1]
        return out


def process_name(pid: int) -> str:
    """daemon, worker, ffmpeg or the program's name, from /proc/<pid>/cmdline."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = b" ".join(argv).decode(errors="replace")
    if "ffmpeg" in Path(argv[0].decode(errors="replace")).name:
        return "ffmpeg"
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if "spawn_main" in text or "worker" in text:
        return "worker"
    if "dropbox" in text:
        return "daemon"
    return Path(argv[0].decode(errors="replace")).name or "?"


def start_daemon(root: Path, engine: str, sections: dict[str, dict[str, Any]]) -> DaemonProc:
    """A daemon with `engine` preloaded, its worker ready."""
    d = DaemonProc(
        root,
        inbox={"engine": engine, "settle_seconds": 0.2},
        daemon={"hang_seconds": 600.0, "job_timeout_seconds": 3600.0},
        sections=sections,
    )
    return d.start()


def drop_and_wait(d: DaemonProc, job_id: str, audio: Path, template: Path) -> dict[str, Any]:
    """Drop one job; its wall time from the rename into the inbox to task.json's done, its
    timings, the process tree's peak memory while it ran and the CPU seconds it took."""
    staging = d.root / "staging" / job_id
    staging.mkdir(parents=True)
    shutil.copyfile(audio, staging / audio.name)
    shutil.copyfile(template, staging / template.name)
    manifest = {"job_id": job_id, "audio": audio.name, "template": template.name}
    (staging / "job.json").write_text(json.dumps(manifest))
    assert d.proc is not None
    tree, cpu = TreePeak(d.proc.pid), TreeCpu(d.proc.pid)
    t = time.perf_counter()
    staging.rename(d.inbox / job_id)
    task = wait_for(
        lambda: (x := d.task(job_id)) and x["state"] in ("done", "failed", "rejected") and x,
        3600,
        f"job {job_id}",
        d,
    )
    wall = time.perf_counter() - t
    assert task["state"] == "done", task.get("error")
    used = cpu.used()  # the worker has waited for ffmpeg before it reported the job done
    return {
        "wall": wall,
        "timings": task["timings"],
        "output": task["output"],
        "tree_peak_mb": tree.peak_mb(),
        "peak_by_process": tree.by_process(),
        "cpu": used,
        "log": (d.outbox / job_id / "log.txt").read_text(),
    }
