"""Mount daemons started ahead of their mount (``prestart_daemon``): a ``mount.pyunion`` that
imports pyfuse3 and trio, most of a daemon's start-up, while the caller works out what to
mount. Kept apart from ``unionfs.api`` and its imports, so that a command can start it first
thing (``pyunion run``, ``mount``, ``mount-image``)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator


def daemon_stderr_file() -> io.BufferedRandom:
    """A file (in memory, unnamed) for a daemon's stderr: a pipe nobody reads would block a
    daemon that logs (-o debug) and hang the filesystem. (``memfd_create`` rather than
    ``tempfile``, whose import is 5 ms of the critical path of ``pyunion run``.)"""
    return os.fdopen(os.memfd_create("mount.pyunion-stderr"), "w+b")


class WarmDaemon:
    """A ``mount.pyunion`` started ahead of its mount: it imports pyfuse3 and trio (most of a
    daemon's start-up) while this process works out what to mount, then reads its command
    line from ``args_fd``; at end of file with nothing written it exits."""

    def __init__(self) -> None:
        self.stderr = daemon_stderr_file()
        args_read, self.args_fd = os.pipe()
        self.ready_fd, self.child_ready_fd = os.pipe()
        try:
            with interrupts_held():
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "mount_helper", f"--args-from-fd={args_read}"],
                    pass_fds=[args_read, self.child_ready_fd], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True)
        except BaseException:
            self.discard()
            raise
        finally:
            os.close(args_read)
            os.close(self.child_ready_fd)

    def hand_over(self, args: list[str]) -> bool:
        """Gives the daemon its command line; False if it is gone (start one the usual way)."""
        try:
            os.write(self.args_fd, b"\0".join(os.fsencode(a) for a in args))
        except BrokenPipeError:
            return False
        finally:
            os.close(self.args_fd)
            self.args_fd = -1
        return True

    def discard(self) -> None:
        """Lets an unused daemon go (end of file on its pipe) and closes what is ours."""
        for fd in (self.args_fd, self.ready_fd):
            if fd >= 0:
                os.close(fd)
        self.args_fd = self.ready_fd = -1
        self.stderr.close()


_warm: WarmDaemon | None = None


def prestart_daemon() -> None:
    """Starts the next mount's daemon now, so that its start-up overlaps the caller's work
    (``pyunion run`` resolving the image and writing the bundle); the next ``Mount.start()``
    of this process hands it its command line. Unused, it exits when this process does."""
    global _warm
    if _warm is None:
        _warm = WarmDaemon()


def take_warm_daemon() -> WarmDaemon | None:
    """The daemon started ahead, if any, now the caller's."""
    global _warm
    warm, _warm = _warm, None
    return warm


def offer(warm: WarmDaemon) -> None:
    """Makes ``warm`` the daemon the next mount of this process uses (the snapshotter's pool
    of daemons started ahead hands them out so)."""
    global _warm
    if _warm is not None:
        _warm.discard()
    _warm = warm


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Holds SIGINT/SIGTERM back (in the main thread) while a daemon is being spawned.

    A KeyboardInterrupt inside ``subprocess.Popen`` would leave a started daemon without
    anyone knowing its pid; held back, it is raised right after, when it can be stopped.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
