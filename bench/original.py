"""The original Wav2Lip inference script (github.com/Rudrabha/Wav2Lip), run on the same
inputs as ours in the same bench run: the yardstick of issue 15.

Its source is taken from WAV2LIP_ORIGINAL (a checkout) or cloned into a temporary folder;
it runs under WAV2LIP_ORIGINAL_PYTHON (an interpreter with librosa, scipy, opencv, tqdm and
torch; default: this one). With --box it skips its own face detector, as in issue 9's
comparison. One shim, applied in the child before the script runs, lets the 2020 script run
on today's librosa without changing what it computes: librosa.filters.mel takes its sample
rate and FFT size as keywords since librosa 0.10.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = "https://github.com/Rudrabha/Wav2Lip"

# run in the child, before inference.py, by -c
SHIM = """
import runpy, sys
import librosa.filters
_mel = librosa.filters.mel
def mel(*args, **kw):
    names = ("sr", "n_fft")
    kw.update(zip(names, args))
    return _mel(**kw)
librosa.filters.mel = mel
sys.argv = ["inference.py", *sys.argv[1:]]
runpy.run_path("inference.py", run_name="__main__")
"""


def source() -> Path | None:
    """A checkout of the original: WAV2LIP_ORIGINAL, else a fresh clone (None if neither)."""
    given = os.environ.get("WAV2LIP_ORIGINAL")
    if given:
        return Path(given)
    into = Path(tempfile.mkdtemp(prefix="wav2lip-original-"))
    try:
        subprocess.run(
            ["git", "clone", "--depth", "1", "-q", SOURCE, str(into / "src")],
            check=True,
            timeout=120,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(into, ignore_errors=True)
        return None
    return into / "src"


def python() -> str:
    return os.environ.get("WAV2LIP_ORIGINAL_PYTHON", sys.executable)


def usable(src: Path | None) -> str | None:
    """Why the original cannot run here (None: it can)."""
    if src is None or not (src / "inference.py").exists():
        return f"no checkout of {SOURCE} (set WAV2LIP_ORIGINAL; cloning failed)"
    probe = subprocess.run(
        [python(), "-c", "import librosa, scipy, cv2, tqdm, torch"], capture_output=True
    )
    if probe.returncode:
        return f"{python()} lacks librosa/scipy/opencv/tqdm/torch (set WAV2LIP_ORIGINAL_PYTHON)"
    return None


def run_original(
    src: Path, ckpt: Path, audio: Path, template: Path, box: tuple[int, int, int, int], ffmpeg: str
) -> dict[str, float]:
    """Run inference.py once in a copy of its folder (it writes temp/ beside itself); its wall
    time and the peak memory of its process tree. `box`: top, bottom, left, right."""
    from dropjob import TreePeak

    work = Path(tempfile.mkdtemp(prefix="w2l-orig-"))
    shutil.copytree(src, work / "src", ignore=shutil.ignore_patterns(".git"))
    bindir = work / "bin"  # it calls `ffmpeg` through the shell
    bindir.mkdir()
    (bindir / "ffmpeg").symlink_to(ffmpeg)
    inputs = work / "inputs"  # it splits file names at their first dot: plain names
    inputs.mkdir()
    face, wav = inputs / ("face" + template.suffix), inputs / "audio.wav"
    shutil.copyfile(template, face)
    shutil.copyfile(audio, wav)
    out = work / "result.mp4"
    args = [
        "--checkpoint_path", str(ckpt), "--face", str(face), "--audio", str(wav),
        "--outfile", str(out), "--box", *map(str, box),
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    t = time.perf_counter()
    proc = subprocess.Popen(
        [python(), "-c", SHIM, *args],
        cwd=work / "src",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tree = TreePeak(proc.pid)
    _out, err = proc.communicate()
    wall = time.perf_counter() - t
    peak = tree.peak_mb()
    made = out.exists() and out.stat().st_size > 0
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode or not made:
        raise RuntimeError(f"the original script failed: {err.decode(errors='replace')[-2000:]}")
    return {"wall": wall, "tree_peak_mb": peak}
