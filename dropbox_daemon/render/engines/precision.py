"""Which precision the wav2lip network runs in, and why: fp16 on CUDA, bf16 where the CPU
has AMX and oneDNN may use it, fp32 otherwise (AVX512-BF16 alone included); [models] precision forces it.
The reason is said in one log line (and by doctor) so an operator can compare hosts."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from loguru import logger

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cpu_flags() -> set[str]:
    """The reduced-precision flags of this CPU that matter to the model."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) & {
                "avx512_bf16",
                "amx_bf16",
                "amx_tile",
                "avx512_vnni",
                "avx_vnni",
            }
    return set()


BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def onednn_may_use_bf16() -> bool:
    """Whether oneDNN, torch's CPU convolutions, runs bf16 kernels here. It follows
    ONEDNN_MAX_CPU_ISA: an operator who caps it (AVX2, say) gets the fp32 choice, and the
    tests emulate an AVX2-only host on a bf16 one the same way (`make test-avx2`)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_bf16() -> bool:
    """bf16 kernels here: the CPU has AVX512-BF16/AMX and oneDNN may use them."""
    return bool(cpu_flags() & BF16_FLAGS) and onednn_may_use_bf16()


def cpu_has_amx() -> bool:
    """bf16 faster than fp32 here: AMX tiles (amx_bf16) and oneDNN may use bf16.

    AVX512-BF16 alone is not enough: on it the model ran slower in bf16 than in fp32 (2 cores
    of a Xeon with avx512_bf16 but no AMX: 18-22 against 25-27 frames/s, two calls at once;
    the bf16 conversions and fp32 blocks cost more than its dot products save)."""
    return "amx_bf16" in cpu_flags() and onednn_may_use_bf16()


def cpu_reason() -> str:
    """The CPU flags behind the automatic choice, as an operator comparing hosts reads them."""
    found = cpu_flags()
    flags = ", ".join(sorted(found)) or "no AVX512-BF16/AMX/VNNI"
    if found & BF16_FLAGS and not onednn_may_use_bf16():
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "unset")
        return f"CPU flags: {flags}, but oneDNN is capped below them (ONEDNN_MAX_CPU_ISA={cap})"
    if "avx512_bf16" in found and "amx_bf16" not in found:
        return (
            f"CPU flags: {flags}; AVX512-BF16 without AMX runs this model faster in fp32 "
            '(bench/wav2lip.py measures both; [models] precision = "bf16" forces it)'
        )
    return f"CPU flags: {flags}"


def describe_precision(precision: str, device: str, dtype: torch.dtype) -> str:
    """One log line: the precision chosen and why, for an operator comparing hosts."""
    name = DTYPE_NAMES[dtype]
    why = (
        f'forced by [models] precision = "{precision}"'
        if precision != "auto"
        else "CUDA"
        if device == "cuda"
        else cpu_reason()
    )
    if dtype == torch.float32:
        return f"wav2lip runs fp32 on {device} ({why})"
    return (
        f"wav2lip runs {name} on {device} ({why}); the audio encoder and the first "
        f'{EXACT_FACE_BLOCKS} face-encoder blocks stay fp32; [models] precision = "fp32" turns it off'
    )


def choose_dtype(
    precision: str, device: str, *, cpu_bf16: bool | None = None, cpu_amx: bool | None = None
) -> torch.dtype:
    """The reduced precision of the bulk of the network: fp16 on CUDA, bf16 where the CPU
    has AMX, fp32 otherwise; `precision` in the config forces it. `cpu_bf16` and `cpu_amx`
    stand for the CPU's answers (None: ask this one), so every CPU class is tested anywhere."""
    if cpu_bf16 is None:
        cpu_bf16 = cpu_has_bf16()
    if cpu_amx is None:
        cpu_amx = cpu_has_amx()
    if precision == "fp32":
        return torch.float32
    if device == "cuda":
        return torch.float16 if precision in ("auto", "fp16") else torch.bfloat16
    if precision == "bf16":
        if not cpu_bf16:
            logger.warning(
                "precision bf16 forced on a CPU without AVX512-BF16/AMX: it will be slow"
            )
        return torch.bfloat16
    if precision == "fp16":
        logger.warning("precision fp16 is for CUDA; the CPU runs fp32")
        return torch.float32
    return torch.bfloat16 if cpu_bf16 and cpu_amx else torch.float32


# The audio encoder and the first face-encoder blocks stay fp32 in every precision: their
# outputs reach the last layers through the skip connections unattenuated, and measured
# one block at a time they carry nearly all of the reduced-precision error (bf16 in all
# of the network: ~28 dB PSNR from fp32; with these in fp32: 39-41 dB, for 8% of the
# FLOPs; docs/benchmarks.md).
EXACT_FACE_BLOCKS = 4
