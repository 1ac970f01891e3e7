"""What the operator reads is what the daemon is doing: status, /health and health.json at
each transition, against a real daemon and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
from support import put_file, put_manifest, wait_for
from test_web import free_port

REPO = Path(__file__).resolve().parents[2]
AGREE_WITHIN = 1.0  # seconds from a transition (the daemon's own log line) to /health saying it


def _health(c: httpx.Client) -> dict:
    try:
        return c.get("/health").json()
    except (httpx.TransportError, ValueError):
        return {}


def _health_file(d) -> dict:  # noqa: ANN001
    try:
        return json.loads((d.daemon_dir / "health.json").read_text())
    except (OSError, ValueError):
        return {"worker": {}}


def _said(d, text: str, after: int) -> bool:  # noqa: ANN001
    return text.encode() in d.logfile.read_bytes()[after:]


def test_status_and_health_follow_each_transition(daemon_factory, media) -> None:  # noqa: ANN001
    port = free_port()
    # a heartbeat far apart: only a write at the change itself can keep up
    d = daemon_factory(
        daemon={"stop_timeout_seconds": 120.0},
        sections={
            "http": {"listen": f"127.0.0.1:{port}"},
            "health": {"heartbeat_seconds": 60.0},
            "models": {"wav2lip": str(media.wav2lip_checkpoint)},
        },
    )
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def agree(what: str, phase: str, status: set[str], **worker: object) -> dict:
        """/health says `phase` (and the worker's state and job, where given) within
        AGREE_WITHIN of the transition; status --json agrees. (Waiting on the phase alone
        took a /health read from before the change, when the phase was the same already.)"""

        def says(h: dict) -> bool:
            return (
                h.get("phase") == phase
                and ("worker" not in worker or h.get("worker") == worker["worker"])
                and ("current_job" not in worker or h.get("current_job") == worker["current_job"])
            )

        t0 = time.monotonic()
        h = wait_for(lambda: says(h := _health(c)) and h, 30, f"/health: {what}", d)
        took = time.monotonic() - t0
        assert took <= AGREE_WITHIN, f"/health said {what} {took:.2f} s after it happened: {h}"
        assert h["status"] in status, h
        s = json.loads(d.cli("status", "--json").stdout)
        assert s["phase"] == phase and s["health"]["status"] in status, s["summary"]
        beat = s["health"]
        if "worker" in worker:
            assert h["worker"] == beat["worker"]["state"] == worker["worker"], (h, s["summary"])
        if "current_job" in worker:
            now = (beat.get("current_job") or {}).get("job_id")
            assert h["current_job"] == now == worker["current_job"], (h, s["summary"])
        return s

    log_at = 0
    d.start(wait_ready=False)
    wait_for(lambda: _said(d, "started as instance", log_at), 60, "the daemon's start", d)
    # the worker is still loading the model (wav2lip weights, seconds): starting, said so
    t0 = time.monotonic()
    seen = wait_for(
        lambda: (
            ("starting" if _health(c).get("phase") == "starting" else None)
            or ("ready" if _said(d, "worker ready", log_at) else None)
        ),
        30,
        "/health: starting",
        d,
    )
    if seen == "starting":  # (a worker that loads faster than the first beat is not a fault)
        assert time.monotonic() - t0 <= AGREE_WITHIN
        s = json.loads(d.cli("status", "--json").stdout)
        assert s["running"] and s["phase"] in ("starting", "running"), s["summary"]
    wait_for(lambda: _said(d, "worker ready", log_at), 60, "worker ready", d)
    s = agree("ready", "running", {"ok"}, worker="idle")
    assert s["healthy"] and s["running"]

    put_file(d.inbox / "long.wav", media.tone_95)
    put_file(d.inbox / "long.png", media.image)
    put_manifest(
        d.inbox / "long.json", {"job_id": "long", "audio": "long.wav", "template": "long.png"}
    )
    wait_for(lambda: _said(d, "job long started", log_at), 60, "job long to start", d)
    # the worker held (SIGSTOP) mid-render, so the job outlasts what the test reads
    worker_pid = wait_for(lambda: _health_file(d)["worker"]["pid"], 10, "the worker's pid", d)
    os.kill(worker_pid, signal.SIGSTOP)
    s = agree("rendering", "running", {"ok"}, worker="busy", current_job="long")
    assert s["health"]["current_job"]["job_id"] == "long"
    text = d.cli("status").stdout
    assert "worker: busy" in text and "now: long" in text, text

    d.proc.send_signal(signal.SIGTERM)
    s = agree("draining", "draining", {"stopping"}, current_job="long")
    text = d.cli("status").stdout
    assert "STOPPING" in text and "finishing job long" in text, text
    os.kill(worker_pid, signal.SIGCONT)

    assert d.proc.wait(180) == 0
    assert d.task("long")["state"] == "done"  # the drain let it finish
    beat = json.loads((d.daemon_dir / "health.json").read_text())
    assert beat["status"] == "stopped" and beat["phase"] == "stopped", beat
    assert beat["worker"]["state"] == "stopped" and beat["worker"]["pid"] is None, beat["worker"]
    assert "SIGTERM" in beat["reasons"][0]
    r = d.cli("status", "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 1 and s["phase"] == "stopped" and not s["running"], s["summary"]
    text = d.cli("status").stdout
    assert "NOT running: stopped cleanly" in text and "worker:" not in text, text


def test_status_after_a_kill_says_so(daemon_factory) -> None:  # noqa: ANN001
    d = daemon_factory().start()
    wait_for(lambda: (d.daemon_dir / "health.json").exists(), 30, "health.json", d)
    d.kill9()
    r = d.cli("status")
    assert r.returncode == 1 and "did not stop cleanly" in r.stdout, r.stdout
    assert json.loads(d.cli("status", "--json").stdout)["phase"] == "killed"


def test_submit_says_what_became_of_its_drop(daemon, media, tmp_path) -> None:  # noqa: ANN001
    def submit(job_id: str, *extra: str, audio=media.tone):  # noqa: ANN001, ANN202
        return daemon.cli("submit", str(audio), str(media.image), "--job-id", job_id, *extra)

    r = submit("same", "--wait")
    assert r.returncode == 0 and "done:" in r.stdout, r.stdout + r.stderr
    first = daemon.task("same")

    # the same job_id again: not run, and the CLI says so (exit 6), naming the earlier result
    r = submit("same")
    assert r.returncode == 0 and "answered as a duplicate" in r.stdout, r.stdout
    daemon.wait_state("same.dup-1", "duplicate")
    r = submit("same", "--wait")
    assert r.returncode == 6, r.stdout + r.stderr
    assert "duplicate: job same already exists (done)" in r.stdout and "NOT run" in r.stdout
    assert "same.dup-2" in r.stdout and "earlier result" in r.stdout, r.stdout
    r = submit("same", "--wait", "--json", "--duplicate-ok")
    answer = json.loads(r.stdout)
    assert r.returncode == 0 and answer["answer"] == "duplicate", answer
    assert answer["job_id"] == "same.dup-3" and answer["earlier"]["trace_id"] == first["trace_id"]

    # --replace runs it again, and --wait follows the new run, not the old record
    r = submit("same", "--replace", "--wait", "--json")
    again = json.loads(r.stdout)
    assert r.returncode == 0 and again["state"] == "done", again
    assert again["trace_id"] != first["trace_id"] and again["job_id"] == "same"

    # rejected, then fixed under the same job_id: the same job runs, and --wait sees it
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 100)
    r = submit("fixme", "--wait", audio=text)
    assert r.returncode == 1 and "rejected" in r.stdout, r.stdout
    r = submit("fixme", "--wait", audio=text)  # still wrong: rejected again, said again
    assert r.returncode == 1 and "rejected" in r.stdout, r.stdout
    r = submit("fixme", "--wait")
    assert r.returncode == 0 and "done:" in r.stdout and "fixme.dup" not in r.stdout, r.stdout


def _doctor(d, *extra: str) -> tuple[int, dict]:  # noqa: ANN001
    r = d.cli("doctor", "--json", *extra)
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)}


def test_doctor_before_the_first_start(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    d = daemon_factory()
    d.inbox.rmdir()  # nothing exists yet: a fresh clone before its first `run`
    rc, checks = _doctor(d)
    assert rc == 0, [c for c in checks.values() if c["status"] != "ok"]
    for name in ("outbox folder", "state folder", "inbox default folder"):
        assert checks[name]["status"] == "ok", checks[name]
        assert "creates it at its first start" in checks[name]["detail"], checks[name]
    assert not d.outbox.exists() and not d.state.exists() and not d.inbox.exists()
    unit = checks["systemd unit"]
    assert unit["status"] == "ok" and "no dropbox-daemon.service installed" in unit["detail"]

    # the repository's unit, when asked: its paths are not this config's
    repo_unit = str(REPO / "systemd" / "dropbox-daemon.service")
    rc, checks = _doctor(d, "--unit", repo_unit)
    assert rc == 1 and checks["systemd unit"]["status"] == "fail", checks["systemd unit"]
    # a unit whose ReadWritePaths= (added up over drop-ins) cover the folders passes
    good = tmp_path / "good.service"
    good.write_text(
        f"[Service]\nReadWritePaths={d.outbox} {d.inbox}\n# a drop-in\n[Service]\n"
        f"ReadWritePaths=-{d.state}\n"
    )
    rc, checks = _doctor(d, "--unit", str(good))
    assert rc == 0 and checks["systemd unit"]["status"] == "ok", checks["systemd unit"]
    good.write_text(f"[Service]\nReadWritePaths={d.outbox} {d.inbox} {d.state}\nReadWritePaths=\n")
    rc, checks = _doctor(d, "--unit", str(good))
    assert rc == 1, checks["systemd unit"]  # an empty ReadWritePaths= resets the list

    # what would stop a start still fails: the outbox's place is a file
    blocker = d.root / "blocker"
    blocker.write_text("x")
    d.config.write_text(d.config.read_text().replace(str(d.outbox), str(blocker / "outbox")))
    rc, checks = _doctor(d)
    c = checks["outbox folder"]
    assert rc == 1 and c["status"] == "fail" and "not a folder" in c["detail"], c


def test_every_command_answers_json_errors_included(daemon, media) -> None:  # noqa: ANN001
    from dropbox_daemon.cli import COMMANDS, EXIT_NAMES, build_parser

    tone, image = str(media.tone), str(media.image)
    r = daemon.cli("submit", tone, image, "--job-id", "j1", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    runs = {  # each command once, as quick as it can answer; errors are answers too
        "run": [],  # this state folder's daemon already runs: a config error
        "submit": [tone, image, "--job-id", "j2"],
        "status": [],
        "healthcheck": [],
        "jobs": ["--state", "done"],
        "show": ["j1"],
        "retry": ["j1"],  # done: not retried
        "cancel": ["j1"],  # done: nothing to cancel
        "demo": [],
        "doctor": [],
        "smoke": [],
        "db": ["status"],  # SQLite: no database to migrate
        "logs": ["j1", "--daemon"],
    }
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(runs) == set(COMMANDS), "a command without a JSON check"
    for command, args in [
        *runs.items(),
        ("show", ["nosuch"]),
        ("logs", ["nosuch"]),
        ("jobs", ["--state", "nosuchstate"]),
        ("jobs", ["--inbox", "nosuch"]),
        ("jobs", ["--instance", "nosuch"]),
        ("jobs", ["--limit", "many"]),  # argparse's own usage error
    ]:
        r = daemon.cli(command, *args, "--json")
        try:
            answer = json.loads(r.stdout)
        except ValueError:
            raise AssertionError(
                f"{command} {args} --json: not JSON: {r.stdout!r} {r.stderr[-500:]}"
            ) from None
        err = answer.get("error") if isinstance(answer, dict) else None
        assert r.returncode in (0, 1) or isinstance(err, dict), (command, args, answer)
        if isinstance(err, dict) and "exit_code" in err:
            assert r.returncode == err["exit_code"] != 0, (command, args, answer)
            assert err["exit"] == EXIT_NAMES[r.returncode] and err["message"], answer
    usage = {"exit_code": 2, "exit": "usage"}
    for flag, value in (("--state", "nosuchstate"), ("--inbox", "nosuch"), ("--instance", "x")):
        r = daemon.cli("jobs", flag, value)
        assert r.returncode == 2 and flag in r.stderr and "(no jobs)" not in r.stdout, r.stderr
        err = json.loads(daemon.cli("jobs", flag, value, "--json").stdout)["error"]
        assert usage.items() <= err.items() and value in err["message"], err
    err = json.loads(daemon.cli("show", "nosuch", "--json").stdout)["error"]
    assert err["exit"] == "not_found" and "nosuch" in err["message"]
    log = json.loads(daemon.cli("logs", "j1", "--json").stdout)
    assert log["job_id"] == "j1" and any("-> done" in line for line in log["log"]), log
    # the container's health check: this daemon runs and its heartbeat says so
    r = daemon.cli("healthcheck", "--json")
    check = json.loads(r.stdout)
    assert r.returncode == 0 and check["healthy"] and check["phase"] == "running", check


def _drop_folder(d, name: str, audio, template, **manifest) -> None:  # noqa: ANN001, ANN003
    tmp = d.inbox / f".{name}.partial"
    tmp.mkdir()
    put_file(tmp / "speech.wav", audio)
    put_file(tmp / "face.png", template)
    put_manifest(tmp / "job.json", {"audio": "speech.wav", "template": "face.png", **manifest})
    tmp.rename(d.inbox / name)


def test_folder_drops_get_ids_from_their_names(daemon, media, tmp_path) -> None:  # noqa: ANN001
    name = "Démo été 01"
    _drop_folder(daemon, name, media.tone, media.image)
    assert daemon.wait_state("Demo-ete-01")["state"] == "done"
    wait_for(lambda: not (daemon.inbox / name).exists(), 10, "the folder taken", daemon)

    # the same name after its job ended: a new job, not a duplicate
    _drop_folder(daemon, name, media.tone, media.image)
    assert daemon.wait_state("Demo-ete-01.2")["state"] == "done"

    # rejected, then fixed and dropped again: the same job runs, no new id
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio\n" * 100)
    _drop_folder(daemon, name, bad, media.image)
    assert daemon.wait_state("Demo-ete-01.3")["state"] == "rejected"
    wait_for(lambda: not (daemon.inbox / name).exists(), 10, "the folder taken", daemon)
    _drop_folder(daemon, name, bad, media.image)  # still wrong: answered in the same job
    wait_for(
        lambda: (daemon.outbox / "Demo-ete-01.3" / "log.txt").read_text().count("-> rejected") == 2,
        30,
        "the second rejection",
        daemon,
    )
    wait_for(lambda: not (daemon.inbox / name).exists(), 10, "the folder taken", daemon)
    first = daemon.task("Demo-ete-01.3")
    _drop_folder(daemon, name, media.tone, media.image)
    task = daemon.wait_state("Demo-ete-01.3", "done")
    assert task["trace_id"] != first["trace_id"]
    ids = sorted(t["job_id"] for t in daemon.tasks())
    assert ids == ["Demo-ete-01", "Demo-ete-01.2", "Demo-ete-01.3"], ids

    # other scripts are spelled out, not lost; a name with nothing left is "job"
    _drop_folder(daemon, "日本語 ニュース", media.tone, media.image)
    assert daemon.wait_state("RiBenYu-niyusu")["state"] == "done"


def test_a_folder_rejected_at_intake_is_the_same_job_when_fixed(daemon, media) -> None:  # noqa: ANN001
    tmp = daemon.inbox / ".partial"
    tmp.mkdir()
    put_file(tmp / "speech.wav", media.tone)
    put_manifest(tmp / "job.json", {"audio": "speech.wav"})  # no template
    tmp.rename(daemon.inbox / "no template")
    task = daemon.wait_state("no-template")
    assert task["state"] == "rejected", task
    wait_for(lambda: not (daemon.inbox / "no template").exists(), 10, "the folder taken", daemon)
    _drop_folder(daemon, "no template", media.tone, media.image)
    assert daemon.wait_state("no-template", "done")["state"] == "done"
    assert [t["job_id"] for t in daemon.tasks()] == ["no-template"]
