"""The template prep cache (media/frame_store.py) as TemplateFrames uses it: a second job on
a template reads the same frames back without decoding, within a byte budget, and a job
that stops half way leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from dropbox_daemon.config import LimitsConfig
from dropbox_daemon.render.media.frame_store import FrameStore
from dropbox_daemon.render.media.frames import TemplateFrames, View
from dropbox_daemon.render.media.probe import probe_visual

SIZE = (160, 120)
FRAME_BYTES = SIZE[0] * SIZE[1] * 3
INFO: dict = {}  # template -> its probe, so that a template can be gone for the second job


def frames_of(
    template: Path, store: FrameStore, n_out: int, work: Path, notes: list[str] | None = None
) -> tuple[TemplateFrames, list[tuple[int, str]]]:
    """(source, [(template index, digest of the picture)]) of one job's frames."""
    info = INFO.get(template) or INFO.setdefault(template, probe_visual(template, LimitsConfig()))
    view = View.of(info)
    src = TemplateFrames(
        template, info, SIZE, 25.0, n_out, work / "loop-cache.raw", 1 << 30, view,
        store=store,
        store_key=FrameStore.key("sha-of-" + template.name, repr(view), SIZE, 25.0),
        note=(notes if notes is not None else []).append,
    )  # fmt: skip
    return src, [(i, hashlib.sha1(a.tobytes()).hexdigest()) for i, a in src]


def test_a_looping_template_is_read_back_without_its_file(tmp_path, media) -> None:  # noqa: ANN001
    template = tmp_path / "t.mp4"
    shutil.copy(media.video, template)  # 1 s: 25 frames, looped back and forth for 60
    store = FrameStore(tmp_path / "templates", 1 << 30)
    first_notes: list[str] = []
    first, decoded = frames_of(template, store, 60, tmp_path, first_notes)
    assert not first.from_store and first.source_frames == 25
    assert [i for i, _ in decoded][:27] == [*range(25), 23, 22]
    assert any("template frames: cached" in n and "25 frames" in n for n in first_notes)
    template.unlink()  # what the second job reads cannot come from the decoder
    notes: list[str] = []
    again, replayed = frames_of(template, store, 60, tmp_path, notes)
    assert again.from_store and again.source_frames == 25
    assert replayed == decoded
    assert any("cache hit" in n and "decoding skipped" in n for n in notes)
    assert not list((tmp_path / "templates").glob(".*.tmp"))
    assert not (tmp_path / "loop-cache.raw").exists()


def test_part_of_a_long_template_serves_jobs_up_to_its_length(tmp_path, media) -> None:  # noqa: ANN001
    store = FrameStore(tmp_path / "templates", 1 << 30)
    _, short = frames_of(media.face_video, store, 30, tmp_path)  # 75 frames, 30 used
    (entry,) = store.entries()
    assert entry[2] == 30 * FRAME_BYTES
    same, again = frames_of(media.face_video, store, 20, tmp_path)
    assert same.from_store and again == short[:20]
    longer, more = frames_of(media.face_video, store, 50, tmp_path)  # needs frames not kept
    assert not longer.from_store and more[:30] == short
    assert store.find(store.entries()[0][1], 50, FRAME_BYTES).frames == 50  # type: ignore[union-attr]


def test_the_budget_drops_the_template_used_longest_ago(tmp_path) -> None:  # noqa: ANN001
    store = FrameStore(tmp_path / "templates", 2 * 10 * FRAME_BYTES)

    def put(key: str) -> None:
        temp = store.temp_path(key)
        temp.write_bytes(bytes(10 * FRAME_BYTES))
        assert store.commit(key, temp, 10, complete=True) is not None

    put("a")
    put("b")
    assert store.find("a", 10, FRAME_BYTES) is not None  # a is used again: b is older now
    put("c")
    assert [k for _, k, _ in store.entries()] != [] and store.find("b", 1, FRAME_BYTES) is None
    assert store.find("a", 1, FRAME_BYTES) is not None and store.find("c", 1, FRAME_BYTES)
    assert store.usage()[1] <= store.budget
    big = store.temp_path("d")
    big.write_bytes(bytes(3 * 10 * FRAME_BYTES))
    assert store.commit("d", big, 30, complete=True) is None  # larger than the whole budget
    assert store.find("a", 1, FRAME_BYTES) is not None  # and nothing was dropped for it


def test_a_job_that_stops_half_way_keeps_nothing(tmp_path, media) -> None:  # noqa: ANN001
    store = FrameStore(tmp_path / "templates", 1 << 30)
    info = probe_visual(media.face_video, LimitsConfig())
    src = TemplateFrames(
        media.face_video, info, SIZE, 25.0, 60, tmp_path / "loop.raw", 1 << 30,
        store=store, store_key="k",
    )  # fmt: skip
    frames = iter(src)
    for _ in range(10):
        next(frames)
    frames.close()  # cancelled: the generator is closed at a yield
    assert store.entries() == []
    assert list((tmp_path / "templates").iterdir()) == []


def test_a_damaged_entry_is_dropped_and_decoded_again(tmp_path, media) -> None:  # noqa: ANN001
    store = FrameStore(tmp_path / "templates", 1 << 30)
    _, decoded = frames_of(media.video, store, 25, tmp_path)
    ((_, key, _),) = store.entries()
    raw = tmp_path / "templates" / f"{key}.raw"
    with raw.open("r+b") as f:
        f.truncate(FRAME_BYTES * 7 + 5)  # a disk that filled up, a copy cut short
    src, again = frames_of(media.video, store, 25, tmp_path)
    assert not src.from_store and again == decoded
    assert store.find(key, 25, FRAME_BYTES) is not None  # stored whole again


@pytest.mark.parametrize("budget", [0, FRAME_BYTES * 5])
def test_without_room_the_loop_cache_still_loops(tmp_path, media, budget: int) -> None:  # noqa: ANN001
    store = FrameStore(tmp_path / "templates", budget)
    src, decoded = frames_of(media.video, store, 60, tmp_path)
    assert src.source_frames == 25 and len(decoded) == 60
    assert decoded[25][0] == 23 and decoded[25][1] == decoded[23][1]
    assert store.entries() == [] and not (tmp_path / "loop-cache.raw").exists()


@pytest.mark.skipif(
    not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
    reason="this system has no /dev/full device to stand for a full disk",
)
@pytest.mark.parametrize("n_out", [60, 20])  # loops (needs its frames back) / does not
def test_a_full_state_disk_costs_the_cache_not_the_job(tmp_path, media, monkeypatch, n_out) -> None:  # noqa: ANN001
    store = FrameStore(tmp_path / "templates", 1 << 30)
    full = tmp_path / "full.tmp"
    full.symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
    monkeypatch.setattr(store, "temp_path", lambda key: full)
    notes: list[str] = []
    src, frames = frames_of(media.video, store, n_out, tmp_path, notes)
    plain, expected = frames_of(media.video, FrameStore(tmp_path / "off", 0), n_out, tmp_path)
    assert frames == expected and len(frames) == n_out
    assert any("not cached" in n and "No space left" in n for n in notes), notes
    assert store.entries() == [] and not full.exists() and Path("/dev/full").exists()
    assert not (tmp_path / "loop-cache.raw").exists()


@pytest.mark.parametrize("n_out", [60, 20])  # loops (needs its frames back) / does not
def test_a_disk_that_fills_half_way_keeps_the_frames_written_so_far(
    tmp_path,
    media,
    monkeypatch,
    n_out,  # noqa: ANN001
) -> None:
    """The cache file takes 10 frames, then the disk is full: the job goes on, and a looping
    one plays back those 10 frames from its own loop cache, copied there, with the rest."""
    import errno
    import io

    import dropbox_daemon.render.media.frames as frames_module

    class FillsUp(io.BufferedRandom):
        written = 0

        def write(self, b) -> int:  # noqa: ANN001
            nbytes = memoryview(b).nbytes
            if self.written + nbytes > 10 * FRAME_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += nbytes
            return super().write(b)

    store = FrameStore(tmp_path / "templates", 1 << 30)

    def opens(path, mode="r", *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(path).parent == store.folder and mode == "w+b":
            return FillsUp(io.FileIO(path, "w+"))
        return open(path, mode, *a, **kw)

    monkeypatch.setattr(frames_module, "open", opens, raising=False)
    notes: list[str] = []
    src, frames = frames_of(media.video, store, n_out, tmp_path, notes)
    plain, expected = frames_of(media.video, FrameStore(tmp_path / "off", 0), n_out, tmp_path)
    assert frames == expected and len(frames) == n_out
    assert any("not cached" in n and "No space left" in n for n in notes), notes
    assert store.entries() == [] and not list(store.folder.glob(".*.tmp"))
    assert not (tmp_path / "loop-cache.raw").exists()


def test_no_entry_is_started_without_room_on_the_state_disk(tmp_path, media, monkeypatch) -> None:  # noqa: ANN001
    import dropbox_daemon.render.media.frame_store as fs

    store = FrameStore(tmp_path / "templates", 1 << 40)
    free = fs.shutil.disk_usage(tmp_path).free
    assert store.room_for(10 * FRAME_BYTES)
    monkeypatch.setattr(fs, "KEEP_FREE", free)  # the disk is as good as full
    assert not store.room_for(10 * FRAME_BYTES)
    src, frames = frames_of(media.video, store, 60, tmp_path)
    assert len(frames) == 60 and store.entries() == []


def test_what_a_killed_job_left_half_written_is_removed(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    store = FrameStore(tmp_path / "templates", 1 << 30)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(gone.stdout)  # a process that has ended
    store.folder.mkdir(parents=True)
    left = store.folder / f".abc.{dead_pid}.tmp"
    left.write_bytes(b"half a frame")
    mine = store.folder / f".def.{os.getpid()}.tmp"  # a job of this process, still writing
    mine.write_bytes(b"...")
    store.temp_path("xyz")
    assert not left.exists() and mine.exists()
