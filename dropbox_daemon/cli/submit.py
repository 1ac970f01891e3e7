"""`submit`: the reference client's drop from the command line, and following it (--wait)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dropbox_daemon import config as config_mod
from dropbox_daemon.cli.output import say
from dropbox_daemon.errors import EXIT_DUPLICATE, EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT


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
        say(
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
        say(
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
        say(
            args,
            f"job {handle.job_id} {e.record['state']}: {err.get('message', '')}\n"
            f"hint: {err.get('hint', '')}\nfolder: {handle.folder}",
            e.record,
        )
        return EXIT_FAILURE
    except TimeoutError as e:
        say(args, str(e), {"job_id": handle.job_id, "error": str(e)})
        return EXIT_TIMEOUT
    result = handle.folder / rec["output"]["name"]
    say(
        args,
        f"done: {result} ({rec['output']['duration']:.2f} s, "
        f"{rec['output']['width']}x{rec['output']['height']})",
        rec,
    )
    return EXIT_OK
