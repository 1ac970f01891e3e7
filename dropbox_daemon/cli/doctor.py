"""`dropbox-daemon doctor`: is this host set up to run the daemon? Each check: ok, warn or fail, and the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from dropbox_daemon.boundary import make_private_dir, writable_by_others
from dropbox_daemon.claims import DROPBOX_DIR, QUARANTINE_DIR, claims_root
from dropbox_daemon.config import Config
from dropbox_daemon.errors import DaemonError
from dropbox_daemon.instances import INSTANCES_DIR
from dropbox_daemon.render.media.encode import ffmpeg_binary, video_encoder
from dropbox_daemon.render.media.frame_store import FrameStore
from dropbox_daemon.watcher import mount_of, watch_mode

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dropbox-daemon.service"
UNIT_NAME = "dropbox-daemon.service"
UNIT_FOLDERS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))
MIN_INOTIFY_WATCHES = 8192


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _writable(path: Path) -> str | None:
    """None if a file can be created and removed in `path`, else why not."""
    probe = path / f".doctor-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def existing_parent(path: Path) -> Path:
    """The nearest path above `path` (or itself) that exists (a file there stops a mkdir)."""
    p = path
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    return p


def check_folders(cfg: Config) -> list[Check]:
    """Each folder writable, or, before the first start, creatable: the daemon makes the
    outbox, the state folder and every inbox itself (0750) when it starts."""
    out = []
    folders = [("outbox", cfg.daemon.outbox), ("state", cfg.daemon.state_dir)]
    folders += [(f"inbox {i.name}", i.path) for i in cfg.inbox]
    for name, path in folders:
        if path.exists() and not path.is_dir():
            out.append(
                Check(
                    f"{name} folder",
                    "fail",
                    f"{path} exists and is not a folder",
                    f"move it away, or point the config at a folder for the {name}",
                )
            )
            continue
        if not path.is_dir():
            parent = existing_parent(path)
            why = _writable(parent) if parent.is_dir() else "it is not a folder"
            if why:
                out.append(
                    Check(
                        f"{name} folder",
                        "fail",
                        f"{path} does not exist and cannot be created: {parent} is not "
                        f"writable ({why})",
                        f"mkdir -p {path} and give the service user write access",
                    )
                )
            else:
                out.append(
                    Check(
                        f"{name} folder",
                        "ok",
                        f"{path} does not exist yet: the daemon creates it at its first start "
                        f"({parent} is writable)",
                    )
                )
            continue
        why = _writable(path)
        if why:
            out.append(
                Check(
                    f"{name} folder",
                    "fail",
                    f"{path} is not writable: {why}",
                    f"chown/chmod {path} so the service user can write to it",
                )
            )
        else:
            out.append(Check(f"{name} folder", "ok", f"{path} is writable"))
    return out


def check_claims(cfg: Config) -> list[Check]:
    """A claim is a rename inside the inbox's own file system: try one."""
    out = []
    for inbox in cfg.inbox:
        if not inbox.path.is_dir():
            out.append(
                Check(
                    f"claims in inbox {inbox.name}",
                    "ok",
                    f"checked once {inbox.path} exists (the daemon creates it at its first start)",
                )
            )
            continue
        root = claims_root(inbox.path)
        try:
            make_private_dir(root)
            same = os.stat(inbox.path).st_dev == os.stat(root).st_dev
            src = inbox.path / f".doctor-{uuid.uuid4().hex[:8]}.tmp"
            src.write_bytes(b"x")
            try:
                os.rename(src, root / src.name)
            finally:
                src.unlink(missing_ok=True)
                (root / src.name).unlink(missing_ok=True)
        except OSError as e:
            out.append(
                Check(
                    f"claims in inbox {inbox.name}",
                    "fail",
                    f"cannot rename into {root}: {e.strerror or e}",
                    f"make {root} a plain folder on the same file system as {inbox.path}",
                )
            )
            continue
        if not same:
            out.append(
                Check(
                    f"claims in inbox {inbox.name}",
                    "fail",
                    f"{root} is on another file system than {inbox.path}: claims would not be atomic",
                    f"remove the mount at {root}; it must be a plain folder inside the inbox",
                )
            )
            continue
        mode, why = watch_mode(inbox)
        mnt, fstype = mount_of(inbox.path)
        out.append(
            Check(
                f"claims in inbox {inbox.name}",
                "ok",
                f"rename works on {fstype} ({mnt}); watching with {mode}: {why}",
            )
        )
    return out


def check_dropbox_private(cfg: Config) -> list[Check]:
    """<inbox>/.dropbox/ holds claims and leases: only the daemons' user may write it."""
    out = []
    for inbox in cfg.inbox:
        folders = [inbox.path / DROPBOX_DIR, claims_root(inbox.path)]
        folders += [inbox.path / DROPBOX_DIR / d for d in (INSTANCES_DIR, QUARANTINE_DIR)]
        loose = writable_by_others(folders)
        name = f"{DROPBOX_DIR}/ of inbox {inbox.name}"
        if loose:
            out.append(
                Check(
                    name,
                    "fail",
                    f"writable by other users: {', '.join(loose)}; they could forge claims and "
                    "leases (docs/operations.md, 'Who can write the share')",
                    f"chmod -R go-w {inbox.path / DROPBOX_DIR}",
                )
            )
        elif (inbox.path / DROPBOX_DIR).is_dir():
            out.append(Check(name, "ok", "writable by the daemons' user only"))
    return out


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
        "import json, sys, torch; from dropbox_daemon.render.engines import wav2lip as w; "
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


def check_disk(cfg: Config) -> list[Check]:
    out = []
    for name, path in (("outbox", cfg.daemon.outbox), ("state", cfg.daemon.state_dir)):
        try:
            free = shutil.disk_usage(existing_parent(path)).free
        except OSError:
            continue
        status = (
            "fail"
            if free < cfg.health.disk_fail_bytes
            else "warn"
            if free < cfg.health.disk_warn_bytes
            else "ok"
        )
        out.append(
            Check(
                f"disk free ({name})",
                status,
                f"{free / 2**30:.1f} GiB free at {path}",
                "free space or lower [inbox] keep_days" if status != "ok" else "",
            )
        )
    return out


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


def check_inotify(cfg: Config) -> list[Check]:
    try:
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return [Check("inotify", "warn", "cannot read the inotify limits", "")]
    if watches < MIN_INOTIFY_WATCHES:
        return [
            Check(
                "inotify",
                "warn",
                f"max_user_watches is {watches}",
                "sysctl fs.inotify.max_user_watches=524288 (events may be missed; rescans still find drops)",
            )
        ]
    return [Check("inotify", "ok", f"max_user_watches {watches}")]


def installed_unit(name: str = UNIT_NAME) -> tuple[str, str] | None:
    """(where, text) of the unit systemd would run: `systemctl cat` (with its drop-ins), or
    the file in /etc/systemd/system or /lib/systemd/system where systemd is not running."""
    import subprocess

    systemctl = shutil.which("systemctl")
    if systemctl:
        try:
            r = subprocess.run(
                [systemctl, "cat", "--no-pager", name], capture_output=True, text=True, timeout=10
            )
            if r.returncode == 0 and r.stdout.strip():
                return f"systemctl cat {name}", r.stdout
        except (OSError, subprocess.SubprocessError):
            pass
    for folder in UNIT_FOLDERS:
        path = folder / name
        try:
            return str(path), path.read_text()
        except OSError:
            continue
    return None


def unit_paths(text: str) -> list[Path]:
    """The folders a unit lets the service write: every ReadWritePaths= of [Service] (they
    add up; an empty one resets, as in systemd), and StateDirectory= under /var/lib."""
    paths: list[Path] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        if section != "Service" or not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "ReadWritePaths":
            if not value:
                paths = []
            paths += [Path(p.lstrip("-+")) for p in value.split()]
        elif key == "StateDirectory":
            paths += [Path("/var/lib") / d for d in value.split()]
    return paths


def check_unit(cfg: Config, unit: str | None = None) -> list[Check]:
    """The unit's ReadWritePaths= must cover every folder the daemon writes to: the
    installed unit's, or the file `unit` names (doctor --unit)."""
    if unit is not None and Path(unit).is_file():
        where, text = unit, Path(unit).read_text()
    else:
        found = installed_unit(unit or UNIT_NAME)
        if found is None:
            return [
                Check(
                    "systemd unit",
                    "ok",
                    f"no {unit or UNIT_NAME} installed (not run by systemd here); "
                    f"`doctor --unit {UNIT}` checks the repository's unit against this config",
                )
            ]
        where, text = found
    paths = unit_paths(text)
    needed = [cfg.daemon.outbox, cfg.daemon.state_dir, *(i.path for i in cfg.inbox)]
    missing = [str(p) for p in needed if not any(p == q or p.is_relative_to(q) for q in paths)]
    if missing:
        return [
            Check(
                "systemd unit",
                "fail",
                f"{where} does not let the service write to: {', '.join(missing)}",
                "add them to ReadWritePaths= (systemctl edit dropbox-daemon), or move the folders",
            )
        ]
    return [
        Check("systemd unit", "ok", f"{where} covers every inbox, the outbox and the state folder")
    ]


def run_checks(cfg: Config, unit: str | None = None) -> list[Check]:
    checks = check_folders(cfg) + check_claims(cfg) + check_dropbox_private(cfg)
    torch_checks, gpu = check_torch(cfg)
    checks += check_ffmpeg(cfg, gpu) + torch_checks + check_weights(cfg)
    checks += (
        check_disk(cfg) + check_template_cache(cfg) + check_inotify(cfg) + check_unit(cfg, unit)
    )
    return checks + check_store(cfg)


def check_store(cfg: Config) -> list[Check]:
    from dropbox_daemon.store import is_farm

    if not is_farm(cfg):
        return []
    from dropbox_daemon.store import pg_doctor

    return pg_doctor.checks(cfg, Check)


def as_dicts(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]
