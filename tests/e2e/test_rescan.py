"""Acceptance: without file events, the start-up scan and periodic rescans find every drop."""

from __future__ import annotations

import pytest
from support import put_file, put_manifest


def drop(inbox, media, job_id: str) -> None:  # noqa: ANN001
    put_file(inbox / f"{job_id}.wav", media.tone)
    put_file(inbox / f"{job_id}.png", media.image)
    put_manifest(
        inbox / f"{job_id}.json",
        {"job_id": job_id, "audio": f"{job_id}.wav", "template": f"{job_id}.png"},
    )


@pytest.mark.parametrize("watch", ["poll", "rescan"])
def test_drops_found_without_events(daemon_factory, media, watch: str) -> None:  # noqa: ANN001
    d = daemon_factory(inbox={"watch": watch}).start()
    assert f"with {watch}" in d.log_text() or "no observer" in d.log_text()
    for n in range(5):
        drop(d.inbox, media, f"{watch}-{n}")
    for n in range(5):
        assert d.wait_state(f"{watch}-{n}", timeout=60)["state"] == "done"


def test_drops_made_while_the_daemon_was_down(daemon_factory, media) -> None:  # noqa: ANN001
    d = daemon_factory()
    for n in range(3):
        drop(d.inbox, media, f"early-{n}")
    d.start()
    for n in range(3):
        assert d.wait_state(f"early-{n}", timeout=60)["state"] == "done"
