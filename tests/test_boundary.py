"""The boundary (boundary.py) and the scanner (drops.py) over file-system shapes a writer on
the share can make: never an exception out of a pass, never a path outside the drop."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropbox_daemon import boundary, claims, drops, names
from dropbox_daemon.boundary import Refused, copy_tree, move_file, read_bounded, remove_tree, walk
from dropbox_daemon.instances import FolderLeases, Lease, read_lease

KINDS = ["file", "dir", "link-in", "link-out", "link-dropbox", "link-dangling", "fifo", "socket"]
NAMES = st.sampled_from(
    ["a.wav", "job.json", "x.json", "t.png", ".hidden", "b\nc.json", "d\x1b.json", "é.json", "-rf"]
) | st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b).map(
    os.fsdecode
)
SHAPES = st.lists(
    st.tuples(st.integers(0, 3), NAMES, st.sampled_from(KINDS)), min_size=1, max_size=12
)


def build(root: Path, inbox: Path, outside: Path, shape: list) -> list[socket.socket]:
    """Make each (depth, name, kind) at that depth under a chain of folders in the inbox."""
    socks = []
    for depth, name, kind in shape:
        here = inbox
        for level in range(depth):
            here = here / f"lvl{level}"
            if not os.path.lexists(here):
                here.mkdir()
            elif not here.is_dir() or here.is_symlink():
                break
        p = here / name
        if os.path.lexists(p) or len(os.fsencode(p)) > 100:
            continue
        try:
            if kind == "file":
                p.write_bytes(b'{"audio": "a.wav", "template": "t.png"}')
            elif kind == "dir":
                p.mkdir()
            elif kind == "link-in":
                os.symlink(inbox / "a.wav", p)
            elif kind == "link-out":
                os.symlink(outside, p)
            elif kind == "link-dropbox":
                os.symlink(inbox / ".dropbox", p)
            elif kind == "link-dangling":
                os.symlink(root / "nothing", p)
            elif kind == "fifo":
                os.mkfifo(p)
            elif kind == "socket":
                s = socket.socket(socket.AF_UNIX)
                s.bind(str(p))
                socks.append(s)
        except OSError:
            continue
    return socks


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(SHAPES)
def test_scanner_and_boundary_never_raise_nor_leave_the_drop(tmp_path_factory, shape) -> None:  # noqa: ANN001
    root = tmp_path_factory.mktemp("shape")
    inbox, outside = root / "inbox", root / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    claims.make_dropbox(inbox)
    socks = build(root, inbox, outside, shape)
    try:
        settler = drops.Settler(0.0)
        for cand in drops.scan(inbox):
            assert cand.manifest.parent in (inbox, cand.base_dir)
            assert boundary.is_regular(cand.manifest)  # never a link, FIFO or socket
            assert cand.base_dir == inbox or boundary.is_real_dir(cand.base_dir)
            settler.ready(cand, time.time())
            drops.signature(cand)
        for p in inbox.rglob("*"):
            drops.candidate_for(inbox, p)
        try:
            entries = walk(inbox)
        except Refused:
            entries = []
        for e in entries:
            real = (inbox / e.rel).parent.resolve()
            assert real.is_relative_to(inbox.resolve()), e.rel  # never through a link
            if e.is_file:
                assert read_bounded(inbox / e.rel, 64) is not None
            else:
                with pytest.raises(Refused):
                    read_bounded(inbox / e.rel, 64)
        skipped = copy_tree(inbox, root / "copy")
        for p in (root / "copy").rglob("*"):
            st_ = os.lstat(p)
            assert stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode), p  # only files, folders
        assert all(isinstance(s, str) for s in skipped)
        assert (outside / "secret").read_bytes() == b"secret"
    finally:
        for s in socks:
            s.close()
        remove_tree(root)


def test_a_fifo_a_device_and_a_link_are_refused_without_blocking(tmp_path) -> None:  # noqa: ANN001
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    (tmp_path / "big").write_bytes(b"x" * 100)
    for name, code in (("fifo", "not_a_file"), ("zero", "not_a_file")):
        with pytest.raises(Refused) as e:
            read_bounded(tmp_path / name, 10)
        assert e.value.code == code, (name, e.value.why)
    assert read_bounded(tmp_path / "big", 10) == b"x" * 11  # one more: over the bound


def test_walk_is_bounded_in_depth_and_width_without_recursion(tmp_path) -> None:  # noqa: ANN001
    here = tmp_path / "deep"
    here.mkdir()
    for _ in range(1200):  # deeper than Python's recursion limit
        os.mkdir(here := here / "d")
    with pytest.raises(Refused) as e:
        walk(tmp_path / "deep")
    assert e.value.code == "too_deep"
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(60):
        (wide / str(i)).touch()
    with pytest.raises(Refused) as e:
        walk(wide, max_entries=50)
    assert e.value.code == "too_many_files"
    assert len(walk(wide)) == 60
    remove_tree(tmp_path / "deep")
    assert not (tmp_path / "deep").exists()


def test_move_file_moves_only_a_regular_file_of_one_link(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "a").write_bytes(b"a")
    os.link(tmp_path / "a", tmp_path / "hard")
    os.symlink(tmp_path / "a", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "one").write_bytes(b"1")
    dest = tmp_path / "dest"
    assert "hard link" in (move_file(tmp_path / "hard", dest / "hard") or "")
    assert "symbolic link" in (move_file(tmp_path / "link", dest / "link") or "")
    assert "FIFO" in (move_file(tmp_path / "fifo", dest / "fifo") or "")
    assert move_file(tmp_path / "one", dest / "one") is None
    assert (dest / "one").read_bytes() == b"1" and not (tmp_path / "one").exists()
    (tmp_path / "two").write_bytes(b"2")
    assert "namesake" in (move_file(tmp_path / "two", dest / "one") or "")


def test_names_that_are_not_text_are_named_so(tmp_path) -> None:  # noqa: ANN001
    assert names.name_problem(os.fsdecode(b"\xffx.json")) == "is not valid UTF-8"
    assert names.name_problem("a\nb") == "holds control characters"
    assert names.name_problem("é.json") is None
    assert names.shown(os.fsdecode(b"a\xff\n")) == "a\\xff\\x0a"
    assert names.relative_problem(".dropbox/claimed/x/drop/a.wav")
    assert names.relative_problem("../a.wav")
    assert names.relative_problem("sub/a.wav") is None


def test_a_forged_lease_is_set_aside_and_a_forged_stop_is_not_believed_at_once(tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / ".dropbox" / "instances"
    folder.mkdir(parents=True)
    (folder / "list.json").write_text("[]")
    (folder / "types.json").write_text('{"instance": "types", "pid": "x"}')
    assert read_lease(folder / "list.json") is None
    assert read_lease(folder / "types.json") is None
    live = Lease("live", "h", 1, "", "/s", 1.0, renewed_at=time.time(), beat=7)
    (folder / "impostor.json").write_text(
        __import__("json").dumps({**live.__dict__, "instance": "live"})
    )
    assert read_lease(folder / "impostor.json") is None  # not named for what it describes
    me = Lease("me", "h", 2, "", "/s2", 1.0)
    leases = FolderLeases([tmp_path / ".dropbox"], me, stale_seconds=30.0)
    (folder / "live.json").write_text(
        __import__("json").dumps({**live.__dict__, "state": "stopped"})
    )
    mono = time.monotonic()
    seen = leases.observe(mono)
    assert set(seen) == {"live"}
    assert leases.dead(seen, mono + 1.0) == {}  # a forged stop the live daemon overwrites soon
    assert leases.dead(seen, mono + 6.0) == {"live": "it stopped"}  # one that stood


def test_a_daemon_says_so_when_someone_else_rewrites_its_lease(tmp_path, caplog) -> None:  # noqa: ANN001
    import json

    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR")
    try:
        me = Lease("me", "h", os.getpid(), "b", "/s", 1.0)
        leases = FolderLeases([tmp_path / ".dropbox"], me, stale_seconds=30.0)
        leases.register(time.time())
        leases.renew(time.time())
        assert not lines  # its own renewals
        path = tmp_path / ".dropbox" / "instances" / "me.json"
        forged = {**json.loads(path.read_text()), "state": "stopped"}
        path.write_text(json.dumps(forged))
        leases.renew(time.time())
        assert len(lines) == 1 and "rewritten by someone else" in lines[0], lines
    finally:
        logger.remove(sink)
