"""The drop protocol, second half: claim folders under <inbox>/.dropbox/claimed/.

A settled drop (drops.py) is claimed by renaming its manifest into
<inbox>/.dropbox/claimed/<claim>/drop/, which on one file system succeeds for
exactly one of several daemons; its media are then moved beside it. From then on
nothing of the drop is deleted. The claim folder's owner.json names the instance
that holds it; a takeover renames the folder to its next generation (the fencing
token); a crash's leftovers (a draft, an empty claim) are discarded here, and a
claim that can be neither taken nor answered is set aside in quarantine/.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
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
    lstat,
    make_private_dir,
    move_file,
    read_json,
    remove_tree,
    writable_by_others,
)
from dropbox_daemon.drops import MAX_INBOX_ENTRIES, Candidate
from dropbox_daemon.manifest import is_manifest_name, job_id_problem
from dropbox_daemon.names import relative_problem
from dropbox_daemon.outbox import atomic_write_json

DROPBOX_DIR = ".dropbox"  # the daemons' own folder in an inbox
CLAIMED_DIR = "claimed"
QUARANTINE_DIR = "quarantine"  # claims set aside (recovery.quarantine)
DROP_SUBDIR = "drop"
OWNER_FILE = "owner.json"


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
    """Rename the manifest into a fresh claim folder; None when another daemon was first,
    OSError (and no claim folder left) where the claim folder or the rename cannot be made.

    The folder is made whole (drop/ and owner.json) under a draft name and renamed to its
    claim name in one step, so that every claim folder names its owner: a crash while it
    was being made leaves a draft (recovery.discard_drafts), never a claim no one can be named for."""
    cid = new_claim_id(now)
    root = claims_root(inbox)
    make_private_dir(root)  # removed by someone while the daemon ran?
    draft = root / f"{DRAFT_PREFIX}{cid}.{instance}"
    draft.mkdir(mode=DIR_MODE)
    owner = {
        "instance": instance,
        "host": host or socket.gethostname(),
        "pid": os.getpid(),
        "claimed_at": now,
        "generation": 1,
        "source": str(c.manifest.relative_to(inbox)),
        "job_folder": c.job_folder,
    }
    cdir = root / cid
    try:
        (draft / DROP_SUBDIR).mkdir(mode=DIR_MODE)
        atomic_write_json(draft / OWNER_FILE, owner)
        os.rename(draft, cdir)
    except OSError:
        try:  # a full disk, say: the caller logs it and retries; the draft holds no drop file
            remove_tree(draft)
        except OSError:
            pass  # left for recovery.discard_drafts
        raise
    cl = Claim(cid, cdir, c)
    try:
        os.rename(c.manifest, cl.manifest)
    except OSError as e:  # another daemon was first, or the manifest may not be moved (its
        # folder is not the daemon's to write): undone as a draft, so that a kill in between
        # leaves a draft or a whole empty claim (its owner's start-up discards either),
        # never a claim folder without its owner.json, and no empty claim for each try
        os.rename(cdir, draft)
        remove_tree(draft)
        if isinstance(e, FileNotFoundError):
            return None
        raise
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
DRAFT_PREFIX = ".draft-"  # a claim folder being made: .draft-<claim id>.<instance>
DRAFT_NAME = re.compile(r"\.draft-(\d{8}T\d{6}-[0-9a-f]{10})\.([A-Za-z0-9._:@-]{1,128})")
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
        if DRAFT_NAME.fullmatch(e.name):
            continue  # a claim being made (or a crash's draft of one: discard_drafts)
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
