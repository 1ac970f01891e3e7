"""The one state machine: every change of a job's state goes through transition().

A change is checked against TRANSITIONS, recorded as an event (and as a callback
delivery where the job has a callback_url and the state ends it), and task.json and
log.txt are rewritten while the row's write lock is still held, so the outbox never
disagrees with the database about the order of changes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from loguru import logger

from dropbox_daemon.errors import IllegalTransition
from dropbox_daemon.outbox import CALLBACK_STATES
from dropbox_daemon.store.core import Handle, StoreCore
from dropbox_daemon.store.job import (
    RUNNING,
    TERMINAL,
    TRANSITIONS,
    Job,
    claim_held,
    pick_next,
)
from dropbox_daemon.store.statements import QUERIES as Q


class StateMachine(StoreCore):
    """Creating jobs, moving them between states, and the outbox writes that go with it."""

    def create(self, job: Job, detail: str = "", *, replace: bool = False) -> Job:
        """Insert a new job in state `received` and write its first task.json.

        JobExists when the job id is taken (unless `replace`: a takeover's own record).
        """
        now = time.time()
        with self.transaction() as c:
            seq = self._next_seq(c)
            job = job.model_copy(update={"seq": seq, "state": "received", "updated_at": now})
            if replace:
                self._upsert(c, job.to_row())
            else:
                self._insert_new(c, job.to_row())
            self._event(c, job, None, detail, now)
        return job

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        detail: str = "",
        expect: tuple[str, ...] | None = None,
        fence: int | None = None,
        **changes: Any,
    ) -> Job:
        """Move a job to state `to` (IllegalTransition if the machine forbids it), with field changes.

        fence: the generation the caller holds the job under; a newer one (a takeover,
        a later dispatch) refuses the change.
        """
        with self.transaction() as c:
            job = self._row(c, job_id, lock=True)
            if job is None:
                raise IllegalTransition(f"job {job_id!r} does not exist")
            if fence is not None and job.generation != fence:
                raise IllegalTransition(
                    f"job {job_id!r} is held under generation {job.generation} now "
                    f"(by {job.instance}), not {fence}: this write is refused"
                )
            if expect is not None and job.state not in expect:
                raise IllegalTransition(
                    f"job {job_id!r} is {job.state}, expected one of {', '.join(expect)}"
                )
            return self._apply(c, job, to, detail, changes)

    def _apply(self, c: Handle, job: Job, to: str, detail: str, changes: dict[str, Any]) -> Job:
        """The state change itself, inside the caller's transaction, the row locked."""
        now = time.time()
        if to not in TRANSITIONS[job.state]:
            raise IllegalTransition(f"job {job.job_id!r}: {job.state} -> {to} is not allowed")
        update: dict[str, Any] = {"state": to, "updated_at": now, **changes}
        if to in RUNNING:
            update.setdefault("stage", to)
        if to == "queued":
            update.setdefault("queued_at", now)
            update.setdefault("progress", 0.0)
            update.setdefault("cancel_requested", 0)
        if to == "preparing":
            update.setdefault("started_at", now)
        if to in TERMINAL:
            update.setdefault("finished_at", now)
            if to == "done":
                update.setdefault("progress", 1.0)
                update.setdefault("stage", "done")
        from_state = job.state
        job = job.model_copy(update=update)
        self._upsert(c, job.to_row())
        self._event(c, job, from_state, detail, now)
        return job

    def update(
        self, job_id: str, *, log: str | None = None, fence: int | None = None, **changes: Any
    ) -> Job | None:
        """Change fields that are not the state (progress, inputs, timings); rewrites task.json.

        None when the job is gone, or held under another generation than `fence`."""
        now = time.time()
        with self.transaction() as c:
            job = self._row(c, job_id, lock=True)
            if job is None or (fence is not None and job.generation != fence):
                return None
            job = job.model_copy(update={**changes, "updated_at": now})
            self._upsert(c, job.to_row())
            self._outbox_write(job, log, now)
        return job

    def forget(self, job_id: str) -> None:
        """Drop a job this instance no longer holds (taken over by a peer): its row and events."""
        with self.transaction() as c:
            c.execute(Q.delete_events_of_job, (job_id,))
            c.execute(Q.delete_job, (job_id,))

    # -- the queue --------------------------------------------------------------------
    def take_next(self, instance: str, last_served: dict[str, float], **changes: Any) -> Job | None:
        """The next queued job, moved to `preparing` for `instance`: highest priority, then
        the inbox served longest ago, then the oldest. None when nothing waits."""
        queued = self._query(Q.queued, (500,))
        job = pick_next(queued, last_served)
        if job is None:
            return None
        try:
            return self.transition(
                job.job_id,
                "preparing",
                expect=("queued",),
                **self._dispatch_changes(job, instance, changes),
            )
        except IllegalTransition:
            return None  # cancelled meanwhile

    @staticmethod
    def _dispatch_changes(job: Job, instance: str, changes: dict[str, Any]) -> dict[str, Any]:
        return {
            "attempts": job.attempts + 1,
            "generation": job.generation + 1,
            "instance": instance,
            "progress": 0.0,
            "detail": f"attempt {job.attempts + 1} of {job.max_attempts} on instance {instance}",
            **changes,
        }

    # -- what each change writes --------------------------------------------------------
    def _event(self, c: Handle, job: Job, from_state: str | None, detail: str, now: float) -> None:
        c.execute(
            Q.add_event,
            (job.job_id, now, from_state, job.state, detail, self.instance or None),
        )
        self._pending_changes.append((job, from_state))
        if job.callback_url and job.state in CALLBACK_STATES:
            body = json.dumps(job.record(), default=str)
            c.execute(Q.add_delivery, (job.job_id, job.trace_id, job.callback_url, body, now, now))
        arrow = f"{from_state} -> {job.state}" if from_state else job.state
        self._outbox_write(
            job, f"state {arrow}" + (f": {detail}" if detail else ""), now, once=True
        )

    def _outbox_write(self, job: Job, line: str | None, now: float, once: bool = False) -> None:
        """log.txt line and task.json; a full or failing outbox never blocks the database.

        What could not be written is rewritten by flush_outbox() once the outbox works again.
        A job whose claim was taken over by another instance is not written: it is theirs now.
        """
        if not claim_held(job):
            logger.bind(job_id=job.job_id, trace_id=job.trace_id).warning(
                "job {}: not writing its task.json/log.txt: its claim {} was taken over by "
                "another instance (this one was silent too long)",
                job.job_id,
                job.claim_dir,
            )
            return
        try:
            if line:
                self.outbox.log(job.job_id, job.trace_id, line, at=now, once=once)
            self.outbox.write_task(job.record())
            self.stale_outbox.discard(job.job_id)
        except OSError as e:
            if job.job_id not in self.stale_outbox:
                logger.bind(job_id=job.job_id, trace_id=job.trace_id).error(
                    "outbox: cannot write task.json/log.txt of job {} ({}); the database has the "
                    "truth and the file is rewritten once the outbox can be written again",
                    job.job_id,
                    e.strerror or e,
                )
            self.stale_outbox.add(job.job_id)

    def flush_outbox(self) -> int:
        """Rewrite the task.json of jobs whose last write failed; how many are still stale."""
        for job_id in list(self.stale_outbox):
            job = self.get(job_id)
            if job is None:
                self.stale_outbox.discard(job_id)
                continue
            try:
                self.outbox.write_task(job.record())
                self.outbox.log(
                    job.job_id,
                    job.trace_id,
                    "task.json rewritten: the outbox is writable again",
                    at=time.time(),
                )
                self.stale_outbox.discard(job_id)
            except OSError:
                break
        return len(self.stale_outbox)

    def log(self, job: Job, message: str) -> None:
        """A line in the job's log.txt that is not a state change (best effort on a full disk)."""
        if not claim_held(job):
            return
        try:
            self.outbox.log(job.job_id, job.trace_id, message, at=time.time())
        except OSError as e:
            logger.warning(
                "outbox: cannot append to log.txt of job {}: {}", job.job_id, e.strerror or e
            )
