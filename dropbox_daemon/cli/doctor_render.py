"""doctor's checks of what rendering needs: ffmpeg and the video encoder, torch and its
device and precision, the wav2lip weights, the template cache."""

from __future__ import annotations

import shutil
import subprocess
import sys

from dropbox_daemon.cli.checks import Check
from dropbox_daemon.config import Config
from dropbox_daemon.errors import DaemonError
from dropbox_daemon.render.media.encode import ffmpeg_binary, video_encoder
from dropbox_daemon.render.media.frame_store import FrameStore


def check_ffmpeg(cfg: Config, gpu: bool) -> list[Check]:
    try:
        exe = ffmpeg_binary(cfg.media.ffmpeg)
        encoders = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return [
            Check(
                "ffmpeg",
                "fail",
                f"ffmpeg cannot run: {e}",
                "pip install imageio-ffmpeg, or set [media] ffmpeg to a working binary",
            )
        ]
    out = [Check("ffmpeg", "ok", exe)]
    for enc in ("libx264", "aac"):
        if f" {enc} " in encoders:
            out.append(Check(f"encoder {enc}", "ok", "available"))
        else:
            out.append(
                Check(
                    f"encoder {enc}",
                    "fail",
                    f"{exe} has no {enc} encoder",
                    "use the imageio-ffmpeg binary or an ffmpeg built with it ([media] ffmpeg)",
                )
            )
    try:
        vcodec, why = video_encoder(exe, cfg.media.video_encoder)
    except DaemonError as e:
        out.append(Check("video encoder", "fail", e.message, e.hint))
        return out
    if gpu and vcodec != "h264_nvenc":
        out.append(
            Check(
                "video encoder",
                "warn",
                f"{vcodec}: {why}; the GPU renders, the CPU encodes (libx264, each daemon of a "
                "per-GPU set on its share of the cores)",
                "data-centre GPUs (A100, H100, H200, B200) have no NVENC: that is expected there; "
                "on GeForce, RTX/Quadro, L4, L40 or T4 install the NVIDIA driver's libcuda "
                "(the imageio-ffmpeg binary has h264_nvenc)",
            )
        )
    else:
        out.append(Check("video encoder", "ok", f"{vcodec}: {why}"))
    return out


def check_torch(cfg: Config) -> tuple[list[Check], bool]:
    """torch's version and device, and the precision wav2lip would run in, in a child process
    (torch is never imported by the daemon)."""
    code = (
        "import json, sys, torch; from dropbox_daemon.render.engines import precision as w; "
        "d = 'cuda' if torch.cuda.is_available() else 'cpu'; p = sys.argv[1]; "
        "print(json.dumps({'v': torch.__version__, 'cuda': d == 'cuda', "
        "'name': torch.cuda.get_device_name(0) if d == 'cuda' else None, "
        "'precision': w.describe_precision(p, d, w.choose_dtype(p, d))}))"
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, cfg.models.precision],
            capture_output=True,
            text=True,
            timeout=120,
        )
        import json

        info = json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return [
            Check(
                "torch",
                "warn",
                "torch cannot be imported",
                "pip install -c constraints.txt -e . (or the CUDA build on GPU hosts)",
            )
        ], False
    device = f"CUDA ({info['name']})" if info["cuda"] else "CPU only"
    return [
        Check("torch", "ok", f"torch {info['v']}, {device}"),
        Check("precision", "ok", info["precision"]),
    ], bool(info["cuda"])


def check_weights(cfg: Config) -> list[Check]:
    path = cfg.models.wav2lip
    if path is None:
        return [Check("wav2lip weights", "ok", "none configured: engine auto renders with preview")]
    if not path.is_file():
        return [
            Check(
                "wav2lip weights",
                "fail",
                f"{path} does not exist",
                "copy wav2lip.pth or wav2lip_gan.pth there, or remove [models] wav2lip",
            )
        ]
    code = (
        "import sys, torch; ck = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
        "sd = ck.get('state_dict', ck); print(len(sd))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300
    )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
        return [
            Check(
                "wav2lip weights",
                "fail",
                f"{path} cannot be loaded: {last[:200]}",
                "the file is damaged or not a PyTorch checkpoint: download it again",
            )
        ]
    return [Check("wav2lip weights", "ok", f"{path}: {r.stdout.strip()} tensors")]


def check_template_cache(cfg: Config) -> list[Check]:
    """How full the template prep cache is, and whether its budget fits the state disk."""
    budget = cfg.media.template_cache_bytes
    store = FrameStore(cfg.daemon.state_dir / "templates", budget)
    if budget == 0:
        return [Check("template cache", "ok", "off ([media] template_cache_bytes = 0)")]
    count, used = store.usage()
    detail = (
        f"{count} template(s), {used / 2**20:.0f} MiB of {budget / 2**20:.0f} MiB at {store.folder}"
    )
    try:
        room = shutil.disk_usage(cfg.daemon.state_dir).free + used
    except OSError:
        return [Check("template cache", "ok", detail)]
    if budget > room - cfg.health.disk_warn_bytes:
        return [
            Check(
                "template cache",
                "warn",
                f"{detail}; filled, it would leave the state disk under [health] disk_warn_bytes",
                f"lower [media] template_cache_bytes below {max(0, room - cfg.health.disk_warn_bytes) >> 20} MiB",
            )
        ]
    return [Check("template cache", "ok", detail)]
