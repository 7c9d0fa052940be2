"""File locks (flock) that die with their process: a killed command never leaves a lock held."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


class FileLock:
    """An flock on ``path`` (created if missing), shared or exclusive."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, exclusive: bool, blocking: bool = True) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not blocking:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(self._fd, flags)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool = True) -> Iterator[FileLock]:
    lock = FileLock(path)
    lock.acquire(exclusive=exclusive)
    try:
        yield lock
    finally:
        lock.release()


def is_unlocked(path: str) -> bool:
    """True if nobody holds a lock on ``path`` (its owner is gone)."""
    lock = FileLock(path)
    try:
        return lock.acquire(exclusive=True, blocking=False)
    except FileNotFoundError:
        return True
    finally:
        lock.release()
