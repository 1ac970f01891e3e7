"""`status`: is the daemon up, in one verdict, and the share's jobs by state."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dropbox_daemon import __version__
from dropbox_daemon import config as config_mod
from dropbox_daemon.cli.output import say, store_of
from dropbox_daemon.errors import EXIT_FAILURE, EXIT_OK


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
        return _not_running(beat, age)
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


def _not_running(beat: dict[str, Any] | None, age: float | None) -> dict[str, Any]:
    """daemon_state where no daemon runs: never started, stopped cleanly, or killed."""
    if beat is None:
        return {"phase": "stopped", "healthy": False, "line": "NOT running (never started here)"}
    status = beat.get("status")
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


def _worker_lines(beat: dict[str, Any]) -> list[str]:
    """What a running daemon's heartbeat says of its health, worker, database and job."""
    lines = [f"  - {r}" for r in beat.get("reasons", [])]
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
    return lines


def _instance_lines(farm: list[dict[str, Any]], this: str) -> list[str]:
    """The share's instances as a table."""
    lines = [
        f"instances ({len(farm)}; this one: {this}):",
        f"  {'INSTANCE':<22} {'HOST':<16} {'DEVICE':<8} {'STATE':<8} {'WORKER':<8} "
        f"{'LEASE':>7}  {'VERSION':<8} CURRENT JOB",
    ]
    for i in farm:
        lines.append(
            f"  {i['instance'][:22]:<22} {str(i['host'])[:16]:<16} {str(i['device'] or '-'):<8} "
            f"{i['state']:<8} {str(i['worker'] or '-'):<8} {i['lease_age_seconds']:>6.0f}s  "
            f"{str(i['version']):<8} {i['current_job'] or '-'}"
        )
    return lines


def cmd_status(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import time

    from dropbox_daemon.coordination import summary
    from dropbox_daemon.store import has_store, is_farm

    pid = _daemon_pid(cfg)
    store = store_of(cfg) if has_store(cfg) else None
    farm, counts = summary(cfg, store)  # the share's instances and jobs, in either way
    if store is not None:
        store.close()
    beat = _read_beat(cfg)
    state = daemon_state(pid, beat, cfg.health.heartbeat_seconds, time.time())
    running = state["phase"] in ("starting", "running", "draining", "hung")
    lines = [f"dropbox-daemon {__version__}: {state['line']}"]
    if beat is not None and running and state["phase"] != "hung" and beat.get("pid") == pid:
        lines += _worker_lines(beat)
    active = {k: v for k, v in counts.items() if v}
    scope = "farm" if is_farm(cfg) else ("the share" if len(farm) > 1 else "this daemon")
    lines.append(
        f"jobs ({scope}): " + (", ".join(f"{k} {v}" for k, v in active.items()) or "no jobs yet")
    )
    if farm:
        lines += _instance_lines(farm, cfg.instance_id)
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
    say(args, "\n".join(lines), data)
    return EXIT_OK if running and state["healthy"] else EXIT_FAILURE


def cmd_healthcheck(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """A container's HEALTHCHECK or a monitor's probe: 0 where this daemon runs and its own
    heartbeat is fresh and says ok or degraded, 1 otherwise, with `status`'s first line. It
    reads only the pid file and health.json (no database: a probe every few seconds costs
    nothing, and a farm database's outage shows in the heartbeat's status, not as a probe
    that hangs)."""
    import time

    pid = _daemon_pid(cfg)
    state = daemon_state(pid, _read_beat(cfg), cfg.health.heartbeat_seconds, time.time())
    healthy = state["healthy"]  # never where it is not running, or hung
    data = {"healthy": healthy, "pid": pid, "phase": state["phase"], "summary": state["line"]}
    say(args, f"dropbox-daemon {__version__}: {state['line']}", data)
    return EXIT_OK if healthy else EXIT_FAILURE
