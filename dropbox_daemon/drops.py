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
import re
import socket
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dropbox_daemon.boundary import (
    DIR_MODE,
    MAX_ENTRIES,
    NOTED,
    Refused,
    is_real_dir,
    is_regular,
    kind,
    lstat,
    make_private_dir,
    move_file,
    name_problem,
    read_bounded,
    read_json,
    relative_problem,
    shown,
    walk,
    writable_by_others,
)
from dropbox_daemon.manifest import JOB_FOLDER_MANIFESTS, is_manifest_name, job_id_problem
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


def make_dropbox(inbox: Path) -> None:
    """Create <inbox>/.dropbox/ and claimed/ so that only the daemons' user can write them
    (0750); where an existing one is writable by others, say so (doctor fails on it)."""
    make_private_dir(claims_root(inbox))
    loose = writable_by_others([inbox / DROPBOX_DIR, claims_root(inbox)])
    if loose:
        logger.error(
            "inbox {}: {} can be written by other users, who could then forge claims and "
            "leases; run: chmod go-w {}",
            inbox,
            ", ".join(loose),
            inbox / DROPBOX_DIR,
        )


@dataclass(frozen=True)
class Candidate:
    """A manifest that may be a drop: `manifest` inside `base_dir` (the inbox or a job folder)."""

    manifest: Path
    base_dir: Path
    job_folder: bool

    @property
    def stem(self) -> str:
        return self.base_dir.name if self.job_folder else self.manifest.stem


MAX_INBOX_ENTRIES = 100_000  # entries of one inbox looked at in one scan


def _unusable(path: Path, st: os.stat_result | None, *, manifest: bool) -> str | None:
    """Why an inbox entry that looks like a drop is not one (None when it may be)."""
    if why := name_problem(path.name):
        return f"has a name that {why}"
    if st is None:
        return None  # gone: nothing to say
    if manifest and not stat.S_ISREG(st.st_mode):
        return f"is {kind(st)}, not a manifest file"
    if not manifest and not stat.S_ISDIR(st.st_mode):
        return f"is {kind(st)}, not a job folder"
    return None


def candidate_for(inbox: Path, path: Path) -> Candidate | None:
    """The drop a path inside the inbox belongs to, if any (used for watcher hints)."""
    try:
        rel = path.relative_to(inbox)
    except ValueError:
        return None
    parts = rel.parts
    if not parts or any(is_ignored_name(p) for p in parts[:2]):
        return None
    first = inbox / parts[0]
    st = lstat(first)
    if st is None:
        return None
    if len(parts) == 1 and is_manifest_name(parts[0]) and not stat.S_ISDIR(st.st_mode):
        if why := _unusable(first, st, manifest=True):
            NOTED.once(first, why)
            return None
        return Candidate(first, inbox, False)
    return folder_candidate(first, st)


def folder_candidate(folder: Path, st: os.stat_result | None = None) -> Candidate | None:
    """The job folder's drop: a real folder (not a link) holding job.json or job.toml as a
    regular file; None otherwise, logged once where it looks like a drop and is not one."""
    st = st if st is not None else lstat(folder)
    if st is None or not stat.S_ISDIR(st.st_mode):
        if st is not None and stat.S_ISLNK(st.st_mode) and _has_manifest(folder):
            NOTED.once(folder, "is a symbolic link to a folder, not a job folder")
        return None
    if why := name_problem(folder.name):
        if _has_manifest(folder):
            NOTED.once(folder, f"is a job folder whose name {why}")
        return None
    for name in JOB_FOLDER_MANIFESTS:
        m = folder / name
        mst = lstat(m)
        if mst is None:
            continue
        if not stat.S_ISREG(mst.st_mode):
            NOTED.once(m, f"is {kind(mst)}, not a manifest file")
            return None
        return Candidate(m, folder, True)
    return None


def _has_manifest(folder: Path) -> bool:
    return any(os.path.lexists(folder / n) for n in JOB_FOLDER_MANIFESTS)


def scan(inbox: Path) -> list[Candidate]:
    """Every drop visible in the inbox now, oldest first (by manifest mtime)."""
    found: list[tuple[float, Candidate]] = []
    try:
        with os.scandir(inbox) as it:
            entries = [e for _, e in zip(range(MAX_INBOX_ENTRIES), it, strict=False)]
    except OSError:
        return []
    for entry in entries:
        if is_ignored_name(entry.name):
            continue
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished while we looked: another daemon claimed it
        if stat.S_ISDIR(st.st_mode) or not is_manifest_name(entry.name):
            c = folder_candidate(path, st)
            if c is None:
                continue
            mst = lstat(c.manifest)
            if mst is not None:
                found.append((mst.st_mtime, c))
            continue
        if why := _unusable(path, st, manifest=True):
            NOTED.once(path, why)
            continue
        found.append((st.st_mtime, Candidate(path, inbox, False)))
    found.sort(key=lambda t: t[0])
    return [c for _, c in found]


def _named_files(c: Candidate) -> list[Path]:
    """The media a manifest names, read leniently (only to watch them settle)."""
    try:
        raw = read_bounded(c.manifest, 1_000_000)
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
    return [c.base_dir / n for n in names if isinstance(n, str) and relative_problem(n) is None]


def signature(c: Candidate) -> tuple:
    """(name, size, mtime) of the manifest and what it names; a job folder: all its files.
    A job folder too deep or too wide to walk settles on its manifest and that fact alone
    (intake then answers it); nothing here follows a link or opens more than the manifest."""
    if c.job_folder:
        try:
            entries = walk(c.base_dir)
        except Refused as e:
            st = lstat(c.manifest)
            return ((f"(refused: {e.code})", 0, 0), (str(c.manifest), *_size_mtime(st)))
        sig = [
            (e.rel, e.st.st_size, e.st.st_mtime_ns)
            for e in entries
            if not e.is_dir and not any(p.startswith(".") for p in e.rel.split("/"))
        ]
        return tuple(sig)
    out = []
    for p in sorted([c.manifest, *_named_files(c)]):
        out.append((str(p), *_size_mtime(lstat(p))))
    return tuple(out)


def _size_mtime(st: os.stat_result | None) -> tuple[int, int]:
    return (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)


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
    make_private_dir(claims_root(inbox))  # removed by someone while the daemon ran?
    cdir.mkdir(mode=DIR_MODE)
    (cdir / DROP_SUBDIR).mkdir(mode=DIR_MODE)
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


def move_job_folder(cl: Claim) -> list[str]:
    """Move everything in a claimed job folder beside its manifest (each entry renamed whole,
    a link as the link itself: nothing is followed or read); returns what moved."""
    moved = []
    folder = cl.candidate.base_dir
    if not is_real_dir(folder):
        return moved  # swapped for a link since it was seen: nothing in it is the drop's
    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for _, e in zip(range(MAX_ENTRIES + 1), it, strict=False))
    except OSError:
        return moved
    for entry in names:
        if os.path.lexists(cl.drop_dir / entry):
            continue  # moved before a crash, or a name clash: the original stays put
        try:
            os.rename(folder / entry, cl.drop_dir / entry)
        except OSError:
            continue  # gone meanwhile
        moved.append(entry)
    try:
        folder.rmdir()
    except OSError:
        pass  # something new landed in it meanwhile; the next scan sees it
    return moved


def move_named(cl: Claim, names: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Move the files a loose manifest names beside it: (name -> new path, name -> why it
    stayed). Only a name that passes relative_problem (inside the manifest's folder, no
    hidden part, so never .dropbox/) and is a regular file of one link moves; a link is
    never followed. The same check holds for a valid drop and a rejected one."""
    out: dict[str, Path] = {}
    left: dict[str, str] = {}
    base = cl.candidate.base_dir
    for name in names:
        if why := relative_problem(name):
            left[name] = why
            continue
        parts = PurePosixPath(name.replace("\\", "/")).parts
        src, dst = base.joinpath(*parts), cl.drop_dir.joinpath(*parts)
        if not os.path.lexists(src) and is_regular(dst):
            out[name] = dst  # moved before a crash
            continue
        if any(not is_real_dir(base.joinpath(*parts[:i])) for i in range(1, len(parts))):
            left[name] = "is inside something that is not a folder (a link?)"
            continue
        if why := move_file(src, dst):
            left[name] = why
            continue
        out[name] = dst
    return out, left


class OwnerRecord(BaseModel):
    """owner.json as the daemons write it. It lies on the share, so it is parsed against
    this schema before anything in it is used: a path, an instance or a job id from it
    cannot point adoption or the outbox anywhere else."""

    model_config = ConfigDict(extra="allow")

    instance: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:@-]{1,128}$")
    host: str | None = Field(default=None, max_length=256)
    pid: int | None = None
    claimed_at: float | None = None
    generation: int = Field(default=1, ge=1, le=1_000_000)
    source: str | None = Field(default=None, max_length=4096)
    job_folder: bool = False
    job_id: str | None = None
    priority: int = Field(default=0, ge=-10, le=10)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None and (why := relative_problem(v)):
            raise ValueError(f"source {why}")
        if v is not None and len(PurePosixPath(v).parts) > 2:
            raise ValueError("source is deeper than a job folder's manifest")
        return v

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str | None) -> str | None:
        if v is not None and (why := job_id_problem(v, answers=True)):
            raise ValueError(f"job_id {why}")
        return v


def read_owner(cdir: Path) -> dict[str, Any] | None:
    """The claim's owner.json (instance, generation, job_id once known), checked against
    OwnerRecord; None when there is none, or it is not one (logged once)."""
    path = cdir / OWNER_FILE
    try:
        return parse_owner(path)
    except Refused as e:
        if e.code != "unreadable" or lstat(path) is not None:
            NOTED.once(path, f"{e.why}; the claim is set aside")
        return None
    except ValueError as e:  # pydantic's ValidationError is one
        NOTED.once(path, f"is not a claim's owner record ({str(e).splitlines()[0][:200]})")
        return None


def parse_owner(path: Path) -> dict[str, Any]:
    """An owner.json (or its draft) as OwnerRecord checks it; Refused or ValueError if not one."""
    return OwnerRecord.model_validate(read_json(path, OWNER_MAX_BYTES)).model_dump(
        exclude_none=True
    )


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
    if not manifest or "source" not in owner or relative_problem(owner["source"]):
        return None
    src = inbox.joinpath(*PurePosixPath(owner["source"]).parts)
    cand = Candidate(src, src.parent, bool(owner.get("job_folder")))
    return Claim(cdir.name, cdir, cand)


CLAIM_NAME = re.compile(r"\d{8}T\d{6}-[0-9a-f]{10}(\.g[1-9]\d{0,6})?")
OWNER_MAX_BYTES = 64 * 1024


def claim_folders(inbox: Path) -> list[Path]:
    """Every claim folder under the inbox's .dropbox/claimed/, in name (claim time) order:
    real folders named as daemons name them; anything else there is logged once, left alone."""
    out = []
    try:
        with os.scandir(claims_root(inbox)) as it:
            entries = [e for _, e in zip(range(MAX_INBOX_ENTRIES), it, strict=False)]
    except OSError:
        return []
    for e in entries:
        path = Path(e.path)
        if not CLAIM_NAME.fullmatch(e.name):
            NOTED.once(path, "is not a claim folder (its name is not one a daemon gives)")
        elif not e.is_dir(follow_symlinks=False):
            NOTED.once(path, "is not a folder (a link?), so it is no claim")
        else:
            out.append(path)
    return sorted(out)


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
            return parse_owner(draft)
        except (Refused, ValueError):
            continue
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


QUARANTINE_DIR = "quarantine"
REASON_FILE = "reason.txt"


def quarantine(inbox: Path, cl: Claim, reason: str) -> Path:
    """Set a claim that can be neither taken nor answered aside, whole, in
    <inbox>/.dropbox/quarantine/, with reason.txt; nothing in it is deleted."""
    root = inbox / DROPBOX_DIR / QUARANTINE_DIR
    make_private_dir(root)
    dest = root / cl.dir.name
    os.rename(cl.dir, dest)
    atomic_write_json(
        dest / REASON_FILE,
        {"claim": cl.dir.name, "source": shown(str(cl.candidate.manifest)), "reason": reason},
    )
    return dest


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
