"""A GPU host's install keeps torch's CUDA build: `make` with TORCH_INDEX, or a venv that has
one already, installs with constraints-gpu.txt (no torch pin) instead of constraints.txt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            pkg = line.replace("==", "<").replace(">=", "<").split("<")[0]
            out[pkg] = line
    return out


def test_the_gpu_constraints_pin_everything_but_torch() -> None:
    cpu, gpu = pins("constraints.txt"), pins("constraints-gpu.txt")
    assert "torch" in cpu and "torch" not in gpu
    assert {k: v for k, v in cpu.items() if k != "torch"} == gpu


def test_make_installs_torch_from_the_index_and_then_without_the_torch_pin(tmp_path) -> None:  # noqa: ANN001
    r = subprocess.run(
        [
            "make",
            "-n",
            "-B",
            f"VENV={tmp_path}/venv",
            "TORCH_INDEX=https://idx.example/cu126",
            f"{tmp_path}/venv/.installed",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    plan = r.stdout
    assert 'install --quiet torch --index-url "https://idx.example/cu126"' in plan
    assert "torch.version.cuda" in plan and "-c constraints-gpu.txt" in plan
    assert plan.index("--index-url") < plan.index("constraints-gpu.txt")


def test_this_venv_takes_the_cpu_branch_only_without_cuda() -> None:
    import torch

    probe = "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"
    assert (subprocess.run([sys.executable, "-c", probe]).returncode == 0) == bool(
        torch.version.cuda
    )
    assert (
        '$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"'
        in (ROOT / "Makefile").read_text()
    )
