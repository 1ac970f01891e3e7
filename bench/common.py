"""Shared by the bench scripts: a daemon on temp folders, drops, and docs/benchmarks.md sections."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import DaemonProc, make_image, make_tone, make_video, put_file, put_manifest, wait_for  # noqa: E402,F401

DOC = ROOT / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by the scripts in `bench/` (each replaces its own section). Figures are
from the machine named in each section; rerun with `make bench`.
"""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section `name` of docs/benchmarks.md."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    stamp = time.strftime("%Y-%m-%d")
    block = f"{start}\n{body.strip()}\n\n_Measured {stamp} on {machine()}._\n{end}"
    if start in text:
        text = re.sub(
            re.escape(start) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S
        )
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(block)
