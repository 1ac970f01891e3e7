"""Run one job through the worker's pipeline in this process and print a JSON line.

Used by bench/render.py and bench/wav2lip.py in a fresh subprocess per measurement, so that
the peak RSS belongs to that job alone. It is read from VmHWM, not ru_maxrss: Linux carries
ru_maxrss across exec, so a child of a large parent (the bench, torch and models loaded)
would report the parent's peak.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from dropbox_daemon import config
from dropbox_daemon.protocol import JobSpec, resolve_output
from dropbox_daemon.render import engines, pipeline


def vm_hwm_mb() -> float:
    """This process's own peak resident set (since its exec), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    audio, template, engine_name, state = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    height = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    drop = root / "claim" / "drop"
    drop.mkdir(parents=True)
    (root / "out").mkdir()
    shutil.copyfile(audio, drop / Path(audio).name)
    shutil.copyfile(template, drop / Path(template).name)
    data = {"inbox": [{"name": "b", "path": str(root / "inbox")}], "daemon": {"state_dir": state}}
    if os.environ.get("DROPBOX_BENCH_WAV2LIP"):
        data["models"] = {
            "wav2lip": os.environ["DROPBOX_BENCH_WAV2LIP"],
            "precision": os.environ.get("DROPBOX_BENCH_PRECISION", "auto"),
        }
    cfg = config.from_dict(data, source=root / "c.toml")
    eng = engines.create(engine_name, cfg)
    t = time.perf_counter()
    eng.load()
    load = time.perf_counter() - t
    manifest = {
        "audio": Path(audio).name,
        "template": Path(template).name,
        "output": {"height": height},
    }
    job = JobSpec(
        job_id="bench",
        inbox="b",
        claim_dir=str(root / "claim"),
        outbox_dir=str(root / "out"),
        manifest=manifest,
        output=resolve_output(cfg.inbox[0].output.model_dump(), manifest),
    )
    logs: list[str] = []
    t = time.perf_counter()
    result = pipeline.run(
        job, cfg, eng, lambda m: logs.append(m.get("message", "")), threading.Event()
    )
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "wall": wall,
                "load": load,
                "timings": result["timings"],
                "output": result["output"],
                "peak_rss_mb": vm_hwm_mb(),
                "ffmpeg_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "cache_hit": any("cache hit" in m for m in logs),
            }
        )
    )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
