"""Mount daemons as processes: which points are mounted, whether a recorded daemon still runs,
waiting for one to exit, unmounting one. Used by the store (to forget dead mounts), by image
mounts and by container rootfs mounts; it knows nothing of the store itself.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from unionfs.fs import syscalls
from unionfs.image.errors import ImageError


def mounted_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4].replace("\\040", " ") for line in f}


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def process_alive(pid: int | None, *markers: bytes) -> bool:
    """Whether ``pid`` runs (not a zombie) a command line holding one of ``markers``: a pid
    recorded earlier may since belong to another program."""
    if not pid or not _running(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(marker in cmdline for marker in markers)


def wait_exit(pid: int | None, timeout: float = 10.0) -> None:
    """Waits (bounded) until ``pid`` has exited or is a zombie: on a pidfd, which is readable
    from the moment it exits, so that ``run --rm`` and ``umount`` lose no polling interval."""
    if not pid:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already, or a kernel without pidfds: poll
        deadline = time.monotonic() + timeout
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.025)
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def mount_is_live(mountpoint: str, pid: int | None) -> bool:
    return process_alive(pid, b"mount_helper") and mountpoint in mounted_points()


def unmount_daemon(point: str, pid: int | None, what: str, *, wait: float = 10.0) -> None:
    """``umount`` of a pyunion mount, then a wait (of at most ``wait`` seconds) for its daemon
    to exit."""
    if os.geteuid() == 0:  # the system call umount(8) would make, without its process
        try:
            syscalls.umount(point)
            wait_exit(pid, wait)
            return
        except OSError:
            pass  # (busy, or not a mount point any more): umount(8) says which
    result = subprocess.run(["umount", point], capture_output=True, text=True)
    if result.returncode != 0 and point in mounted_points():
        lines = result.stderr.strip().splitlines()
        raise ImageError(f"cannot unmount {what}: {lines[-1] if lines else 'busy'}")
    wait_exit(pid, wait)
