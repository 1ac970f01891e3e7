"""The host's own checks: `doctor` (is this host set up), `demo` (a sample rendered end
to end), `smoke` (a 10 s job through the running daemon: pass or fail)."""

from __future__ import annotations

import argparse
import json

from dropbox_daemon import config as config_mod
from dropbox_daemon.errors import EXIT_FAILURE, EXIT_OK


def cmd_doctor(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon.cli.doctor import as_dicts, run_checks

    checks = run_checks(cfg, unit=args.unit)
    if args.json:
        print(json.dumps(as_dicts(checks), indent=2))
    else:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            fix = f"\n       fix: {c.fix}" if c.fix and c.status != "ok" else ""
            print(f"[{mark[c.status]}] {c.name}: {c.detail}{fix}")
        fails = sum(c.status == "fail" for c in checks)
        warns = sum(c.status == "warn" for c in checks)
        print(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return EXIT_FAILURE if any(c.status == "fail" for c in checks) else EXIT_OK


def cmd_demo(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon.cli.demo import run

    return run(cfg, json_out=args.json)


def cmd_smoke(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from dropbox_daemon.cli.smoke import run

    passed, report = run(cfg, timeout=args.timeout, start_daemon=args.start_daemon)
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
