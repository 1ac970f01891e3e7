"""wav2lip on this machine: the model alone (fp32 default, bf16 forced), its FLOPs against a
measured matmul peak, and end to end at 720p with peak RSS against audio length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, write_section

sys.path.insert(0, str(ROOT / "tests"))
from render import presenter_clip  # noqa: E402
from support import make_tone  # noqa: E402
from w2l_fixture import calibrated_net, real_inputs, save_published  # noqa: E402

from dropbox_daemon.engines.wav2lip import FastWav2Lip, Wav2LipNet  # noqa: E402

BATCH = 16
REFERENCE = {
    "e2e_fps": 9.0,
    "rtf": 0.38,
    "model_fps": 12.7,
    "rss_mb": 3400,
}  # the original script (issue 9)


def flops_per_frame() -> float:
    """Multiply-adds x 2 of every convolution for one 96x96 face and one mel window."""
    net, total = Wav2LipNet().eval(), [0.0]

    def hook(mod, inp, out) -> None:  # noqa: ANN001
        w = mod.weight
        if isinstance(mod, torch.nn.ConvTranspose2d):
            total[0] += 2 * inp[0].shape[2] * inp[0].shape[3] * w.numel()
        else:
            total[0] += 2 * out.shape[2] * out.shape[3] * w.numel()

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        net(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96))
    return total[0]


def conv_peak(dtype: torch.dtype) -> float:
    """GFLOP/s of one large 3x3 convolution (oneDNN, all cores): the practical peak for this model.

    (torch's fp32 GEMM reaches less than the convolutions do on this CPU, so it is not the yardstick.)
    """
    x = torch.randn(64, 256, 24, 24, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, dtype=dtype)
    flop = 2 * 64 * 24 * 24 * 256 * 256 * 9
    best = 0.0
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, w, padding=1)
        for _ in range(5):
            t = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            best = max(best, flop / (time.perf_counter() - t) / 1e9)
    return best


def model_fps(path: Path, precision: str) -> float:
    model = FastWav2Lip(path, precision=precision)
    mel, faces = real_inputs(BATCH, seed=3)
    for _ in range(2):
        model(mel, faces)
    t, n = time.perf_counter(), 6
    for _ in range(n):
        model(mel, faces)
    return n * BATCH / (time.perf_counter() - t)


def e2e(audio: Path, template: Path, state: Path, ckpt: Path) -> dict:
    env = {**os.environ, "DROPBOX_BENCH_WAV2LIP": str(ckpt)}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "render_job.py"),
            str(audio),
            str(template),
            "wav2lip",
            str(state),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = save_published(calibrated_net(), root / "wav2lip_random.pth")
        gflop = flops_per_frame() / 1e9
        peak32 = conv_peak(torch.float32)
        fps32 = model_fps(ckpt, "fp32")
        fps16 = model_fps(ckpt, "bf16")
        peak16 = conv_peak(torch.bfloat16)
        t720 = presenter_clip(root / "t720.mp4", 1280, 720)
        runs = {}
        for seconds in (14, 60):
            audio = make_tone(root / f"a{seconds}.wav", float(seconds))
            runs[seconds] = e2e(audio, t720, root / "state", ckpt)
    r14 = runs[14]
    fps_e2e = r14["output"]["frames"] / r14["wall"]
    wall = r14["wall"]
    shares = ", ".join(
        f"{k[5:]} {v / wall:.0%}" for k, v in r14["timings"].items() if k.startswith("busy_")
    )
    body = "\n".join(
        [
            "## wav2lip engine on this CPU (bench/wav2lip.py)",
            "",
            "Random weights in the published format (the real checkpoints cannot be fetched here; speed does",
            f"not depend on the values). One frame costs {gflop:.2f} GFLOP (counted over every convolution).",
            "",
            "| measure | this daemon | original inference script (issue 9) |",
            "|---|---|---|",
            f"| model alone, fp32 (BN folded, channels_last), batch {BATCH} | **{fps32:.1f} frames/s** = {fps32 * gflop:.0f} GFLOP/s | 12.7 frames/s |",
            f"| model alone, bf16 forced (opt-in: ~28 dB from fp32) | {fps16:.1f} frames/s = {fps16 * gflop:.0f} GFLOP/s | - |",
            f"| practical peak: one large 3×3 convolution, all cores, fp32 / bf16 | {peak32:.0f} / {peak16:.0f} GFLOP/s | - |",
            f"| model as a share of that peak, fp32 / bf16 | {fps32 * gflop / peak32:.0%} / {fps16 * gflop / peak16:.0%} | - |",
            f"| end to end, 14 s audio, 720p template, fp32 | **{fps_e2e:.1f} frames/s, {14 / r14['wall']:.2f}× real time** | 9 frames/s, 0.38× |",
            f"| speed-up end to end | **{fps_e2e / REFERENCE['e2e_fps']:.2f}×** | 1× |",
            f"| peak RSS, 14 s audio (worker) | {r14['peak_rss_mb']:.0f} MB | 3400 MB |",
            f"| peak RSS, 60 s audio (worker) | {runs[60]['peak_rss_mb']:.0f} MB | grows with length |",
            "",
            f"Stage busy shares, 14 s run: {shares}.",
            "Aim: end to end ≥ 1.5× the original in fp32 (≥ 13.5 frames/s) and peak RSS under 1 GB, flat with length.",
        ]
    )
    write_section("wav2lip", body)


if __name__ == "__main__":
    main()
