"""A readers-writer lock: many searches at once, one write at a time, writers not starved."""
from __future__ import annotations

import contextlib
import threading

__all__ = ["RWLock"]


class RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read_guard = _ReadGuard(self)

    def read(self) -> "_ReadGuard":
        """``with lock.read():`` holds a read lock for the block (a plain object, not a generator:
        it is taken once per search, where a generator-based context manager costs several µs)."""
        return self._read_guard

    def _acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:  # only a writer waits for the readers to go
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _ReadGuard:
    """The context manager behind ``RWLock.read()``; stateless, so one per lock serves every thread."""

    __slots__ = ("_lock",)

    def __init__(self, lock: RWLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock._acquire_read()

    def __exit__(self, *exc) -> None:
        self._lock._release_read()
