"""The frame pool: a buffer comes back only when no array, view or slice of it is left."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dropbox_daemon.render.media.frame_pool import FramePool, FramesOnDisk


def test_a_buffer_is_reused_only_after_its_last_view_is_gone() -> None:
    pool = FramePool((4, 6, 3))
    a = pool.take()
    a[:] = 7
    region = a[1:3, 2:5]  # a slice, as compose and the engine take them
    flipped = region[::-1]
    del a
    b = pool.take()  # `region` still sees the first buffer: this one must be another
    b[:] = 9
    assert (region == 7).all() and (flipped == 7).all()
    assert pool.mapped == 2
    del region, flipped
    c = pool.take()  # now the first buffer is free, and taken again
    assert pool.mapped == 2
    c[:] = 1
    assert (b == 9).all()


def test_copy_of_keeps_the_pixels_and_falls_back_for_other_shapes() -> None:
    pool = FramePool((4, 6, 3))
    frame = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    out = pool.copy_of(frame)
    assert out.flags.writeable and (out == frame).all() and pool.mapped == 1
    other = pool.copy_of(np.zeros((2, 2, 3), np.uint8))
    assert other.shape == (2, 2, 3) and pool.mapped == 1


def test_idle_buffers_beyond_keep_are_let_go_and_close_lets_go_of_all() -> None:
    pool = FramePool((8, 8, 3), keep=2)
    held = [pool.take() for _ in range(5)]
    del held
    assert len(pool._idle) == 2
    pool.close()
    assert len(pool._idle) == 0
    fresh = pool.take()  # a closed pool still hands out buffers, and keeps none back
    del fresh
    assert len(pool._idle) == 0


def test_threads_taking_and_dropping_never_share_a_buffer() -> None:
    pool = FramePool((16, 16, 3), keep=8)
    bad: list[str] = []

    def work(mark: int) -> None:
        for _ in range(300):
            f = pool.take()
            f[:] = mark
            if not (f == mark).all():
                bad.append(f"thread {mark} saw another thread's pixels")
            del f

    threads = [threading.Thread(target=work, args=(k,)) for k in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert pool.mapped <= 4 + 1


def test_frames_on_disk_are_read_back_while_the_file_is_gone(tmp_path) -> None:  # noqa: ANN001
    pool = FramePool((2, 3, 3))
    disk = FramesOnDisk(pool)
    frames = [np.full((2, 3, 3), k, np.uint8) for k in range(4)]
    path = tmp_path / "frames.raw"
    with open(path, "w+b") as f:
        disk.adopt(f.fileno())
        for k, fr in enumerate(frames[:3]):
            f.write(fr.data)
            f.flush()
            disk.written(k + 1)
    path.unlink()  # closed and removed, as a given-up cache entry is: still readable
    assert [disk.has(k) for k in range(4)] == [True, True, True, False]
    back = disk.read(2)
    assert back.flags.writeable and (back == 2).all()
    with pytest.raises(ValueError, match="frame 3 is not on disk"):
        disk.read(3)
    disk.release()
    assert not disk.has(0)
    with pytest.raises(ValueError):
        disk.read(0)


def test_a_second_file_does_not_replace_the_first(tmp_path) -> None:  # noqa: ANN001
    pool = FramePool((1, 1, 3))
    disk = FramesOnDisk(pool)
    (tmp_path / "a").write_bytes(b"\x01" * 6)
    (tmp_path / "b").write_bytes(b"\x09" * 6)
    with open(tmp_path / "a", "rb") as a, open(tmp_path / "b", "rb") as b:
        disk.adopt(a.fileno(), 2)
        disk.adopt(b.fileno(), 2)  # frames at the same places: the first file stays
    assert (disk.read(1) == 1).all()
    disk.release()


def wav2lip_engine(tmp_path):  # noqa: ANN001, ANN201
    from w2l_fixture import calibrated_net, save_published

    from dropbox_daemon.render.engines.wav2lip import Wav2LipEngine

    engine = Wav2LipEngine(
        save_published(calibrated_net(), tmp_path / "w.pth"), precision="fp32", batch=48
    )
    engine.load()
    return engine


def test_frames_waiting_on_the_engine_are_not_held_in_memory(tmp_path, media) -> None:  # noqa: ANN001
    """A batch of 48 on a 50-frame job: the engine keeps crops, the chain keeps the frames'
    places in the cache file; the frames in memory are those in the queues, not the batch."""
    from test_render_steps import run_chain

    engine = wav2lip_engine(tmp_path)
    seen: list = []
    rendered, p, _said = run_chain(tmp_path / "a", media, engine, keep_source=seen)
    assert rendered.frames == p.n_frames == 50
    assert seen[0].pool.mapped < 40, f"{seen[0].pool.mapped} frame buffers for 50 frames"
    # the same job with every frame held in memory gives the same pictures
    held: list = []
    again, _p, _said = run_chain(tmp_path / "b", media, engine, keep_source=held, on_disk=False)
    assert held[0].pool.mapped >= 48
    assert (again.poster == rendered.poster).all()


def test_a_frame_cut_short_on_disk_fails_the_job_with_a_reason(tmp_path) -> None:  # noqa: ANN001
    from dropbox_daemon.errors import RenderError

    disk = FramesOnDisk(FramePool((2, 2, 3)))
    (tmp_path / "short").write_bytes(b"\x00" * 20)  # 12-byte frames: the second is cut at 8
    with open(tmp_path / "short", "rb") as f:
        disk.adopt(f.fileno(), 2)
    with pytest.raises(RenderError) as e:
        disk.read(1)
    assert e.value.code == "io_error" and "8 of 12 bytes at frame 1" in e.value.message
    disk.release()


def test_frames_moved_to_another_file_let_the_first_go(tmp_path) -> None:  # noqa: ANN001
    disk = FramesOnDisk(FramePool((1, 1, 3)))
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"\x01" * 9)
    second.write_bytes(b"\x02" * 6)  # two whole frames copied of the three
    with open(first, "rb") as a:
        disk.adopt(a.fileno(), 3)
    first.unlink()
    with open(second, "rb") as b:
        disk.move_to(b.fileno())
    assert [disk.has(k) for k in range(3)] == [True, True, False]
    assert (disk.read(1) == 2).all()
    import os

    # the first file's descriptor is closed: nothing of this process holds it any more
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used
            continue
    assert not any(h.startswith(str(first)) for h in held)
    disk.release()
