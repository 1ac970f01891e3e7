"""Command line: argument parsing and printing only; the work is in the modules it calls."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from dropbox_daemon import __version__
from dropbox_daemon import config as config_mod
from dropbox_daemon.errors import (
    EXIT_CONFIG,
    EXIT_DUPLICATE,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    ConfigError,
    IllegalTransition,
)

EXIT_NAMES = {
    EXIT_OK: "ok",
    EXIT_FAILURE: "failure",
    EXIT_USAGE: "usage",
    EXIT_CONFIG: "config",
    EXIT_NOT_FOUND: "not_found",
    EXIT_TIMEOUT: "timeout",
    EXIT_DUPLICATE: "duplicate",
}


def _error(as_json: bool, message: str, exit_code: int, hint: str = "") -> int:
    if as_json:
        name = EXIT_NAMES.get(exit_code, "failure")
        body = {"message": message, "hint": hint, "exit_code": exit_code, "exit": name}
        print(json.dumps({"error": body}, indent=2))
    else:
        print(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
    return exit_code


def _out(args: argparse.Namespace, human: str, data: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human)


def _store(cfg: config_mod.Config):  # noqa: ANN202
    """The jobs database, never created here: a command run before the daemon's first start
    (or with the wrong --config, or as another user) must not make its state folder."""
    from dropbox_daemon.outbox import Outbox
    from dropbox_daemon.store import has_store, open_store

    if not has_store(cfg):
        raise CliError(
            f"no jobs database at {cfg.db_path}: no daemon has run with this config yet",
            EXIT_NOT_FOUND,
            "start it (dropbox-daemon run, or systemctl start dropbox-daemon), or pass the "
            "config it runs with (--config)",
        )
    return open_store(cfg, Outbox(cfg.daemon.outbox))


# -- commands ------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import faulthandler
    import signal

    from dropbox_daemon import logs
    from dropbox_daemon.daemon import run_daemon

    logs.setup(cfg)
    # a crash in native code leaves every thread's stack on stderr (the journal), and
    # `kill -USR2 <pid>` prints them without stopping the daemon: what a stuck daemon is doing
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    return run_daemon(cfg)


def cmd_submit(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon import client

    inbox = cfg.inbox_by_name(args.inbox) if args.inbox else cfg.inbox[0]
    fields: dict[str, Any] = {}
    if args.engine:
        fields["engine"] = args.engine
    if args.priority is not None:
        fields["priority"] = args.priority
    if args.replace:
        fields["replace"] = True
    handle = client.submit(
        inbox.path,
        args.audio,
        args.template,
        outbox=cfg.daemon.outbox,
        job_id=args.job_id,
        **fields,
    )
    earlier = handle.earlier
    will = "run"
    note = ""
    if (
        earlier is not None
        and not (args.replace and earlier.get("state") in client.TERMINAL)
        and earlier.get("state") != "rejected"
    ):
        will = "duplicate"
        note = (
            f"; job {handle.job_id} already exists ({earlier.get('state')}), so this drop is "
            f"answered as a duplicate in {handle.job_id}.dup-<n> and not run"
            + ("" if args.replace else " (--replace runs it again once it has ended)")
        )
    if not args.wait:
        _out(
            args,
            f"submitted {handle.job_id} to inbox {inbox.name}; results in {handle.folder}{note}",
            {
                "job_id": handle.job_id,
                "outbox": str(handle.folder),
                "expect": will,
                "earlier_state": earlier.get("state") if earlier else None,
            },
        )
        return EXIT_OK
    return _wait(args, handle)


def _wait(args: argparse.Namespace, handle: Any) -> int:
    from dropbox_daemon.client import Duplicate, JobFailed

    last = [""]

    def progress(rec: dict[str, Any]) -> None:
        line = f"{rec['job_id']}: {rec['state']} {rec.get('progress', 0) * 100:5.1f}%"
        if line != last[0] and not args.json:
            print(line, file=sys.stderr, flush=True)
            last[0] = line

    try:
        rec = handle.wait(timeout=args.timeout, on_progress=progress)
    except Duplicate as e:
        before = e.earlier or {}
        out = before.get("output") or {}
        result = handle.outbox / handle.job_id / out["name"] if out.get("name") else None
        earlier = (
            f"; its earlier result: {result}" if result and before.get("state") == "done" else ""
        )
        _out(
            args,
            f"duplicate: job {handle.job_id} already exists ({before.get('state', 'unknown')}), so "
            f"this drop was NOT run: it was answered as {e.answer_id} "
            f"({handle.outbox / e.answer_id}){earlier}\n"
            "hint: --replace runs the job again once it has ended; a new --job-id runs a new job",
            {
                **e.record,
                "answer": "duplicate",
                "answer_folder": str(handle.outbox / e.answer_id),
                "earlier": before,
                "earlier_result": str(result) if result else None,
            },
        )
        return EXIT_OK if args.duplicate_ok else EXIT_DUPLICATE
    except JobFailed as e:
        err = e.error or {}
        _out(
            args,
            f"job {handle.job_id} {e.record['state']}: {err.get('message', '')}\n"
            f"hint: {err.get('hint', '')}\nfolder: {handle.folder}",
            e.record,
        )
        return EXIT_FAILURE
    except TimeoutError as e:
        _out(args, str(e), {"job_id": handle.job_id, "error": str(e)})
        return EXIT_TIMEOUT
    result = handle.folder / rec["output"]["name"]
    _out(
        args,
        f"done: {result} ({rec['output']['duration']:.2f} s, "
        f"{rec['output']['width']}x{rec['output']['height']})",
        rec,
    )
    return EXIT_OK


def _daemon_pid(cfg: config_mod.Config) -> int | None:
    from dropbox_daemon.pidfile import read_pid

    return read_pid(cfg)


def _read_beat(cfg: config_mod.Config) -> dict[str, Any] | None:
    try:
        beat = json.loads((cfg.daemon_dir / "health.json").read_text())
        return beat if isinstance(beat, dict) and "written_at" in beat else None
    except (OSError, ValueError):
        return None


def daemon_state(
    pid: int | None, beat: dict[str, Any] | None, heartbeat_seconds: float, now: float
) -> dict[str, Any]:
    """What the daemon is doing, from its pid file and its last health record, said once:
    phase (starting, running, draining, stopped, killed, hung), whether it is healthy, and
    a line for a person. The record counts only when it is this daemon's (its pid)."""
    import datetime as dt

    age = None
    if beat is not None:
        written = dt.datetime.fromisoformat(beat["written_at"].replace("Z", "+00:00"))
        age = now - written.timestamp()
    stale = age is not None and age > 3 * heartbeat_seconds + 5
    status = beat.get("status") if beat else None
    ours = beat is not None and pid is not None and beat.get("pid") == pid
    if pid is None:
        if beat is None:
            return {
                "phase": "stopped",
                "healthy": False,
                "line": "NOT running (never started here)",
            }
        if status == "stopped":
            why = "; ".join(beat.get("reasons", []))
            return {"phase": "stopped", "healthy": False, "line": f"NOT running: {why}"}
        return {
            "phase": "killed",
            "healthy": False,
            "line": f"NOT running, and it did not stop cleanly: its last heartbeat ({age:.0f} s "
            f"ago) said {status}; it was killed or crashed: see its log (journalctl -u "
            "dropbox-daemon)",
        }
    if not ours:
        return {
            "phase": "starting",
            "healthy": False,
            "line": f"starting (pid {pid}): no heartbeat from this run yet",
        }
    if stale:
        return {
            "phase": "hung",
            "healthy": False,
            "line": f"running (pid {pid}) but its heartbeat is {age:.0f} s old: the daemon is "
            "hung (kill -USR2 prints its threads' stacks to its log)",
        }
    phase = beat.get("phase") or "running"
    healthy = status in ("ok", "degraded", "stopping")
    words = {
        "starting": "starting (loading the worker's models)",
        "running": "running",
        "draining": "STOPPING (draining: no new job starts)",
        "stopped": "stopping",
    }
    verdict = {
        "ok": "healthy",
        "degraded": "working, degraded",
        "failing": "NOT healthy",
        "stopping": "stopping",
    }.get(status or "", str(status))
    return {
        "phase": phase,
        "healthy": healthy,
        "line": f"{words.get(phase, phase)} (pid {pid}); health: {verdict} ({status}); heartbeat "
        "written "
        f"{age:.0f} s ago",
    }


def cmd_status(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import time

    from dropbox_daemon.coordination import summary
    from dropbox_daemon.store import has_store, is_farm

    pid = _daemon_pid(cfg)
    store = _store(cfg) if has_store(cfg) else None
    farm, counts = summary(cfg, store)  # the share's instances and jobs, in either way
    if store is not None:
        store.close()
    beat = _read_beat(cfg)
    state = daemon_state(pid, beat, cfg.health.heartbeat_seconds, time.time())
    running = state["phase"] in ("starting", "running", "draining", "hung")
    lines = [f"dropbox-daemon {__version__}: {state['line']}"]
    if beat is not None and running and state["phase"] != "hung" and beat.get("pid") == pid:
        lines += [f"  - {r}" for r in beat.get("reasons", [])]
        w = beat.get("worker", {})
        mem = f", {w['memory_bytes'] >> 20} MiB" if w.get("memory_bytes") else ""
        lines.append(
            f"worker: {w.get('state')} (pid {w.get('pid')}, {w.get('device')}{mem}, "
            f"{w.get('restarts', 0)} restarts)"
        )
        link = beat.get("store_connection")
        if link:
            lines.append(
                f"database: {link.get('text')}; {link.get('server_encoding')}, schema "
                f"{link.get('schema_version')}, pool {link.get('pool_size')}"
            )
        if beat.get("current_job"):
            cj = beat["current_job"]
            lines.append(f"now: {cj['job_id']} {cj['state']} {cj['progress'] * 100:.0f}%")
    active = {k: v for k, v in counts.items() if v}
    scope = "farm" if is_farm(cfg) else ("the share" if len(farm) > 1 else "this daemon")
    lines.append(
        f"jobs ({scope}): " + (", ".join(f"{k} {v}" for k, v in active.items()) or "no jobs yet")
    )
    if farm:
        lines.append(f"instances ({len(farm)}; this one: {cfg.instance_id}):")
        lines.append(
            f"  {'INSTANCE':<22} {'HOST':<16} {'DEVICE':<8} {'STATE':<8} {'WORKER':<8} "
            f"{'LEASE':>7}  {'VERSION':<8} CURRENT JOB"
        )
        for i in farm:
            lines.append(
                f"  {i['instance'][:22]:<22} {str(i['host'])[:16]:<16} {str(i['device'] or '-'):<8} "
                f"{i['state']:<8} {str(i['worker'] or '-'):<8} {i['lease_age_seconds']:>6.0f}s  "
                f"{str(i['version']):<8} {i['current_job'] or '-'}"
            )
    data = {
        "running": running,
        "pid": pid,
        "phase": state["phase"],
        "healthy": state["healthy"],
        "summary": state["line"],
        "jobs": counts,
        "health": beat,
        "version": __version__,
        "instance": cfg.instance_id,
        "instances": farm,
    }
    _out(args, "\n".join(lines), data)
    return EXIT_OK if running and state["healthy"] else EXIT_FAILURE


def cmd_doctor(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon import doctor

    checks = doctor.run_checks(cfg, unit=args.unit)
    if args.json:
        print(json.dumps(doctor.as_dicts(checks), indent=2))
    else:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            fix = f"\n       fix: {c.fix}" if c.fix and c.status != "ok" else ""
            print(f"[{mark[c.status]}] {c.name}: {c.detail}{fix}")
        fails = sum(c.status == "fail" for c in checks)
        warns = sum(c.status == "warn" for c in checks)
        print(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return EXIT_FAILURE if any(c.status == "fail" for c in checks) else EXIT_OK


def cmd_db(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """`db migrate` / `db status`: the farm's schema, applied by a role that owns it."""
    from dropbox_daemon import __version__
    from dropbox_daemon.redact import url as redact_url
    from dropbox_daemon.store import pg_schema
    from dropbox_daemon.store.pg_link import connect, settings_of, where

    url = args.url or cfg.store.url
    if not url:
        raise ConfigError(
            "db: no database: [store] url is empty (this daemon uses SQLite, which migrates "
            "itself)",
            hint="set [store] url in the config, or pass --url postgresql://owner@host/db",
        )
    with connect(url, settings_of(cfg)) as conn:
        have = pg_schema.current_version(conn)
        applied: list[int] = []
        if args.action == "migrate":
            applied = pg_schema.migrate(conn, release=__version__)
            if args.grant:
                pg_schema.grant(conn, args.grant)
        now = pg_schema.current_version(conn)
        enc = conn.info.parameter_status("server_encoding")
    data = {
        "database": where(url),
        "url": redact_url(url),
        "server_encoding": enc,
        "schema_version": now,
        "was": have,
        "applied": applied,
        "code_needs": pg_schema.CODE_VERSION,
        "granted_to": args.grant if args.action == "migrate" else None,
    }
    if args.action == "migrate":
        human = (
            f"{where(url)}: schema version {have} -> {now} (applied {applied})"
            if applied
            else f"{where(url)}: schema version {now}, up to date"
        )
        if args.grant:
            human += f"; role {args.grant!r} may now read and write the farm's rows"
    else:
        state = (
            "up to date"
            if now >= pg_schema.CODE_VERSION
            else (
                f"OLDER than this release needs ({pg_schema.CODE_VERSION}): run "
                "`dropbox-daemon db migrate` as the owner role"
            )
        )
        human = f"{where(url)}: schema version {now} ({state}); encoding {enc}"
    _out(args, human, data)
    return EXIT_OK if now >= pg_schema.CODE_VERSION else EXIT_FAILURE


def cmd_smoke(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon import smoke

    passed, report = smoke.run(cfg, timeout=args.timeout, start_daemon=args.start_daemon)
    if args.json:
        print(json.dumps({"passed": passed, **report}, indent=2))
    elif passed:
        t = report["timings"]
        print(
            f"PASS smoke {report['job_id']}: {report['result']} ({report['duration']:.2f} s, "
            f"{report['size']}, engine {report['engine']}) in {report['wall_seconds']:.1f} s "
            f"[prepare {t.get('prepare', 0):.2f} s, render {t.get('render', 0):.2f} s, "
            f"encode {t.get('encode', 0):.2f} s]"
        )
    else:
        print(f"FAIL smoke {report.get('job_id', '')}: {report['error']}")
    return EXIT_OK if passed else EXIT_FAILURE


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

    store = _store(cfg)
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
        job = _store(cfg).get(args.job) if has_store(cfg) else None
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
    _out(args, human, {"task": rec, "log": log})
    return EXIT_OK


class NoSuchJob(Exception):
    """The job named on the command line is not in the store."""


def _job(store, job_id: str):  # noqa: ANN001, ANN202
    job = store.get(job_id)
    if job is None:
        raise NoSuchJob(job_id)
    return job


def cmd_retry(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    store = _store(cfg)
    job = _job(store, args.job)
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
    _out(args, f"{job.job_id} queued again", job.record())
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon.store import RUNNING

    store = _store(cfg)
    job = _job(store, args.job)
    if job.state in ("queued", "received"):
        try:
            job = store.transition(
                job.job_id, "cancelled", expect=("queued",), detail="cancelled by an operator"
            )
            _out(args, f"{job.job_id} cancelled", job.record())
            return EXIT_OK
        except IllegalTransition:
            job = store.get(args.job) or job  # it just started: cancel the running job
    if job.state in RUNNING:
        store.update(job.job_id, cancel_requested=1, log="cancel requested by an operator")
        _out(
            args,
            f"{job.job_id}: cancel requested; the daemon stops it within seconds",
            {"job_id": job.job_id, "cancel_requested": True},
        )
        return EXIT_OK
    raise CliError(
        f"{job.job_id} is {job.state}: nothing to cancel",
        hint="only queued and running jobs are cancelled",
    )


def cmd_demo(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon import demo

    return demo.run(cfg, json_out=args.json)


# -- parser ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as JSON when --json was given."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            _error(True, f"{self.prog}: {message}", EXIT_USAGE, f"{self.prog} --help")
            raise SystemExit(EXIT_USAGE)
        super().error(message)


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    _Parser.json_errors = json_errors
    p = _Parser(
        prog="dropbox-daemon",
        description="Turns job drops on folders into lip-synced videos. See README.md.",
    )
    p.add_argument("--version", action="version", version=f"dropbox-daemon {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help=f"config file (default: ${config_mod.ENV_CONFIG} or ./config.toml)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the service in the foreground")
    s = sub.add_parser("submit", parents=[common], help="drop a job into an inbox")
    s.add_argument("audio")
    s.add_argument("template")
    s.add_argument("--inbox", help="inbox name (default: the first configured)")
    s.add_argument("--engine", choices=config_mod.ENGINE_NAMES)
    s.add_argument("--job-id")
    s.add_argument("--priority", type=int)
    s.add_argument(
        "--replace",
        action="store_true",
        help="run the job again if its job_id already ran (the manifest's replace = true)",
    )
    s.add_argument("--wait", action="store_true", help="follow the job until it ends")
    s.add_argument(
        "--duplicate-ok",
        action="store_true",
        help="--wait: exit 0 when the drop is answered as a duplicate (default: exit 6)",
    )
    s.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits")
    sub.add_parser("status", parents=[common], help="is the daemon up; jobs by state")
    j = sub.add_parser("jobs", parents=[common], help="list jobs")
    j.add_argument("--state")
    j.add_argument("--inbox")
    j.add_argument("--instance", help="only the jobs this instance rendered (farm mode: any)")
    j.add_argument("--limit", type=int, default=50)
    sh = sub.add_parser("show", parents=[common], help="a job's task.json and log")
    sh.add_argument("job")
    sh.add_argument("--lines", type=int, default=20)
    r = sub.add_parser("retry", parents=[common], help="run a failed or cancelled job again")
    r.add_argument("job")
    c = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    c.add_argument("job")
    sub.add_parser("demo", parents=[common], help="render a sample job end to end")
    dr = sub.add_parser(
        "doctor", parents=[common], help="check this host's set-up; non-zero on any failure"
    )
    dr.add_argument(
        "--unit",
        metavar="FILE_OR_NAME",
        help="check this unit file (e.g. systemd/dropbox-daemon.service) or installed unit "
        "instead of the installed dropbox-daemon.service",
    )
    sm = sub.add_parser(
        "smoke", parents=[common], help="render a 10 s job through the daemon: pass or fail"
    )
    sm.add_argument("--timeout", type=float, default=600)
    sm.add_argument(
        "--start-daemon", action="store_true", help="start a daemon for the test if none runs"
    )
    db = sub.add_parser("db", parents=[common], help="farm mode: the database's schema")
    db.add_argument(
        "action",
        choices=["migrate", "status"],
        help="migrate: apply or upgrade the schema (as the database's owner); status: its version",
    )
    db.add_argument("--url", help="the owner's URL, if not [store] url (the daemons' role)")
    db.add_argument("--grant", metavar="ROLE", help="migrate: give ROLE the daemons' rights")
    lg = sub.add_parser("logs", parents=[common], help="a job's log (log.txt)")
    lg.add_argument("job")
    lg.add_argument(
        "--daemon", action="store_true", help="also the daemon's own log lines about it"
    )
    return p


COMMANDS = {
    "run": cmd_run,
    "submit": cmd_submit,
    "status": cmd_status,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
    "smoke": cmd_smoke,
    "logs": cmd_logs,
    "db": cmd_db,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    try:
        args = build_parser(json_errors=as_json).parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error, already printed
        return int(e.code or 0)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        return _error(as_json, f"config: {e.message}", EXIT_CONFIG, e.hint)
    try:
        return COMMANDS[args.command](args, cfg)
    except CliError as e:
        return _error(as_json, e.message, e.exit_code, e.hint)
    except ConfigError as e:
        return _error(as_json, e.message, EXIT_CONFIG, e.hint)
    except NoSuchJob as e:
        from dropbox_daemon.store import store_name

        return _error(
            as_json,
            f"no job {e.args[0]!r} in {store_name(cfg)}",
            EXIT_NOT_FOUND,
            "`dropbox-daemon jobs` lists the jobs this daemon knows",
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return _error(as_json, str(e), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not as_json:
            raise  # the traceback, for a person
        return _error(
            as_json,
            f"{type(e).__name__}: {e}",
            EXIT_FAILURE,
            "unexpected: run the command without --json for the traceback",
        )
