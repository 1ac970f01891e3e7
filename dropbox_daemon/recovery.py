"""Claims whose maker is gone: resumed, discarded, taken over or set aside.

A claim folder (claims.py) outlives the daemon that made it. What a crash leaves
(a draft, a claim with nothing moved in yet, one that never reached the store) is
found and discarded or resumed by its own instance's restart; a dead peer's
claim is taken over by renaming it to its next generation, the fencing token;
one that can be neither taken nor answered goes to .dropbox/quarantine/.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from dropbox_daemon.boundary import Refused, make_private_dir
from dropbox_daemon.claims import (
    DRAFT_NAME,
    DROP_SUBDIR,
    DROPBOX_DIR,
    OWNER_FILE,
    QUARANTINE_DIR,
    Claim,
    claim_folders,
    claim_from,
    claims_of,
    claims_root,
    owner_instance,
    parse_owner,
    read_owner,
)
from dropbox_daemon.drops import MAX_INBOX_ENTRIES
from dropbox_daemon.names import shown
from dropbox_daemon.outbox import atomic_write_json


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


def discard_drafts(inbox: Path, instance: str | None, min_age: float) -> list[Path]:
    """Remove the drafts of claim folders (see claim) that a crash left: those `instance`
    made, and any older than `min_age` seconds. A draft never holds a file of a drop (the
    manifest moves in only once it is a claim), so nothing of anyone's is lost; one that
    holds anything else is left alone. Call it with `instance` only while this instance
    makes no claim (at start-up). Returns what was removed."""
    out = []
    try:
        with os.scandir(claims_root(inbox)) as it:
            entries = [e for _, e in zip(range(MAX_INBOX_ENTRIES), it, strict=False)]
    except OSError:
        return out
    now = time.time()
    for e in entries:
        name = DRAFT_NAME.fullmatch(e.name)
        if name is None or not e.is_dir(follow_symlinks=False):
            continue
        draft = Path(e.path)
        try:
            if name[2] != instance and now - draft.lstat().st_mtime < min_age:
                continue
        except OSError:
            continue
        if discard_if_unfinished(draft, {}):
            out.append(draft)
    return out


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
