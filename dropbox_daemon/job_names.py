"""The ids of jobs whose drop names none: from the drop's name, transliterated to ASCII; a
name reused after its job ended is a new job, `<name>.2`, `<name>.3`; and whether an outbox
folder is this drop's own, reserved by an intake that failed before the job was recorded."""

from __future__ import annotations

import re

from dropbox_daemon.claims import Claim, note_job, read_owner
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.store import Store

MAX_NAME_REUSES = 10_000  # <name>.2, <name>.3, ... for one drop name


def name_id(stem: str) -> str:
    """A job id from a drop's name (its folder's, or a loose manifest's stem) for a drop
    that names none: transliterated to ASCII (`Démo été 01` -> `Demo-ete-01`, `日本語` ->
    `RiBenYu`), anything else outside [A-Za-z0-9_-] made `-` (a `.` too: `.<n>` counts the
    name's reuses, so no name can look like a reuse of another)."""
    from anyascii import anyascii

    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", anyascii(stem)).strip("-_")[:48].strip("-_")
    return safe or "job"


def id_for(
    cl: Claim, recovered: bool, outbox: Outbox, store: Store, *, rerun: bool = True
) -> tuple[str, bool]:
    """(job id, reserved now) for a drop that names no job_id: its name's. The last job
    of that name, if it was rejected, is this drop's again (not reserved: the caller runs
    or rejects it once more); a name whose last job ended otherwise, or still runs,
    starts a new job, `<name>.2`, `<name>.3`: never a duplicate, since nothing promised
    idempotency. The id is noted in the claim before its folder is made, so a takeover
    after a crash in between finds the same one."""
    noted = (read_owner(cl.dir) or {}).get("job_id") if recovered else None
    if noted:
        return noted, outbox.reserve(noted) or reserved_earlier(outbox, store, noted)
    base = name_id(cl.candidate.stem)
    last = None
    for n in range(1, MAX_NAME_REUSES):
        job_id = base if n == 1 else f"{base}.{n}"
        if outbox.job_dir(job_id).exists() or store.exists(job_id):
            last = job_id
            continue
        if last is not None and rerun:
            prior = store.get(last)
            if prior is not None and prior.state == "rejected":
                return last, False
        note_job(cl.dir, job_id)
        if outbox.reserve(job_id):
            return job_id, True
        last = job_id  # made by a peer just now: a new job of its own
    raise RuntimeError(f"more than {MAX_NAME_REUSES} jobs named {base}")


def reserved_earlier(outbox: Outbox, store: Store, job_id: str) -> bool:
    """Its outbox folder is this drop's own, reserved by an intake that failed before the
    job was recorded (a full disk, the database away)."""
    task = outbox.read_task(job_id)
    return not store.exists(job_id) and (task is None or task.get("state") == "received")
