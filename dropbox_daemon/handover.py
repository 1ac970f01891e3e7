"""When a drop's record and its claim folder disagree: a peer recorded the drop while its
claim changed hands (a slow daemon judged dead, a takeover). The newest claim folder wins,
and the record follows it under a new generation, which fences off the former holder."""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from dropbox_daemon.claims import Claim
from dropbox_daemon.errors import IllegalTransition
from dropbox_daemon.recovery import claim_generation, same_claim
from dropbox_daemon.store import RUNNING, Job, Store


def follow_claim(store: Store, prior: Job, cl: Claim, instance: str, why: str) -> Job:
    """`prior` records this very drop under another generation of its claim folder: a peer
    wrote it while the claim changed hands (a slow daemon judged dead, a takeover).

    The newest claim folder wins. This daemon's, when newer: the record follows it, else
    a record naming a folder that is gone sends the job round the farm for ever. Older:
    the drop is the other instance's now, and this daemon's intake of it ends.
    """
    log = logger.bind(job_id=prior.job_id, trace_id=prior.trace_id)
    for _ in range(5):  # each miss means the record moved on meanwhile: look again
        theirs = Path(prior.claim_dir or "").name
        if prior.terminal or claim_generation(cl.dir.name) <= claim_generation(theirs):
            if theirs != cl.dir.name:
                log.info(
                    "job {}: its claim {} is instance {}'s now; this daemon leaves it ({})",
                    prior.job_id,
                    theirs,
                    prior.instance,
                    prior.state,
                )
            return prior
        after = _take_record(store, prior, str(cl.dir), instance, why)
        if after is not None:
            log.warning(
                "job {}: recorded by instance {} while its claim was being taken over; the "
                "record now names claim {} of instance {} ({})",
                prior.job_id,
                prior.instance,
                cl.dir.name,
                instance,
                after.state,
            )
            return after
        prior = store.get(prior.job_id) or prior
    raise IllegalTransition(f"job {prior.job_id!r} kept changing while its claim was taken over")


def taken_meanwhile(store: Store, cl: Claim, job_id: str, instance: str, why: str) -> Job | None:
    """The job as it stands after follow_claim, where the database records `job_id` from
    another generation of this same claim; None where it does not (a different drop)."""
    prior = store.get(job_id)
    if prior is None or not same_claim(prior.claim_dir, cl.dir):
        return None
    return follow_claim(store, prior, cl, instance, why)


def _take_record(store: Store, prior: Job, claim_dir: str, instance: str, why: str) -> Job | None:
    """The record moved to `instance`'s claim folder under a new generation (which fences off
    the former holder's writes), changed only if it is still as read; a job the former holder
    had in intake or in a render is queued again, attempt kept. None: it changed meanwhile."""
    changes = {"claim_dir": claim_dir, "instance": instance, "generation": prior.generation + 1}
    if prior.state not in ("received", *RUNNING):
        note = f"{why}; the record follows the claim folder"
        return store.update(prior.job_id, log=note, fence=prior.generation, **changes)
    to, extra, detail = store.resume_plan(prior, why)
    try:
        if to == "done":
            prior = store.catch_up(prior, why, fence=prior.generation)
        return store.transition(
            prior.job_id,
            to,
            detail=f"{detail}; the record follows the claim folder",
            expect=(prior.state,),
            fence=prior.generation,
            **extra,
            **changes,
        )
    except IllegalTransition:
        return None
