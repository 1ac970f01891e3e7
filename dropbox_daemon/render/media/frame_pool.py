"""Frame buffers of one size, reused within a job.

A 720p BGR frame is 2.6 MiB. Allocated afresh for every frame by the decode, compose and
replay threads, such buffers land in glibc's per-thread arenas once its dynamic mmap
threshold has risen past their size; freed from another thread, half-used arenas stay
resident, and the worker's peak grew by a third over what the frames in flight need
(docs/benchmarks.md). Handing each one its own mapping instead costs a page fault per 4 KiB
on every frame (measured: compose 4x slower, the job 30 % slower). A pool keeps both
off: buffers are mapped once, outside malloc, and come back when the last array that
sees them is gone, so the resident set is the frames actually in flight. The mappings are
unmapped when the pool is dropped with its job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading
import weakref
from collections import deque

import numpy as np

from dropbox_daemon.errors import RenderError


class FramePool:
    """take() gives a writable (h, w, c) uint8 array over a pooled buffer; the buffer is
    reused once no array (nor view, nor slice) of it is left. At most `keep` idle buffers
    are held; more are unmapped as they come back."""

    def __init__(self, shape: tuple[int, ...], keep: int = 64) -> None:
        self.shape = shape
        self.nbytes = int(np.prod(shape))
        self.keep = keep
        self.mapped = 0  # buffers ever mapped by this pool (a measure of frames in flight)
        self._idle: deque[mmap.mmap] = deque()
        self._lock = threading.Lock()

    def take(self) -> np.ndarray:
        with self._lock:
            raw = self._idle.pop() if self._idle else None
            if raw is None:
                raw = mmap.mmap(-1, self.nbytes)
                self.mapped += 1
        # every view, slice or reshape of the result has `flat` as its base (numpy collapses
        # a view's base to the first array over a foreign buffer), so `flat` outlives them
        # all; when it goes, the buffer is free again
        flat = np.frombuffer(raw, np.uint8)
        weakref.finalize(flat, self._give_back, raw)
        return flat.reshape(self.shape)

    def copy_of(self, frame: np.ndarray) -> np.ndarray:
        """`frame` copied into a pooled buffer (a fresh array where its shape differs)."""
        if frame.shape != self.shape or frame.dtype != np.uint8:
            return frame.copy()
        out = self.take()
        np.copyto(out, frame)
        return out

    def _give_back(self, raw: mmap.mmap) -> None:
        # called as the last array goes, before numpy has released its hold on the buffer:
        # a buffer not kept is unmapped when that hold and this reference are gone
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(raw)

    def close(self) -> None:
        """Let go of the idle buffers (unmapped as they are dropped; those still in use go
        when their arrays do)."""
        with self._lock:
            self._idle.clear()
            self.keep = 0


class FramesOnDisk:
    """The template's frames that are already in a raw file (the template cache or the loop
    cache), readable again by index until release(): a frame that waits for the engine and
    the compositor need not be held in memory meanwhile (16-22 frames at 720p: 60 MB).

    The file is held through a duplicate of its descriptor, so the frames stay readable when
    the decoder closes it, a full disk makes it give up the entry, or another job evicts it.
    Frames are added only once written whole; reads and release() are serialized, so a
    descriptor is never read after it is closed (nor once its number is another file's)."""

    def __init__(self, pool: FramePool) -> None:
        self.pool = pool
        self._fd = -1
        self._count = 0  # frames 0 .. count-1 are in the file
        self._lock = threading.Lock()

    def adopt(self, fd: int, frames: int = 0) -> None:
        """Take `fd`'s file as the frames' backing, `frames` of them written; ignored where
        a file is held already (the frames stay readable from it)."""
        with self._lock:
            if self._fd < 0:
                self._fd, self._count = os.dup(fd), frames

    def move_to(self, fd: int) -> None:
        """The frames now live in `fd`'s file, at the same places (a full disk made the
        decoder give up the template cache and copy them into the job's loop cache): the
        given-up file is let go, so its space comes back now, not when the job ends."""
        whole = os.fstat(fd).st_size // self.pool.nbytes
        new = os.dup(fd)
        with self._lock:
            old, self._fd = self._fd, new
            self._count = min(self._count, whole)
        if old >= 0:
            os.close(old)

    def written(self, frames: int) -> None:
        """The first `frames` frames are whole in the adopted file."""
        with self._lock:
            self._count = max(self._count, frames)

    def has(self, index: int) -> bool:
        with self._lock:
            return self._fd >= 0 and 0 <= index < self._count

    def read(self, index: int) -> np.ndarray:
        """Frame `index` read back into a writable pooled buffer."""
        out = self.pool.take()
        with self._lock:
            if not (self._fd >= 0 and 0 <= index < self._count):
                raise ValueError(f"frame {index} is not on disk")
            got = os.preadv(self._fd, [out], index * self.pool.nbytes)
        if got != self.pool.nbytes:
            raise RenderError(
                f"frame cache read back {got} of {self.pool.nbytes} bytes at frame {index}",
                code="io_error",
                stage="rendering",
                hint="check the disk of the state folder (the template cache) and the inbox",
            )
        return out

    def release(self) -> None:
        with self._lock:
            fd, self._fd, self._count = self._fd, -1, 0
        if fd >= 0:
            os.close(fd)


def return_free_memory() -> None:
    """Hand the pages malloc holds free back to the system (glibc's malloc_trim: every
    arena, not only the top of the heap). Called between jobs and after a model load, never
    while rendering (the next allocations would fault the pages in again): loading frees the
    checkpoint's tensors in the middle of the heap, and a job's stage threads leave their
    arenas' peak resident, where the next job would start from it (measured: the worker idle
    at 385 MB after loading, 668 MB after a 720p job; trimmed, back near the first)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
