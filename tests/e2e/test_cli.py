"""The CLI as operators and scripts use it, against a running daemon."""

from __future__ import annotations

import json


def test_submit_wait_status_jobs_show(daemon, media, tmp_path) -> None:  # noqa: ANN001
    r = daemon.cli("submit", str(media.tone), str(media.image), "--job-id", "cli-1", "--wait")
    assert r.returncode == 0, r.stderr
    assert "done:" in r.stdout and str(daemon.outbox / "cli-1" / "result.mp4") in r.stdout

    r = daemon.cli(
        "submit", str(media.tone), str(media.image), "--job-id", "cli-2", "--wait", "--json"
    )
    assert r.returncode == 0
    assert json.loads(r.stdout)["state"] == "done"

    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 100)
    r = daemon.cli("submit", str(text), str(media.image), "--job-id", "cli-bad", "--wait")
    assert r.returncode == 1
    assert "rejected" in r.stdout and "audio" in r.stdout and "hint:" in r.stdout

    r = daemon.cli("status")
    assert r.returncode == 0 and "running (pid" in r.stdout and "done 2" in r.stdout
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["running"] and status["jobs"]["rejected"] == 1

    rows = json.loads(daemon.cli("jobs", "--json", "--state", "done").stdout)
    assert sorted(j["job_id"] for j in rows) == ["cli-1", "cli-2"]
    assert "cli-bad" in daemon.cli("jobs").stdout

    r = daemon.cli("show", "cli-1")
    assert r.returncode == 0 and '"state": "done"' in r.stdout and "encoding -> done" in r.stdout
    assert daemon.cli("show", "nope").returncode == 4
    assert daemon.cli("cancel", "cli-1").returncode == 1  # already done


def test_status_when_the_daemon_is_down(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory()
    r = d.cli("status")
    assert r.returncode == 1 and "NOT running" in r.stdout
