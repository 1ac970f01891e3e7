"""Taking a claim over: a job whose claim this daemon now holds (a dead peer's, taken over;
or its own, left by a crash) recorded here under its own job id, its attempts and trace
kept, its generation moved on; the peer's outbox folder is the job's, nothing there is
answered again."""

from __future__ import annotations

import uuid

from dropbox_daemon.claims import Claim
from dropbox_daemon.config import InboxConfig
from dropbox_daemon.errors import RejectedDrop
from dropbox_daemon.handover import taken_meanwhile
from dropbox_daemon.intake import Intake, raw_media_names
from dropbox_daemon.manifest import parse
from dropbox_daemon.store import RUNNING, TERMINAL, Job, JobExists


def adopt(intake: Intake, inbox: InboxConfig, cl: Claim, owner: dict, why: str) -> Job | None:
    """A job taken over from a dead peer: recorded here under its own job id, attempt kept.

    The peer's outbox folder is this job's; nothing there is re-answered. None when
    the job turned out to have ended (its claim stays for retention).
    """
    job_id = owner.get("job_id")
    task = intake.outbox.read_task(job_id) if job_id else None
    if job_id is None or task is None or task.get("state") == "received":
        return intake.ingest(inbox, cl, recovered=True)
    if task.get("state") in TERMINAL:
        return None
    intake.move_media(cl, raw_media_names(cl.manifest, intake.cfg))
    try:
        manifest, _media = parse(
            cl.manifest, cl.drop_dir, cl.drop_dir, intake.cfg.limits, cl.candidate.manifest
        )
    except RejectedDrop as e:
        return intake.reject(inbox, cl, e, recovered=True)
    was_running = task.get("state") in RUNNING
    attempts = int(task.get("attempts") or 0)
    job = intake.base_job(inbox, cl, job_id, manifest).model_copy(
        update={
            "trace_id": task.get("trace_id") or uuid.uuid4().hex,
            "attempts": attempts,
            "generation": int(task.get("generation") or 0) + 1,
        }
    )
    try:
        job = intake.store.create(job, detail=why, replace=intake.own_store)
    except JobExists:  # a peer recorded it after this daemon read the claim list
        taken = taken_meanwhile(intake.store, cl, job_id, intake.cfg.instance_id, why)
        if taken is None:
            raise
        return taken
    if was_running and attempts >= job.max_attempts:
        err = {
            "code": "interrupted",
            "stage": task.get("state"),
            "message": f"{why}; {attempts} of {job.max_attempts} attempts used",
            "hint": "look at the other instance's log for why it stopped; "
            "`dropbox-daemon retry` runs it again",
        }
        return intake.store.transition(job_id, "failed", error=err, detail=err["message"])
    return intake.store.transition(
        job_id,
        "queued",
        detail=f"was {task.get('state')} there (attempt {attempts} of {job.max_attempts})",
    )
