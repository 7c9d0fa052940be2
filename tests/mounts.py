"""Mounting and unmounting for tests: pyunion, kernel overlayfs and fuse-overlayfs.

Every test mount goes through these context managers, which always unmount in ``finally``
(lazy unmount as the last resort) and only ever signal the daemon process they started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from unionfs.fs import passthrough

# Whether this run's pyunion mounts use FUSE passthrough (as root on a kernel that has it,
# unless PYUNION_PASSTHROUGH=off, which .ci/run sets for a second run of the differential
# tests). Tests of what only the daemon-served mode guarantees mount with NO_PASSTHROUGH.
PASSTHROUGH = (os.environ.get("PYUNION_PASSTHROUGH", "auto") != "off"
               and passthrough.unavailable_because() is None)
NO_PASSTHROUGH = "passthrough=off"

READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 60.0  # (a daemon finishes in-flight fsyncs first: slow on a loaded machine)


class MountError(Exception):
    """A mount command failed; the message carries its stderr."""


def mounted_paths() -> set[str]:
    """Mount points currently listed in /proc/self/mountinfo."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            points.add(point.encode().decode("unicode_escape"))
    return points


def is_mounted(path: os.PathLike | str) -> bool:
    return os.path.realpath(path) in mounted_paths()


def mount_type(path: os.PathLike | str) -> str | None:
    """The filesystem type of the mount at ``path`` (e.g. 'fuse.pyunion'), or None."""
    target = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                found = fields[fields.index("-") + 1]
    return found


def _umount(mnt: str, *args: str) -> bool:
    result = subprocess.run(["umount", *args, mnt], capture_output=True, timeout=30)
    return result.returncode == 0


# How long a busy mount gets before the lazy unmount. A lazily unmounted kernel overlay whose
# upper (index=on) is mounted again fails with "already mounted": on a loaded machine a
# just-closed file has kept a mount busy for over 2 s.
BUSY_WAIT = 10.0


def unmount(mnt: os.PathLike | str, proc: subprocess.Popen | None = None) -> None:
    """Unmount ``mnt`` and wait for ``proc`` (the daemon we started, if any) to exit.

    Tries a normal unmount for up to ``BUSY_WAIT`` seconds (a just-closed file can keep it busy
    for a moment), then a lazy one; kills only ``proc``, by pid, if it does not exit after
    that.
    """
    mnt = os.path.realpath(mnt)
    deadline = time.monotonic() + BUSY_WAIT
    while is_mounted(mnt) and not _umount(mnt):
        if time.monotonic() > deadline:
            _umount(mnt, "-l")
            break
        time.sleep(0.1)
    if proc is None:
        return
    try:
        proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired as timeout:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=EXIT_TIMEOUT)
        if is_mounted(mnt):
            _umount(mnt, "-l")
        msg = f"pyunion daemon {proc.pid} did not exit after unmount of {mnt}"
        raise MountError(msg) from timeout


def pyunion_command(
    lowers: Sequence[os.PathLike | str],
    upper: os.PathLike | str | None,
    mnt: os.PathLike | str,
    options: Sequence[str] = (),
) -> list[str]:
    """The ``mount.pyunion`` command line (foreground mode) for the given stack."""
    cmd = [sys.executable, "-m", "mount_helper", ":".join(str(p) for p in lowers)]
    if upper is not None:
        cmd.append(str(upper))
    cmd += [str(mnt), "-f"]
    if options:
        cmd += ["-o", ",".join(options)]
    return cmd


def start_pyunion(cmd: list[str], mnt: os.PathLike | str) -> subprocess.Popen:
    """Start a foreground ``mount.pyunion`` and wait until its mount is in the mount table."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + READY_TIMEOUT
    while not is_mounted(mnt):
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise MountError(f"mount.pyunion exited with {proc.returncode}: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise MountError(f"mount.pyunion did not mount {mnt} in {READY_TIMEOUT} s")
        time.sleep(0.02)
    return proc


@contextlib.contextmanager
def pyunion_mounted(
    lowers: Sequence[os.PathLike | str],
    upper: os.PathLike | str | None,
    mnt: os.PathLike | str,
    options: Sequence[str] = (),
) -> Iterator[Path]:
    """Mount a pyunion stack at ``mnt`` for the duration of the block."""
    with _daemon_mounted(pyunion_command(lowers, upper, mnt, options), mnt) as path:
        yield path


@contextlib.contextmanager
def _daemon_mounted(cmd: list[str], mnt: os.PathLike | str) -> Iterator[Path]:
    """Runs a foreground FUSE daemon for the duration of the block; unmounts, waits for it."""
    proc = start_pyunion(cmd, mnt)
    try:
        yield Path(mnt)
    finally:
        try:
            unmount(mnt, proc)
        finally:
            if proc.stderr:
                proc.stderr.close()


@contextlib.contextmanager
def overlay_mounted(
    lowers: Sequence[os.PathLike | str],
    upper: os.PathLike | str | None,
    workdir: os.PathLike | str | None,
    mnt: os.PathLike | str,
    options: Sequence[str] = ("redirect_dir=on", "index=on"),
) -> Iterator[Path]:
    """Mount kernel overlayfs (the reference) at ``mnt`` for the duration of the block."""
    opts = ["lowerdir=" + ":".join(str(p) for p in lowers)]
    if upper is not None:
        opts += [f"upperdir={upper}", f"workdir={workdir}", *options]
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", ",".join(opts), str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise MountError(f"kernel overlay mount failed: {result.stderr.strip()}")
    try:
        yield Path(mnt)
    finally:
        unmount(mnt)


@contextlib.contextmanager
def fuse_overlayfs_mounted(
    lowers: Sequence[os.PathLike | str],
    upper: os.PathLike | str | None,
    workdir: os.PathLike | str | None,
    mnt: os.PathLike | str,
) -> Iterator[Path]:
    """Mount fuse-overlayfs at ``mnt`` for the duration of the block (foreground, our pid)."""
    opts = ["lowerdir=" + ":".join(str(p) for p in lowers)]
    if upper is not None:
        opts += [f"upperdir={upper}", f"workdir={workdir}"]
    cmd = ["fuse-overlayfs", "-f", "-o", ",".join(opts), str(mnt)]
    with _daemon_mounted(cmd, mnt) as path:
        yield path
