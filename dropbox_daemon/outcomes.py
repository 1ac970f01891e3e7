"""How a job the worker had ends: its result recorded (kept and retried while the database
cannot take it), re-queued or failed when the worker died or was stopped, cancelled, or
forgotten when a farm peer took it over; error.json and input/ kept for a re-drop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from dropbox_daemon import claims
from dropbox_daemon.coordination import Coordination
from dropbox_daemon.outbox import Outbox
from dropbox_daemon.protocol import Result
from dropbox_daemon.store import HOST_ERRORS, RUNNING, Job, Store, StoreUnavailable


class Outcomes:
    """The daemon's record of how jobs end: in its store and outbox; `farm` says whether a
    job is still this daemon's. The job the worker has is the supervisor's to clear."""

    def __init__(self, store: Store, outbox: Outbox, farm: Coordination) -> None:
        self.store, self.outbox, self.farm = store, outbox, farm
        # results the store could not take yet: (job id, the result, its generation)
        self.unrecorded: list[tuple[str, Result, int]] = []

    def record(self, job_id: str, result: Result, generation: int, *, again: bool = False) -> None:
        """Record a job's outcome (its run's `generation`); if the store cannot take it now
        (the database away, a full disk), keep it and retry."""
        try:
            self.on_result(job_id, result, generation)
        except (*HOST_ERRORS, StoreUnavailable) as e:
            if not again:
                logger.bind(job_id=job_id).error(
                    "job {}: cannot record its result ({}); kept in memory and recorded once the "
                    "store can be written again",
                    job_id,
                    e,
                )
            self.unrecorded.append((job_id, result, generation))

    def retry_unrecorded(self) -> None:
        todo, self.unrecorded = self.unrecorded, []
        for job_id, result, generation in todo:
            self.record(job_id, result, generation, again=True)

    def on_result(self, job_id: str, result: Result, generation: int) -> None:
        outcome = result.outcome
        job = self.store.get(job_id)
        if job is None:
            return
        log = logger.bind(job_id=job_id, trace_id=job.trace_id)
        lost = self.farm.lost(job, generation)
        if lost:
            self.forget(job, f"its late result ({outcome}) is discarded: {lost}")
            return
        if outcome == "done":
            assert result.output is not None and result.timings is not None  # the protocol's
            total = result.timings.get("total", 0.0)
            self.store.catch_up(job, "store was unreachable", fence=generation)
            # the output first, committed on its own: the move to done writes log.txt's line
            # before its commit, and a crash between them must find the result recorded
            # (store/resume.py), not render it again and log `done` twice
            self.store.update(job_id, fence=generation, output=result.output)
            job = self.store.transition(
                job_id,
                "done",
                expect=RUNNING,
                output=result.output,
                timings={**job.timings, **result.timings},  # keeps the pickup time
                device=result.device,
                fence=generation,
                detail=f"{result.output.get('name')} in {total:.2f} s",
            )
            log.info("job {} done in {:.2f}s: {}", job_id, total, self.outbox.job_dir(job_id))
            return
        err = result.error or {}
        if outcome == "cancelled":
            self.finish_cancel(job_id, err["message"])
            return
        self.keep_for_redrop(job, err)
        to = "rejected" if outcome == "rejected" else "failed"
        self.store.transition(
            job_id, to, expect=RUNNING, error=err, detail=f"{err['code']}: {err['message']}"
        )
        log.warning(
            "job {} {} ({}): {} - {}", job_id, to, err["code"], err["message"], err.get("hint", "")
        )

    def requeue(
        self, job_id: str, why: str, *, count_attempt: bool, output: list[str] | None = None
    ) -> None:
        """Put a running job back in the queue, or fail it past max_attempts; `output`: the
        worker's last lines when it died or was killed, kept in log.txt and the error."""
        job = self.store.get(job_id)
        if job is None or job.state not in RUNNING:
            return
        for line in output or ():
            self.store.log(job, f"worker output: {line}")
        self.discard_partials(job_id)
        attempts = job.attempts if count_attempt else max(0, job.attempts - 1)
        if count_attempt and attempts >= job.max_attempts:
            err = {
                "code": "worker_failed",
                "stage": job.state,
                "message": f"{why} (attempt {attempts} of {job.max_attempts})",
                "hint": "look at the daemon's log around this time; `dropbox-daemon retry` runs it again",
            }
            if output:
                err["worker_output"] = output
            self.keep_for_redrop(job, err)
            self.store.transition(job_id, "failed", error=err, detail=err["message"])
        else:
            self.store.transition(job_id, "queued", attempts=attempts, detail=f"{why}; re-queued")

    def keep_for_redrop(self, job: Job, err: dict[str, Any]) -> None:
        """error.json and input/ in the outbox; on a full outbox the drop stays in its claim folder."""
        claim = Path(job.claim_dir or "") / claims.DROP_SUBDIR
        try:
            self.outbox.write_error(job.job_id, err)
            self.outbox.save_inputs(job.job_id, claim)
        except OSError as e:
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).error(
                "job {}: cannot write error.json/input/ to the outbox ({}); the drop's files stay in {}",
                job.job_id,
                e.strerror or e,
                claim,
            )

    def finish_cancel(self, job_id: str, why: str) -> None:
        job = self.store.get(job_id)
        if job is None or job.state not in RUNNING:
            return
        self.store.transition(job_id, "cancelled", detail=why, cancel_requested=0)
        self.discard_partials(job_id)

    def discard_partials(self, job_id: str) -> None:
        """Remove the half-written result of a job whose render was stopped."""
        for leftover in self.outbox.job_dir(job_id).glob(".*.partial"):
            leftover.unlink(missing_ok=True)

    def forget(self, job: Job, why: str) -> None:
        logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
            "job {}: {}; this daemon drops it and writes nothing more for it", job.job_id, why
        )
        self.farm.forget(job)
