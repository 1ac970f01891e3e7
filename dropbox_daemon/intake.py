"""A claimed drop becomes a Job, once: queued, duplicate, or rejected with its files kept.

Idempotency rests on outbox/<job_id>/ being created exclusively (mkdir), which
also holds across hosts that share the outbox.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from loguru import logger

from dropbox_daemon.boundary import MAX_DEPTH, MAX_ENTRIES, Refused, walk
from dropbox_daemon.claims import Claim, move_job_folder, move_named, note_job
from dropbox_daemon.config import Config, InboxConfig
from dropbox_daemon.errors import IllegalTransition, RejectedDrop
from dropbox_daemon.handover import follow_claim, taken_meanwhile
from dropbox_daemon.job_names import id_for, reserved_earlier
from dropbox_daemon.manifest import Manifest, parse, salvage_job_id
from dropbox_daemon.names import shown
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.recovery import same_claim
from dropbox_daemon.render import engines
from dropbox_daemon.store import Job, JobExists, Store

MAX_DUPLICATES = 10_000


def raw_media_names(path: Path, cfg: Config) -> list[str]:
    from dropbox_daemon.manifest import read_raw

    try:
        data = read_raw(path, cfg.limits)
    except RejectedDrop:
        return []
    names = [data.get("audio"), data.get("template")]
    if isinstance(data.get("output"), dict):
        names.append(data["output"].get("watermark"))
    return [n for n in names if isinstance(n, str)]


def _raw_callback_url(path: Path, cfg: Config) -> str | None:
    """The callback_url of a manifest that failed validation, so its sender still hears back."""
    from dropbox_daemon.manifest import read_raw

    try:
        value = read_raw(path, cfg.limits).get("callback_url")
    except RejectedDrop:
        return None
    ok = isinstance(value, str) and re.match(r"^https?://[^\s/]+", value) and len(value) <= 2048
    return value if ok else None


def check_tree(folder: Path) -> None:
    """RejectedDrop where a job folder is too deep or too wide to be a drop."""
    try:
        walk(folder)
    except Refused as e:
        if e.code == "not_a_folder":
            return  # moved into the claim already, or gone: the manifest check answers
        raise RejectedDrop(
            f"the job folder {e.why}",
            code=e.code,
            field="(folder)",
            hint=f"a job folder holds a manifest and its media: at most {MAX_DEPTH} levels "
            f"and {MAX_ENTRIES} entries",
        ) from e


def with_leftovers(err: RejectedDrop, left: dict[str, str], not_copied: list[str]) -> dict:
    """error.json of a rejection, naming what of the drop stayed in the inbox (and why) and
    what input/ holds no copy of."""
    out = err.to_dict()
    if left:
        out["left_in_inbox"] = {shown(k): v for k, v in left.items()}
    if not_copied:
        out["not_copied"] = not_copied
    return out


class Intake:
    """Turns claims into jobs in the store."""

    def __init__(
        self, cfg: Config, store: Store, outbox: Outbox, *, own_store: bool = True
    ) -> None:
        """`own_store`: the store holds this daemon's jobs only (a job taken over is recorded
        anew over what it held of it); False: a farm's database, one row per job."""
        self.cfg, self.store, self.outbox, self.own_store = cfg, store, outbox, own_store
        self.config_hash = cfg.config_hash()

    def ingest(self, inbox: InboxConfig, cl: Claim, *, recovered: bool = False) -> Job:
        """Validate a claimed drop and record it: queued, duplicate or rejected."""
        if recovered:
            # a crash may have stopped the move half way: finish it, then read from the claim
            self.move_media(cl, raw_media_names(cl.manifest, self.cfg))
        base = cl.drop_dir if recovered else cl.candidate.base_dir
        root = cl.drop_dir if recovered else inbox.path
        try:
            if cl.candidate.job_folder:
                check_tree(cl.drop_dir if recovered else cl.candidate.base_dir)
            manifest, _media = parse(
                cl.manifest, base, root, self.cfg.limits, cl.candidate.manifest
            )
        except RejectedDrop as e:
            return self.reject(inbox, cl, e, recovered=recovered)
        if not recovered:
            left = self.move_media(cl, manifest.media().values())
            if left:  # swapped or changed between the check and the move
                field = next(f for f, v in manifest.media().items() if v in left)
                name = manifest.media()[field]
                err = RejectedDrop(
                    f"{field}: {name!r} {left[name]}",
                    code="file_changed",
                    field=field,
                    hint="drop the files again, and do not change them once the manifest is in",
                )
                return self.reject(inbox, cl, err, recovered=recovered)
        if manifest.job_id:
            job_id = manifest.job_id
            # a recovered intake may find the outbox folder it reserved itself before failing
            fresh = self.outbox.reserve(job_id) or (
                recovered and reserved_earlier(self.outbox, self.store, job_id)
            )
        else:
            job_id, fresh = id_for(cl, recovered, self.outbox, self.store)
        if fresh:
            note_job(cl.dir, job_id, manifest.priority)
            return self._queue_new(inbox, cl, manifest, job_id)
        return self._existing(inbox, cl, manifest, job_id)

    def _renamed(self, inbox: InboxConfig, cl: Claim, m: Manifest) -> Job:
        """A drop without a job_id whose name's id turned out taken (a farm daemon with its
        own outbox recorded it just now): the next id of its name; never a duplicate."""
        job_id, _ = id_for(cl, False, self.outbox, self.store, rerun=False)
        note_job(cl.dir, job_id, m.priority)
        return self._queue_new(inbox, cl, m, job_id)

    def reject_untakeable(self, inbox: InboxConfig, cl: Claim, why: str, tries: int) -> Job:
        """Answer a claim whose intake kept failing: rejected `intake_failed`, with why."""
        err = RejectedDrop(
            f"the drop could not be taken in ({tries} tries): {why}",
            code="intake_failed",
            field="(drop)",
            hint="the daemon's log names the claim and the error; fix the drop (input/ holds "
            "it) and drop it again",
        )
        return self.reject(inbox, cl, err, recovered=True)

    def move_media(self, cl: Claim, names) -> dict[str, str]:  # noqa: ANN001
        """Move the drop's files beside its claimed manifest (what is already there stays);
        the names a loose manifest gives that stayed where they were, with why."""
        if cl.candidate.job_folder:
            move_job_folder(cl)
            return {}
        return move_named(cl, list(names))[1]

    def base_job(self, inbox: InboxConfig, cl: Claim, job_id: str, m: Manifest | None) -> Job:
        return Job(
            job_id=job_id,
            inbox=inbox.name,
            max_attempts=self.cfg.daemon.max_attempts,
            host=self.cfg.daemon.host,
            instance=self.cfg.instance_id,
            config_hash=self.config_hash,
            claim_dir=str(cl.dir),
            manifest_name=cl.candidate.manifest.name,
            priority=m.priority if m else 0,
            engine=engines.resolve(m.engine, inbox.engine, self.cfg) if m else None,
            callback_url=m.callback_url if m else None,
            meta=m.meta if m else {},
            manifest=m.model_dump(mode="json") if m else None,
        )

    def _queue_new(self, inbox: InboxConfig, cl: Claim, m: Manifest, job_id: str) -> Job:
        try:  # from the manifest's last write (a rename keeps it) to now
            pickup = {"pickup": round(max(0.0, time.time() - cl.manifest.lstat().st_mtime), 4)}
        except OSError:
            pickup = {}
        try:
            job = self.store.create(
                self.base_job(inbox, cl, job_id, m).model_copy(update={"timings": pickup}),
                detail=f"drop {cl.candidate.manifest.name!r} in inbox {inbox.name} "
                f"(claim {cl.claim_id})",
            )
        except JobExists:
            # the farm's database has this id (its outbox folder was gone): not run again
            return self._existing(inbox, cl, m, job_id)
        try:
            return self.store.transition(
                job.job_id,
                "queued",
                detail=f"engine {job.engine}, priority {job.priority}",
                fence=job.generation,
            )
        except IllegalTransition:  # taken over during this intake?
            why = f"claim {cl.claim_id} changed hands during intake"
            taken = taken_meanwhile(self.store, cl, job_id, self.cfg.instance_id, why)
            if taken is None:
                raise
            return taken

    def _existing(self, inbox: InboxConfig, cl: Claim, m: Manifest, job_id: str) -> Job:
        prior = self.store.get(job_id)
        if prior is not None and same_claim(prior.claim_dir, cl.dir):
            # the same drop, recorded by a peer: not a duplicate of itself
            why = f"claim {cl.claim_id} changed hands during intake"
            return follow_claim(self.store, prior, cl, self.cfg.instance_id, why)
        rerun = (
            prior is not None
            and prior.terminal
            and prior.state != "duplicate"
            and (m.replace or prior.state == "rejected")
        )
        if prior is not None and rerun:
            why = "replace = true" if m.replace else "a new drop after a rejection"
            self.outbox.clear_previous_run(job_id)
            fresh = self.base_job(inbox, cl, job_id, m)
            return self.store.transition(
                job_id,
                "queued",
                detail=f"runs again ({why}); claim {cl.claim_id}",
                trace_id=uuid.uuid4().hex,
                attempts=0,
                error=None,
                output=None,
                inputs=[],
                timings={},
                started_at=None,
                finished_at=None,
                claim_dir=fresh.claim_dir,
                manifest=fresh.manifest,
                manifest_name=fresh.manifest_name,
                engine=fresh.engine,
                priority=fresh.priority,
                meta=fresh.meta,
                callback_url=fresh.callback_url,
                config_hash=self.config_hash,
                stage=None,
            )
        if not m.job_id:
            return self._renamed(inbox, cl, m)
        if prior is None and m.replace:
            reason = (
                "its outbox folder exists but this daemon has no record of it (another host's job?)"
            )
        elif prior is not None and m.replace:
            reason = f"it is still {prior.state}; replace applies once it has ended"
        else:
            reason = (
                f"job {job_id} already exists ({prior.state if prior else 'outbox folder present'})"
            )
        return self._duplicate(inbox, cl, m, job_id, reason)

    def _duplicate(
        self, inbox: InboxConfig, cl: Claim, m: Manifest, job_id: str, reason: str
    ) -> Job:
        for n in range(1, MAX_DUPLICATES):
            dup_id = f"{job_id}.dup-{n}"
            if self.outbox.reserve(dup_id):
                break
        else:
            raise RuntimeError(f"more than {MAX_DUPLICATES} duplicates of {job_id}")
        note_job(cl.dir, dup_id)
        job = self.base_job(inbox, cl, dup_id, m).model_copy(update={"duplicate_of": job_id})
        self.store.create(
            job, detail=f"drop {cl.candidate.manifest.name!r} repeats job_id {job_id}"
        )
        self.outbox.save_inputs(dup_id, cl.drop_dir)
        logger.info("inbox {}: drop repeats job {}; answered as {}", inbox.name, job_id, dup_id)
        return self.store.transition(
            dup_id,
            "duplicate",
            detail=f"not run again: {reason}; add replace = true to run it again",
        )

    def reject(self, inbox: InboxConfig, cl: Claim, err: RejectedDrop, *, recovered: bool) -> Job:
        # only the files that pass the same checks as a valid drop's move; the rest stay
        left = self.move_media(cl, raw_media_names(cl.manifest, self.cfg))
        job_id = salvage_job_id(cl.manifest, self.cfg.limits)
        if job_id is not None:
            reserved = self.outbox.reserve(job_id) or (
                recovered and reserved_earlier(self.outbox, self.store, job_id)
            )
        else:
            job_id, reserved = id_for(cl, recovered, self.outbox, self.store)
        if not reserved:
            prior = self.store.get(job_id)
            if prior is not None and prior.state == "rejected":
                # a re-drop that is still wrong: answer in the same folder
                note_job(cl.dir, job_id)
                self.outbox.clear_previous_run(job_id)
                error = with_leftovers(err, left, self.outbox.save_inputs(job_id, cl.drop_dir))
                self.outbox.write_error(job_id, error)
                return self.store.update(  # type: ignore[return-value]
                    job_id,
                    claim_dir=str(cl.dir),
                    error=error,
                    finished_at=time.time(),
                    log=f"rejected again: {err.message}",
                )
            # the named id is another job's: this drop is a new job of its name
            job_id, _ = id_for(cl, False, self.outbox, self.store, rerun=False)
        note_job(cl.dir, job_id)  # a peer taking the claim over sees it was answered
        job = self.store.create(
            self.base_job(inbox, cl, job_id, None).model_copy(
                update={"callback_url": _raw_callback_url(cl.manifest, self.cfg)}
            ),
            detail=f"drop {cl.candidate.manifest.name!r} in inbox {inbox.name} (claim {cl.claim_id})",
        )
        error = with_leftovers(err, left, self.outbox.save_inputs(job_id, cl.drop_dir))
        self.outbox.write_error(job_id, error)
        logger.bind(job_id=job_id, trace_id=job.trace_id).warning(
            "inbox {}: drop {} rejected ({}): {}", inbox.name, job_id, err.code, err.message
        )
        return self.store.transition(
            job_id, "rejected", detail=f"{err.code}: {err.message}", error=error
        )
