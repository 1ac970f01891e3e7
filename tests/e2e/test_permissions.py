"""Drops the daemon's user may not take, as writers with their own umask make them on a share:
a job folder only its writer may write (a claim is a rename out of it), one only its writer
may look into, a manifest and a media file only their writer may read. Each is said once, with
whose it is and what to set; nothing is retried into a pile of claim folders; the daemon keeps
serving; a folder its writer opens up is taken at the next rescan.

The daemon runs as the test's user without the capabilities that let root past a file's mode
(setpriv), so the modes the test sets bind it as they bind a service user on a share.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import put_file, put_manifest, wait_for

from dropbox_daemon.client import submit

NO_OVERRIDE = "-dac_override,-dac_read_search,-fowner"


def job_folder(inbox: Path, name: str, media, mode: int | None = None) -> Path:  # noqa: ANN001
    """A job folder made aside and renamed into the inbox, then given `mode`."""
    staged = inbox.parent / f"staged-{name}"
    put_file(staged / "a.wav", media.tone)
    put_file(staged / "t.png", media.tiny_image)
    put_manifest(staged / "job.json", {"job_id": name, "audio": "a.wav", "template": "t.png"})
    folder = inbox / name
    staged.rename(folder)
    if mode is not None:
        folder.chmod(mode)
    return folder


def as_service_user(d):  # noqa: ANN001, ANN201
    """The daemon bound by file modes as a service user is (root without DAC override)."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root passes every file mode; setpriv (util-linux) drops that power")
        d.prefix = ["setpriv", f"--inh-caps={NO_OVERRIDE}", f"--bounding-set={NO_OVERRIDE}", "--"]
    return d


def as_other_user(d, uid: int = 65534):  # noqa: ANN001, ANN201
    """The daemon as another user (nobody, in its own group), with the state and outbox its
    own and the inbox a setgid folder of its group (mode 2775) that the test, root, writes
    into: the layout of a share where writers and the daemon are different users. It may read
    everything (CAP_DAC_READ_SEARCH: this interpreter lives where only root may look) but
    write only where the modes let it, as the claim's renames must."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("runs the daemon as another user: needs root and setpriv (util-linux)")
    for p in (d.state, d.outbox):
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, uid, uid)
    os.chown(d.inbox, 0, uid)
    d.inbox.chmod(0o2775)
    caps = "+dac_read_search"
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    d.prefix = ["setpriv", *ids, f"--inh-caps={caps}", f"--ambient-caps={caps}", "--"]
    return d


def health(d) -> dict:  # noqa: ANN001
    try:
        return json.loads((d.daemon_dir / "health.json").read_text())
    except (OSError, ValueError):
        return {}


def ended(d, job_id: str) -> dict | None:  # noqa: ANN001
    task = d.task(job_id)
    return task if task and task["state"] in ("done", "failed", "rejected") else None


@pytest.mark.timeout(180)
def test_drops_the_daemon_may_not_take_are_said_once_and_taken_once_opened(
    daemon_factory,
    media,  # noqa: ANN001
) -> None:
    d = as_service_user(daemon_factory(inbox={"engine": "passthrough"}))
    d.start()
    locked = job_folder(d.inbox, "locked", media, 0o555)  # its files cannot be moved out
    sealed = job_folder(d.inbox, "sealed", media, 0o000)  # it cannot be looked into
    secret = job_folder(d.inbox, "secret", media)
    (secret / "a.wav").chmod(0o000)  # taken, but its audio cannot be read
    put_file(d.inbox / "p.wav", media.tone)
    put_file(d.inbox / "p.png", media.tiny_image)
    manifest = {"job_id": "private", "audio": "p.wav", "template": "p.png"}
    put_manifest(d.inbox / ".private.json", manifest)
    (d.inbox / ".private.json").chmod(0o000)
    (d.inbox / ".private.json").rename(d.inbox / "private.json")
    job_folder(d.inbox, "plain", media)
    try:
        for job_id in ("plain", "private", "secret"):
            wait_for(lambda j=job_id: ended(d, j), 60, f"job {job_id} to end", d)
        assert d.task("plain")["state"] == "done"
        private = json.loads((d.outbox / "private" / "error.json").read_text())
        assert private["code"] == "manifest_unreadable", private
        assert "mode ----------" in private["message"] and "daemon runs as" in private["message"]
        assert "daemon's user read it" in private["hint"], private
        secret_err = json.loads((d.outbox / "secret" / "error.json").read_text())
        assert (secret_err["code"], secret_err["field"]) == ("permission_denied", "audio")
        assert "'a.wav' cannot be read by the daemon" in secret_err["message"], secret_err
        # three rescans later each of the two is still said once, and no claim is left per try
        wait_for(lambda: d.log_text().count("still cannot be claimed") >= 3, 60, "rescans", d)
        log = d.log_text()
        assert log.count("locked cannot be claimed: the daemon may not move job.json") == 1, log
        assert "mode dr-xr-xr-x" in log and "umask 002" in log
        assert log.count("sealed cannot be looked into") == 1, log
        claims = d.inbox / ".dropbox" / "claimed"
        assert len(list(claims.iterdir())) == 3, sorted(p.name for p in claims.iterdir())
        assert (locked / "job.json").exists() and d.task("locked") is None
        # the writers open them up: both are taken at the next rescan, and render
        locked.chmod(0o775)
        sealed.chmod(0o775)
        for job_id in ("locked", "sealed"):
            task = wait_for(lambda j=job_id: ended(d, j), 60, f"job {job_id} to end", d)
            assert task["state"] == "done", task
        assert not locked.exists() and not sealed.exists()
        assert len(list(claims.iterdir())) == 5
        assert d.alive()
    finally:  # let pytest remove what it made, as any user
        for p in (locked, sealed, secret / "a.wav"):
            if p.exists():
                p.chmod(0o755)


def test_an_inbox_the_daemon_may_not_write_is_named_in_its_health(daemon_factory) -> None:  # noqa: ANN001
    """A chown or a mount gone wrong leaves the inbox to someone else: no drop in it can be
    claimed, and health.json (so status and /health) says which inbox and whose it is."""
    d = as_service_user(daemon_factory(sections={"health": {"heartbeat_seconds": 1.0}}))
    d.start()
    wait_for(lambda: health(d).get("status") == "ok", 30, "health ok", d)
    d.inbox.chmod(0o555)
    try:
        h = wait_for(lambda: (h := health(d)).get("status") == "degraded" and h, 30, "degraded", d)
        why = [r for r in h["reasons"] if "is not writable by the daemon" in r]
        assert why and f"inbox default ({d.inbox})" in why[0] and "mode dr-xr-xr-x" in why[0], h
    finally:
        d.inbox.chmod(0o755)
    wait_for(lambda: health(d).get("status") == "ok", 30, "health ok again", d)
    assert d.alive()


def test_the_clients_drop_is_taken_by_a_daemon_of_another_user(daemon_factory, media) -> None:  # noqa: ANN001
    """A script submits under umask 022 into a group inbox: its job folder must still be the
    daemon's to empty (the client gives it the access the inbox gives)."""
    d = as_other_user(daemon_factory(inbox={"engine": "passthrough"}))
    d.start()
    old = os.umask(0o022)
    try:
        handle = submit(d.inbox, media.tone, media.tiny_image, outbox=d.outbox, job_id="grouped")
    finally:
        os.umask(old)
    assert handle.wait(timeout=60)["state"] == "done"
    assert "cannot be claimed" not in d.log_text()
