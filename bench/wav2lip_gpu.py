"""wav2lip on an NVIDIA GPU: the model alone per batch size in fp16 and fp32, and end to end at
720p and 1080p. Run it on a GPU host (`make bench-gpu`); without CUDA it measures nothing and
leaves docs/benchmarks.md alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import write_section
from dropjob import children, drop_and_wait, start_daemon
from render import presenter_clip  # noqa: I001
from support import make_tone
from w2l_fixture import calibrated_net, real_inputs, save_published

from dropbox_daemon.render.engines.wav2lip import FastWav2Lip

BATCHES = (16, 32, 64, 128, 256, 512)


def model_fps(model: FastWav2Lip, batch: int, rounds: int = 8) -> float:
    """Frames per second of the model alone, with two batches in flight as the engine runs it."""
    mel, faces = real_inputs(batch, seed=3)
    model.submit(mel, faces).result()
    t = time.perf_counter()
    previous = model.submit(mel, faces)
    for _ in range(rounds - 1):
        started = model.submit(mel, faces)
        previous.result()
        previous = started
    previous.result()
    return rounds * batch / (time.perf_counter() - t)


def gpu_memory_mb(pids: set[int]) -> float | None:
    """GPU memory the given processes hold now, by nvidia-smi (None without it)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    r = subprocess.run(
        [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    used = 0.0
    for line in r.stdout.splitlines():
        pid, _, mb = line.partition(",")
        if pid.strip().isdigit() and int(pid) in pids:
            used += float(mb or 0)
    return used


def e2e(audio: Path, clip: Path, root: Path, ckpt: Path, precision: str) -> dict:
    """One job dropped into a daemon on the GPU after a first one on the same template (its
    face track cached): wall time, frames, the encoder the job used and the GPU memory."""
    models = {"models": {"wav2lip": str(ckpt), "precision": precision}}
    d = start_daemon(root, "wav2lip", models)
    try:
        drop_and_wait(d, "warm", audio, clip)
        run = drop_and_wait(d, "timed", audio, clip)
        assert d.proc is not None
        run["gpu_mb"] = gpu_memory_mb({d.proc.pid, *children(d.proc.pid)})
    finally:
        d.stop()
    m = re.search(r"video encoder (\S+):", run["log"])
    run["encoder"] = m.group(1) if m else "?"
    return run


def fps(run: dict) -> float:
    return run["output"]["frames"] / run["wall"]


def main() -> int:
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        node = "present" if Path("/dev/nvidiactl").exists() else "absent"
        print(
            f"no CUDA GPU here (torch {torch.__version__} is {build}; /dev/nvidiactl is {node}): "
            "nothing measured, docs/benchmarks.md left alone. Run `make bench-gpu` on a GPU "
            "host with torch's CUDA build (README, GPU hosts)."
        )
        return 0
    gpu = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = save_published(calibrated_net(), root / "wav2lip_random.pth")
        sweep = {}
        for precision in ("fp16", "fp32"):
            model = FastWav2Lip(ckpt, device="cuda", precision=precision)
            sweep[precision] = {b: model_fps(model, b) for b in BATCHES}
            del model
            torch.cuda.empty_cache()
        audio = make_tone(root / "a14.wav", 14.0)
        runs = {}
        for name, (w, h) in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
            clip = presenter_clip(root / f"t{name}.mp4", w, h)
            for precision in ("fp16", "fp32"):
                runs[name, precision] = e2e(
                    audio, clip, root / f"{name}-{precision}", ckpt, precision
                )
    lines = [
        "## wav2lip engine on an NVIDIA GPU (bench/wav2lip_gpu.py)",
        "",
        f"{gpu}. Model alone, frames/s, by batch size (two batches in flight, as the engine runs):",
        "",
        "| batch | " + " | ".join(str(b) for b in BATCHES) + " |",
        "|---" * (len(BATCHES) + 1) + "|",
    ]
    for precision, row in sweep.items():
        lines.append(f"| {precision} | " + " | ".join(f"{v:.0f}" for v in row.values()) + " |")
    lines += [
        "",
        "| end to end, 14 s audio, face track cached | fp16 | fp32 | encoder | GPU memory |",
        "|---|---|---|---|---|",
    ]
    for name in ("720p", "1080p"):
        f16, f32 = runs[name, "fp16"], runs[name, "fp32"]
        mem = f"{f16['gpu_mb']:.0f} MiB" if f16.get("gpu_mb") is not None else "?"
        lines.append(
            f"| {name} | **{fps(f16):.0f} frames/s** ({14 / f16['wall']:.1f}× real time) "
            f"| {fps(f32):.0f} frames/s | {f16['encoder']} | {mem} |"
        )
    lines += ["", "Aim: ≥ 400 frames/s end to end at 720p on an H100."]
    write_section("wav2lip-gpu", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
