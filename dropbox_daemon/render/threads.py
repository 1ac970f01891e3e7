"""The render chain's threads: bounded producer/consumer steps, each with its busy time.

Each step runs its iterator in its own thread and hands items over through a
small queue, so decoding, the engine, compositing and encoding overlap. The
heavy work in every stage (PyAV, OpenCV, numpy, pipe writes) releases the GIL.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class Meter:
    """Busy seconds per stage: time inside a stage minus the time it waited for input."""

    def __init__(self) -> None:
        self.busy: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, seconds: float) -> None:
        with self._lock:
            self.busy[key] = self.busy.get(key, 0.0) + seconds

    def timed(self, key: str, it: Iterator[T]) -> Iterator[T]:
        """Count the time spent producing each item of `it` under `key`."""
        return self._clocked(key, it, 1.0)

    def waiting(self, key: str, it: Iterator[T]) -> Iterator[T]:
        """Subtract from `key` the time its consumer spends waiting on `it`."""
        return self._clocked(key, it, -1.0)

    def _clocked(self, key: str, it: Iterator[T], sign: float) -> Iterator[T]:
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.add(key, sign * (time.perf_counter() - t))
                return
            self.add(key, sign * (time.perf_counter() - t))
            yield item


class Threaded(Generic[T]):
    """Run `source` in a thread; iterate the result here. close() stops the thread."""

    def __init__(self, source: Iterator[T], name: str, maxsize: int = 8) -> None:
        self.source = source
        self.q: queue.Queue[object] = queue.Queue(maxsize)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"stage-{name}", daemon=True)
        self.thread.start()

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.source:
                if not self._put(item):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self.error = e
        finally:
            self._put(_END)
            close = getattr(self.source, "close", None)
            if close is not None and self.stop.is_set():
                try:
                    close()
                except Exception:  # noqa: BLE001 - already stopping
                    pass

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self.q.get()
                if item is _END:
                    if self.error is not None:
                        raise self.error
                    return
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
