"""The bench scripts start: every one imports (what it imports from the others exists), and
`make bench-gpu` on a host without a GPU says so and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_imports(script: str) -> None:
    code = f"import sys; sys.path[:0] = ['bench', 'tests']; import {script}"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_bench_gpu_without_a_gpu_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: make bench-gpu measures it")
    before = (ROOT / "docs" / "benchmarks.md").read_text()
    r = subprocess.run(
        [sys.executable, "bench/wav2lip_gpu.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "no CUDA GPU here" in r.stdout, r.stdout + r.stderr
    assert "CPU-only build" in r.stdout or "CUDA" in r.stdout
    assert (ROOT / "docs" / "benchmarks.md").read_text() == before
