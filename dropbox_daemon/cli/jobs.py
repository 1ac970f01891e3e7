"""The job commands: `jobs`, `show`, `logs`, `retry`, `cancel`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dropbox_daemon import config as config_mod
from dropbox_daemon.cli.output import job_of, say, store_of
from dropbox_daemon.errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError, IllegalTransition


def cmd_logs(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    path = cfg.daemon.outbox / args.job / "log.txt"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        raise CliError(
            f"no log for job {args.job!r} at {path}",
            EXIT_NOT_FOUND,
            "`dropbox-daemon jobs` lists the jobs this daemon knows",
        ) from None
    daemon_lines: list[str] = []
    logfile = cfg.daemon.state_dir / "logs" / "daemon.jsonl"
    if args.daemon:
        try:
            with open(logfile) as f:
                for line in f:
                    if args.job in line:
                        rec = json.loads(line)["record"]
                        daemon_lines.append(
                            f"{rec['time']['repr']} {rec['level']['name']} {rec['message']}"
                        )
        except (OSError, ValueError, KeyError):
            pass
    if args.json:
        data: dict[str, Any] = {"job_id": args.job, "log": text.splitlines()}
        if args.daemon:
            data["daemon_log"] = daemon_lines
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(text, end="")
    if args.daemon:
        print(f"--- daemon log lines of {args.job} ({logfile}) ---")
        print("\n".join(daemon_lines))
    return EXIT_OK


def _check_filters(args: argparse.Namespace, cfg: config_mod.Config, store: Any) -> None:
    """A filter value that names nothing is a typo, not an empty queue: a usage error that
    lists what exists (states by name; inboxes of the config or with jobs; instances of the
    farm or with jobs)."""
    from dropbox_daemon.coordination import instances_view
    from dropbox_daemon.store import STATES

    if args.state is not None and args.state not in STATES:
        raise CliError(
            f"--state {args.state!r} is not a job state",
            EXIT_USAGE,
            "states: " + ", ".join(STATES),
        )
    if args.inbox is not None:
        known = {i.name for i in cfg.inbox}
        if args.inbox not in known and not store.jobs(inbox=args.inbox, limit=1):
            raise CliError(
                f"--inbox {args.inbox!r} is neither configured nor has jobs",
                EXIT_USAGE,
                "inboxes: " + ", ".join(sorted(known)),
            )
    if args.instance is not None and args.instance != cfg.instance_id:
        known = {i["instance"] for i in instances_view(cfg, store)} | {cfg.instance_id}
        if args.instance not in known and not store.jobs(instance=args.instance, limit=1):
            raise CliError(
                f"--instance {args.instance!r} is not an instance of this farm and has no jobs",
                EXIT_USAGE,
                "instances: " + ", ".join(sorted(known)),
            )
    if args.limit < 1:
        raise CliError("--limit must be 1 or more", EXIT_USAGE)


def cmd_jobs(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """Every job of the share: the farm's database, or on a shared folder this daemon's
    jobs and its peers' (their task.json in the outbox)."""
    from dropbox_daemon.coordination import open_coordination

    store = store_of(cfg)
    _check_filters(args, cfg, store)
    farm = open_coordination(cfg, store)
    rows = farm.jobs(state=args.state, inbox=args.inbox, instance=args.instance, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    print(
        f"{'JOB':<32} {'STATE':<10} {'PROG':>5} {'ENGINE':<12} {'INBOX':<10} {'INSTANCE':<20} "
        f"{'TRY':>3}  CREATED"
    )
    for r in rows:
        print(
            f"{str(r['job_id'])[:32]:<32} {str(r.get('state')):<10} "
            f"{float(r.get('progress') or 0) * 100:4.0f}% {str(r.get('engine') or '-'):<12} "
            f"{str(r.get('inbox') or '-')[:10]:<10} {str(r.get('instance') or '-')[:20]:<20} "
            f"{int(r.get('attempts') or 0):>3}  {r.get('created_at') or '-'}"
        )
    if not rows:
        print("(no jobs)")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon.store import has_store

    folder = cfg.daemon.outbox / args.job
    try:
        rec = json.loads((folder / "task.json").read_text())
    except (OSError, ValueError) as e:
        job = store_of(cfg).get(args.job) if has_store(cfg) else None
        if job is None:
            raise CliError(
                f"no job {args.job!r} in {cfg.daemon.outbox}",
                EXIT_NOT_FOUND,
                "`dropbox-daemon jobs` lists the jobs this daemon knows",
            ) from None
        print(
            f"(task.json of {args.job} is unreadable: {e}; showing the database's record)",
            file=sys.stderr,
        )
        rec = job.record()
    try:
        log = (folder / "log.txt").read_text().splitlines()[-args.lines :]
    except OSError:
        log = []
    human = json.dumps(rec, indent=2) + "\n--- log.txt (last lines) ---\n" + "\n".join(log)
    say(args, human, {"task": rec, "log": log})
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    store = store_of(cfg)
    job = job_of(store, args.job)
    try:
        job = store.transition(
            job.job_id,
            "queued",
            expect=("failed", "cancelled"),
            # a new run: nothing of the earlier one's outcome stays in task.json
            attempts=0,
            error=None,
            output=None,
            started_at=None,
            finished_at=None,
            timings={},
            stage=None,
            progress=0.0,
            detail="retried by an operator",
        )
    except IllegalTransition as e:
        raise CliError(
            f"cannot retry {job.job_id}: {e.message}",
            hint="only failed or cancelled jobs are retried; a rejected one is fixed and "
            "dropped again",
        ) from None
    store.outbox.clear_previous_run(job.job_id)  # error.json and input/ of the failed run
    say(args, f"{job.job_id} queued again", job.record())
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon.store import RUNNING

    store = store_of(cfg)
    job = job_of(store, args.job)
    if job.state in ("queued", "received"):
        try:
            job = store.transition(
                job.job_id, "cancelled", expect=("queued",), detail="cancelled by an operator"
            )
            say(args, f"{job.job_id} cancelled", job.record())
            return EXIT_OK
        except IllegalTransition:
            job = store.get(args.job) or job  # it just started: cancel the running job
    if job.state in RUNNING:
        store.update(job.job_id, cancel_requested=1, log="cancel requested by an operator")
        say(
            args,
            f"{job.job_id}: cancel requested; the daemon stops it within seconds",
            {"job_id": job.job_id, "cancel_requested": True},
        )
        return EXIT_OK
    raise CliError(
        f"{job.job_id} is {job.state}: nothing to cancel",
        hint="only queued and running jobs are cancelled",
    )
