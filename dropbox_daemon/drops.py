"""The drop protocol: finding drops in an inbox, waiting for them to settle, claiming them.

A drop is a manifest directly in an inbox, or job.json/job.toml in a direct
sub-folder (a job folder). Temporary and hidden names are never read. A drop
is claimed by renaming its manifest into <inbox>/.dropbox/claimed/<claim>/drop/,
which on one file system succeeds for exactly one of several daemons; its media
are then moved beside it. From then on nothing of the drop is deleted.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dropbox_daemon.manifest import JOB_FOLDER_MANIFESTS, is_manifest_name
from dropbox_daemon.outbox import atomic_write_json

DROPBOX_DIR = ".dropbox"
CLAIMED_DIR = "claimed"
DROP_SUBDIR = "drop"
OWNER_FILE = "owner.json"
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx")


def is_ignored_name(name: str) -> bool:
    """Names a writer uses while a file is incomplete: never read (rsync's .name.XXXXXX included)."""
    return (
        name.startswith((".", "#", "~"))
        or name.endswith("~")
        or name.lower().endswith(IGNORED_SUFFIXES)
    )


def claims_root(inbox: Path) -> Path:
    return inbox / DROPBOX_DIR / CLAIMED_DIR


@dataclass(frozen=True)
class Candidate:
    """A manifest that may be a drop: `manifest` inside `base_dir` (the inbox or a job folder)."""

    manifest: Path
    base_dir: Path
    job_folder: bool

    @property
    def stem(self) -> str:
        return self.base_dir.name if self.job_folder else self.manifest.stem


def candidate_for(inbox: Path, path: Path) -> Candidate | None:
    """The drop a path inside the inbox belongs to, if any (used for watcher hints)."""
    try:
        rel = path.relative_to(inbox)
    except ValueError:
        return None
    parts = rel.parts
    if not parts or any(is_ignored_name(p) for p in parts[:2]):
        return None
    if len(parts) == 1:
        if is_manifest_name(parts[0]):
            return Candidate(inbox / parts[0], inbox, False)
        folder = inbox / parts[0]
    else:
        folder = inbox / parts[0]
    return folder_candidate(folder)


def folder_candidate(folder: Path) -> Candidate | None:
    for name in JOB_FOLDER_MANIFESTS:
        m = folder / name
        if m.is_file():
            return Candidate(m, folder, True)
    return None


def scan(inbox: Path) -> list[Candidate]:
    """Every drop visible in the inbox now, oldest first (by manifest mtime)."""
    found: list[tuple[float, Candidate]] = []
    try:
        entries = list(os.scandir(inbox))
    except OSError:
        return []
    for entry in entries:
        if is_ignored_name(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and is_manifest_name(entry.name):
                found.append((entry.stat().st_mtime, Candidate(Path(entry.path), inbox, False)))
            elif entry.is_dir(follow_symlinks=False):
                c = folder_candidate(Path(entry.path))
                if c is not None:
                    found.append((c.manifest.stat().st_mtime, c))
        except OSError:
            continue  # vanished while we looked: another daemon claimed it
    found.sort(key=lambda t: t[0])
    return [c for _, c in found]


def _named_files(c: Candidate) -> list[Path]:
    """The media a manifest names, read leniently (only to watch them settle)."""
    try:
        raw = c.manifest.read_bytes()[:1_000_000]
        text = raw.decode("utf-8", "replace")
        if c.manifest.name.lower().endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception:  # noqa: BLE001 - an unparsable manifest settles on itself alone
        return []
    if not isinstance(data, dict):
        return []
    names = [data.get("audio"), data.get("template")]
    out = data.get("output")
    if isinstance(out, dict):
        names.append(out.get("watermark"))
    paths = []
    for n in names:
        if isinstance(n, str) and n and "\x00" not in n and not os.path.isabs(n):
            paths.append(c.base_dir / n)
    return paths


def signature(c: Candidate) -> tuple:
    """(name, size, mtime) of the manifest and what it names; a job folder: all its files."""
    if c.job_folder:
        paths = []
        for root, dirs, files in os.walk(c.base_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            paths.extend(Path(root) / f for f in files)
    else:
        paths = [c.manifest, *_named_files(c)]
    sig = []
    for p in sorted(paths):
        try:
            st = os.lstat(p)
            sig.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append((str(p), -1, -1))
    return tuple(sig)


@dataclass
class Settler:
    """Takes a drop once its files kept the same size and mtime for `settle_seconds`.

    Writers that cannot rename (SMB drag and drop, a slow copy) are covered by
    this; a manifest that arrived by rename is taken at once (`fast=True`).
    """

    settle_seconds: float
    seen: dict[Path, tuple[tuple, float]] = field(default_factory=dict)

    def ready(self, c: Candidate, now: float, *, fast: bool = False) -> bool:
        sig = signature(c)
        if fast and all(size >= 0 for _, size, _ in sig):
            self.seen.pop(c.manifest, None)
            return True
        prev = self.seen.get(c.manifest)
        if prev is None or prev[0] != sig:
            self.seen[c.manifest] = (sig, now)
            return self.settle_seconds == 0
        return now - prev[1] >= self.settle_seconds

    def forget(self, c: Candidate) -> None:
        self.seen.pop(c.manifest, None)


@dataclass(frozen=True)
class Claim:
    """A drop this daemon won: its folder under .dropbox/claimed/ and where it came from."""

    claim_id: str
    dir: Path
    candidate: Candidate

    @property
    def drop_dir(self) -> Path:
        return self.dir / DROP_SUBDIR

    @property
    def manifest(self) -> Path:
        return self.drop_dir / self.candidate.manifest.name


def new_claim_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "-" + uuid.uuid4().hex[:10]


def claim(inbox: Path, c: Candidate, instance: str, now: float, host: str = "") -> Claim | None:
    """Rename the manifest into a fresh claim folder; None when another daemon was first."""
    cid = new_claim_id(now)
    cdir = claims_root(inbox) / cid
    (cdir / DROP_SUBDIR).mkdir(parents=True)
    owner = {
        "instance": instance,
        "host": host or socket.gethostname(),
        "pid": os.getpid(),
        "claimed_at": now,
        "generation": 1,
        "source": str(c.manifest.relative_to(inbox)),
        "job_folder": c.job_folder,
    }
    atomic_write_json(cdir / OWNER_FILE, owner)
    cl = Claim(cid, cdir, c)
    try:
        os.rename(c.manifest, cl.manifest)
    except FileNotFoundError:
        (cdir / OWNER_FILE).unlink()
        (cdir / DROP_SUBDIR).rmdir()
        cdir.rmdir()
        return None
    return cl


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)


def move_job_folder(cl: Claim) -> list[str]:
    """Move everything in a claimed job folder beside its manifest; returns what moved."""
    moved = []
    folder = cl.candidate.base_dir
    for entry in sorted(os.listdir(folder)):
        if os.path.lexists(cl.drop_dir / entry):
            continue  # moved before a crash, or a name clash: the original stays put
        _move(folder / entry, cl.drop_dir / entry)
        moved.append(entry)
    try:
        folder.rmdir()
    except OSError:
        pass  # something new landed in it meanwhile; the next scan sees it
    return moved


def move_named(cl: Claim, names: list[str], inbox: Path) -> dict[str, Path]:
    """Move the named files of a loose manifest beside it; name -> new path.

    A name that leads outside the manifest's folder (absolute, '..') is never
    touched. A symlink is resolved and its target moved when that target lies
    inside the inbox; a link leading out is moved as the link itself.
    """
    out: dict[str, Path] = {}
    base = cl.candidate.base_dir
    root = inbox.resolve()
    for name in names:
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts or "\x00" in name:
            continue
        src = base.joinpath(*pure.parts)
        dst = cl.drop_dir.joinpath(*pure.parts)
        if not os.path.lexists(src) or os.path.lexists(dst):
            continue
        real = src.resolve()
        if src.is_symlink() and real.is_relative_to(root) and real.is_file():
            src = real
        st = os.lstat(src)
        if stat.S_ISDIR(st.st_mode):
            continue
        _move(src, dst)
        out[name] = dst
    return out


def read_owner(cdir: Path) -> dict[str, Any] | None:
    """The claim's owner.json (instance, generation, job_id once known), or None."""
    try:
        owner = json.loads((cdir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def note_job(cdir: Path, job_id: str, priority: int = 0) -> None:
    """Record in the claim which job it became, so a peer taking it over knows."""
    owner = read_owner(cdir) or {}
    owner.update(job_id=job_id, priority=priority)
    atomic_write_json(cdir / OWNER_FILE, owner)


def claim_from(inbox: Path, cdir: Path, owner: dict[str, Any]) -> Claim | None:
    """The Claim a claim folder holds (None when it holds no manifest)."""
    drop = cdir / DROP_SUBDIR
    try:
        manifest = [p for p in drop.iterdir() if is_manifest_name(p.name)]
    except OSError:
        return None
    if not manifest or "source" not in owner:
        return None
    src = inbox / owner["source"]
    cand = Candidate(src, src.parent, bool(owner.get("job_folder")))
    return Claim(cdir.name, cdir, cand)


def claim_folders(inbox: Path) -> list[Path]:
    """Every folder under the inbox's .dropbox/claimed/, in name (claim time) order."""
    try:
        return sorted(p for p in claims_root(inbox).iterdir() if p.is_dir())
    except OSError:
        return []


def owner_instance(owner: dict[str, Any]) -> str | None:
    """The instance a claim's owner.json names (older claims name only their host)."""
    return owner.get("instance", owner.get("host"))


def claims_of(inbox: Path, instances: set[str] | None) -> list[tuple[Path, dict[str, Any]]]:
    """(claim folder, owner) of every claim in the inbox, or of those owned by `instances`."""
    out = []
    for cdir in claim_folders(inbox):
        owner = read_owner(cdir)
        if owner is None:
            continue
        if instances is None or owner_instance(owner) in instances:
            out.append((cdir, owner))
    return out


def own_orphans(inbox: Path, instance: str, known: set[str]) -> list[Claim]:
    """Claims this instance made whose job never reached the store (a crash right after the claim)."""
    out = []
    for cdir, owner in claims_of(inbox, {instance}):
        if str(cdir) in known or owner.get("job_id"):
            continue
        cl = claim_from(inbox, cdir, owner)
        if cl is not None:
            out.append(cl)
    return out


def drafted_owner(cdir: Path) -> dict[str, Any] | None:
    """The owner.json a crash left unrenamed (its complete temporary file), or None."""
    for draft in cdir.glob(f".{OWNER_FILE}.*.tmp"):
        try:
            owner = json.loads(draft.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict):
            return owner
    return None


def discard_if_unfinished(cdir: Path, owner: dict[str, Any] | None, min_age: float = 0.0) -> bool:
    """Remove a claim folder a crash left half made: nothing was moved into it yet (the
    daemon died between creating it and renaming the manifest in), so it holds no one's
    files. `min_age`: for a folder whose owner is unknown, how old it must be, so that a
    claim being made this instant is never touched. True when it was removed."""
    drop = cdir / DROP_SUBDIR
    try:
        if (owner or {}).get("job_id") or (drop.exists() and any(drop.iterdir())):
            return False
        if owner is None and time.time() - cdir.stat().st_mtime < min_age:
            return False
        for leftover in [cdir / OWNER_FILE, *cdir.glob(f".{OWNER_FILE}.*.tmp")]:
            leftover.unlink(missing_ok=True)
        if drop.exists():
            drop.rmdir()
        cdir.rmdir()
    except OSError:
        return False  # something landed in it meanwhile, or a peer removed it first
    return True


def unfinished_claims(inbox: Path, instance: str) -> list[tuple[Path, dict | None]]:
    """Half-made claim folders (see discard_if_unfinished) with their owner as far as it is
    known: those this instance made (owner.json, or the draft a crash left of it), and those
    no one can be named for (discard_if_unfinished waits for those to age)."""
    out = []
    for cdir in claim_folders(inbox):
        owner = read_owner(cdir) or drafted_owner(cdir)
        if owner is not None and owner_instance(owner) != instance:
            continue
        drop = cdir / DROP_SUBDIR
        if not drop.exists() or not any(drop.iterdir()):
            out.append((cdir, owner))
    return out


def base_claim_id(name: str) -> str:
    """A claim folder's name without its generation (`<id>.g2` -> `<id>`)."""
    return name.split(".g", 1)[0]


def claim_generation(name: str) -> int:
    """A claim folder's generation: 1 for the first claim, n for `<id>.gn` after takeovers."""
    _base, sep, gen = name.partition(".g")
    return int(gen) if sep and gen.isdigit() else 1


def same_claim(recorded: str | None, folder: Path) -> bool:
    """Whether a job's recorded claim folder is `folder` or another generation of it."""
    return bool(recorded) and base_claim_id(Path(recorded or "").name) == base_claim_id(folder.name)


def take_over(
    cdir: Path, owner: dict[str, Any], instance: str, now: float, why: str
) -> Path | None:
    """Make the claim this instance's by renaming its folder to the next generation.

    The rename is the fencing token: exactly one taker wins it, and the former
    owner, should it wake up, finds its claim folder gone and publishes nothing.
    Files are renamed with their folder, never copied. None when someone else won.
    """
    gen = int(owner.get("generation", 1)) + 1
    new = cdir.with_name(f"{base_claim_id(cdir.name)}.g{gen}")
    try:
        os.rename(cdir, new)
    except OSError:
        return None
    taken = {
        **owner,
        "instance": instance,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "generation": gen,
        "taken_from": owner_instance(owner),
        "taken_at": now,
        "taken_because": why,
    }
    atomic_write_json(new / OWNER_FILE, taken)
    return new
