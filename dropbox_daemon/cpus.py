"""How many of the host's cores one daemon's worker uses (worker side).

One daemon per GPU (the dropbox-daemon@ unit: CUDA_VISIBLE_DEVICES names one) shares the host
with the others: each takes its share of the cores for torch, OpenCV and the encoder, instead
of every one sizing its pools to the whole machine (on A100/H100/H200, which have no NVENC,
libx264 runs in each). A daemon that sees no GPU, or all of them, keeps every core.
"""

from __future__ import annotations

import os
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver knows
# the host's GPU count where this process sees only its own: a container given one GPU
# (the NVIDIA Container Toolkit shows it only that one's folder; compose.yaml sets it)
HOST_GPUS_ENV = "DROPBOX_DAEMON_HOST_GPUS"


def gpus_on_host(root: Path = NVIDIA_GPUS, told: str | None = None) -> int:
    """$DROPBOX_DAEMON_HOST_GPUS where set to a number, else the driver's folders."""
    told = os.environ.get(HOST_GPUS_ENV) if told is None else told
    if told and told.strip().isdigit():
        return int(told)
    try:
        return sum(1 for p in root.iterdir() if p.is_dir())
    except OSError:
        return 0


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what the unit's CPUAffinity= leaves, if set
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_share(cpus: int, gpus: int, visible: str | None) -> int:
    """Cores for this daemon: cpus / gpus where it renders on one GPU of several, else all."""
    one = visible is not None and visible.strip() != "" and "," not in visible
    if gpus <= 1 or not one:
        return max(1, cpus)
    return max(1, cpus // gpus)


def this_share() -> int:
    return cpu_share(usable_cpus(), gpus_on_host(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def model_streams(configured: int, share: int) -> int:
    """Model calls at once on the CPU: the configured number (at most the share), else 2
    where the share has 2 cores or more (each on half of them), else 1."""
    if configured:
        return max(1, min(configured, share))
    return 2 if share >= 2 else 1


def apply(share: int) -> None:
    """Size torch's and OpenCV's pools to `share` cores (in the worker, once)."""
    import cv2
    import torch

    torch.set_num_threads(share)
    cv2.setNumThreads(share)


def encode_threads(configured: int, share: int, cpus: int, beside_model: bool = False) -> int:
    """libx264's threads: the configured number; beside a model on the CPU, a quarter of the
    share (at least 1); else the share where it is not the whole host (0: ffmpeg decides,
    for all the cores).

    Beside a CPU model the encoder needs only to keep up with it (one thread of x264
    `veryfast` does 140 frames/s at 720p, the model 15-90), and every thread it adds takes
    the model's cores in turn: on 2 cores, 1 thread against ffmpeg's 3 made the cached 720p
    job 10% faster, ffmpeg 35 MB smaller (docs/benchmarks.md)."""
    if configured:
        return configured
    if beside_model:
        return max(1, share // 4)
    return share if share < cpus else 0
