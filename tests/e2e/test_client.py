"""dropbox_daemon.client from a separate process, as an upstream script uses it."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
from dropbox_daemon.client import JobFailed, submit
inbox, outbox, audio, template, job_id = sys.argv[1:6]
handle = submit(inbox, audio, template, outbox=outbox, job_id=job_id, meta={"from": "script"})
try:
    rec = handle.wait(timeout=120)
    print(json.dumps({"ok": True, "state": rec["state"], "meta": rec["meta"], "output": rec["output"]}))
except JobFailed as e:
    print(json.dumps({"ok": False, "state": e.record["state"], "error": e.error}))
"""


def run_client(d, audio, template, job_id: str) -> dict:  # noqa: ANN001
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(d.inbox),
            str(d.outbox),
            str(audio),
            str(template),
            job_id,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_client_submit_and_wait(daemon, media, tmp_path) -> None:  # noqa: ANN001
    ok = run_client(daemon, media.tone, media.image, "client-ok")
    assert ok["ok"] and ok["state"] == "done" and ok["meta"] == {"from": "script"}
    assert (daemon.outbox / "client-ok" / ok["output"]["name"]).exists()
    bad_audio = tmp_path / "speech.wav"
    bad_audio.write_text("this is not audio\n" * 40)
    bad = run_client(daemon, bad_audio, media.image, "client-bad")
    assert not bad["ok"] and bad["state"] == "rejected"
    assert (
        bad["error"]["code"] == "audio_invalid"
        and bad["error"]["field"] == "audio"
        and bad["error"]["hint"]
    )
