"""Where a job cut off by a stop goes: at start-up this daemon's interrupted jobs resume,
a published result counts as done, and a running job is re-queued or failed by its attempts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dropbox_daemon.errors import IllegalTransition
from dropbox_daemon.store.job import RUNNING, Job
from dropbox_daemon.store.machine import StateMachine
from dropbox_daemon.store.statements import QUERIES as Q


class Resume(StateMachine):
    """Recovery of interrupted jobs (start-up, and a farm's takeover through resume_plan)."""

    def recover_interrupted(self) -> list[Job]:
        """At start-up: this daemon's interrupted jobs resume (resume_plan says how)."""
        out = []
        if self.farm:
            interrupted = self._query(Q.interrupted_of_instance, (self.instance,))
        else:
            interrupted = self._query(Q.interrupted)
        for job in interrupted:
            if job.state == "received":
                why = "intake resumed after a restart"
            else:
                why = f"the daemon stopped during {job.state} (attempt {job.attempts})"
            to, changes, detail = self.resume_plan(job, why)
            if to == "done":  # recorded in the outbox, not in the database: straight there
                job = self.catch_up(job)
            try:
                out.append(
                    self.transition(
                        job.job_id,
                        to,
                        detail=detail,
                        expect=(job.state,),
                        fence=job.generation,
                        **changes,
                    )
                )
            except IllegalTransition:
                continue  # a farm peer took it over since the query: it is theirs now
        return out

    def resume_plan(self, job: Job, why: str) -> tuple[str, dict[str, Any], str]:
        """resume_plan, but a job whose result was published is done, not run again: its
        output recorded in the row before the move to done (a crash between that and the
        commit of done, which had already written log.txt's line), or task.json saying done
        under the same claim (a crash between the outbox write and the database's commit)."""
        if job.state not in RUNNING:
            return resume_plan(job, why)
        if job.output and self._published(job.job_id, job.output):
            return "done", {}, f"{why}; its result had been published: recorded as done"
        task = self.outbox.read_task(job.job_id)
        out = (task or {}).get("output") or {}
        if (
            task is not None
            and task.get("state") == "done"
            and task.get("claim") == (Path(job.claim_dir).name if job.claim_dir else None)
            and self._published(job.job_id, out)
        ):
            return (
                "done",
                {"output": out, "timings": task.get("timings") or job.timings},
                f"{why}; its result had been published: recorded as done",
            )
        return resume_plan(job, why)

    def _published(self, job_id: str, out: dict[str, Any]) -> bool:
        """The result `out` describes is in the outbox, whole."""
        if not out.get("name"):
            return False
        final = self.outbox.job_dir(job_id) / str(out["name"])
        return final.is_file() and final.stat().st_size == out.get("bytes")

    def catch_up(self, job: Job, why: str = "after a crash", fence: int | None = None) -> Job:
        """Walk a running job through the stages it missed, so that `done` is a legal move."""
        if job.state not in RUNNING:
            return job
        for stage in RUNNING[RUNNING.index(job.state) + 1 :]:
            job = self.transition(job.job_id, stage, fence=fence, detail=f"recorded late ({why})")
        return job


def resume_plan(job: Job, why: str) -> tuple[str, dict[str, Any], str]:
    """Where an interrupted job goes: (state, field changes, detail).

    A job still `received` was cut off during intake: queued if its manifest was
    valid (its files were moved before the row was written), else rejected. A
    running one goes back to queued (its attempt counted) or fails past max_attempts.
    """
    if job.state == "received":
        if job.manifest is not None and job.duplicate_of is None:
            return "queued", {}, why
        if job.duplicate_of:
            return "duplicate", {"error": None}, why
        err = job.error or {
            "code": "intake_interrupted",
            "message": "the daemon stopped while taking this drop",
            "hint": "drop it again; its files are in input/ and in the claim folder",
            "stage": "validate",
        }
        return "rejected", {"error": err}, why
    if job.attempts >= job.max_attempts:
        err = {
            "code": "interrupted",
            "message": f"{why}; {job.attempts} of {job.max_attempts} attempts used",
            "hint": "look at the daemon's log for why it stopped; `dropbox-daemon retry` runs it again",
            "stage": job.state,
        }
        return "failed", {"error": err}, why
    return "queued", {}, f"{why}; re-queued"
