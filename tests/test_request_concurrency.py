"""Requests are handled inline up to their first suspension (the pyfuse3 extension's fifth
patch): a request that waits (for a thread, for the readers of a file) must not hold up the
others, which are served meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import mounts

SMALL_FILES = 200


def _lower(tmp_path: Path) -> Path:
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(SMALL_FILES):
        (lower / f"d/f{i}").write_bytes(f"lower {i}\n".encode())
    (lower / "held").write_bytes(b"held\n")
    return lower


def _other_requests(mnt: Path) -> None:
    """Lookups, attributes, xattrs and reads of files the kernel has not seen yet (each one
    a few requests to the daemon)."""
    for i in range(SMALL_FILES):
        path = mnt / f"d/f{i}"
        os.stat(path)
        os.listxattr(path)
        assert path.read_bytes() == f"lower {i}\n".encode()


def _started(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _others_served_while_waiting(waiter: subprocess.Popen[str], first_line: str,
                                 mnt: Path) -> tuple[str, str]:
    """Once ``waiter`` has printed ``first_line`` (its request is on its way), other requests
    are answered while it is still waiting; then its output once it ends."""
    try:
        assert waiter.stdout is not None and waiter.stdout.readline() == first_line
        _other_requests(mnt)
        assert waiter.poll() is None, "the waiting request ended before the others were served"
        return waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait()


WRITE_OPEN = """
import sys
print("opening", flush=True)
try:
    open(sys.argv[1], "ab")
except OSError as e:
    print(e.errno)
"""


@pytest.mark.skipif(not mounts.PASSTHROUGH, reason="the wait is passthrough's (held readers)")
def test_requests_are_served_while_one_waits(tmp_path, pyunion, upper_and_work):
    """A write open of a file held open on its lower file waits in its handler for the
    readers (passthrough.RELEASE_WAIT); meanwhile the daemon answers everything else."""
    upper, _ = upper_and_work("p")
    mnt = pyunion([_lower(tmp_path)], upper)
    with open(mnt / "held", "rb"):
        writer = _started(WRITE_OPEN, str(mnt / "held"))
        out, _ = _others_served_while_waiting(writer, "opening\n", mnt)
    assert out.strip() == "26", out  # ETXTBSY once the wait was over


FSYNC = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, b"data")
print("syncing", flush=True)
os.fsync(fd)
print("synced", flush=True)
"""
FSYNC_DELAY_US = 3_000_000


def _delaying_fsyncs(pid: int) -> subprocess.Popen[str]:
    """strace attached to the daemon (every thread, and those it starts), delaying each of its
    fsync calls by FSYNC_DELAY_US: a slow disk, deterministically."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(pid), "-e", "trace=fsync,fdatasync",
         "-e", f"inject=fsync,fdatasync:delay_enter={FSYNC_DELAY_US}"],
        stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{pid}/status")
    for _ in range(500):  # attached once the daemon has a tracer
        if "TracerPid:\t0\n" not in status.read_text():
            return tracer
        if tracer.poll() is not None:
            raise AssertionError(f"strace failed: {tracer.stderr.read() if tracer.stderr else ''}")
        time.sleep(0.01)
    tracer.kill()
    raise AssertionError("strace did not attach to the daemon")


def test_a_slow_fsync_does_not_stall_other_requests(tmp_path, pyunion_daemon, upper_and_work):
    """fsync runs in a worker thread of the daemon: while one is slow (each fsync system call
    of the daemon delayed by strace), a few hundred other requests are answered."""
    upper, _ = upper_and_work("p")
    mnt, proc = pyunion_daemon([_lower(tmp_path)], upper, options=[mounts.NO_PASSTHROUGH])
    (mnt / "synced").write_bytes(b"")
    tracer = _delaying_fsyncs(proc.pid)
    try:
        syncer = _started(FSYNC, str(mnt / "synced"))
        out, err = _others_served_while_waiting(syncer, "syncing\n", mnt)
    finally:
        tracer.kill()
        tracer.wait()
    assert out == "synced\n", err
