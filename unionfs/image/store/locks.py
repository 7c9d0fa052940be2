"""File locks (flock) that die with their process: a killed command never leaves a lock held.

A lock of one item (a layer being unpacked, a blob being downloaded) is taken with
``remove_when_free``: its holder removes the file before letting go, so no empty ``.lock`` files
pile up. Whoever was waiting on the removed file then holds a lock on a file no longer in the
directory; it notices (the path no longer names the file it locked) and locks the path again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


class FileLock:
    """An flock on ``path`` (created if missing), shared or exclusive."""

    def __init__(self, path: str, *, remove_when_free: bool = False) -> None:
        self.path = path
        self.remove_when_free = remove_when_free
        self._fd: int | None = None
        self._exclusive = False

    def acquire(self, *, exclusive: bool, blocking: bool = True) -> bool:
        while True:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            if not blocking:
                flags |= fcntl.LOCK_NB
            try:
                fcntl.flock(self._fd, flags)
            except BlockingIOError:
                return False
            if not self.remove_when_free or self._still_named():
                self._exclusive = exclusive
                return True
            os.close(self._fd)  # removed by the holder we waited for: lock the path anew
            self._fd = None

    def _still_named(self) -> bool:
        assert self._fd is not None
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            if self.remove_when_free and self._exclusive:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
            self._exclusive = False


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool = True,
           remove_when_free: bool = False) -> Iterator[FileLock]:
    lock = FileLock(path, remove_when_free=remove_when_free)
    lock.acquire(exclusive=exclusive)
    try:
        yield lock
    finally:
        lock.release()


def is_unlocked(path: str) -> bool:
    """True if nobody holds a lock on ``path`` (its owner is gone, or it does not exist)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
