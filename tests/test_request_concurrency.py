"""Requests are handled inline up to their first suspension (the pyfuse3 extension's fifth
patch): a request that waits (for a thread, for the readers of a file) must not hold up the
others, which are served meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
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
        try:
            assert writer.stdout.readline() == "opening\n"
            _other_requests(mnt)
            assert writer.poll() is None, "the waiting open ended before the others were served"
            out, _ = writer.communicate(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert out.strip() == "26", out  # ETXTBSY once the wait was over


FSYNC = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
print("syncing", flush=True)
os.fsync(fd)
print("synced", flush=True)
"""


def test_a_slow_fsync_does_not_stall_other_requests(tmp_path, pyunion, upper_and_work):
    """fsync runs in a worker thread of the daemon: a large one (daemon-served writes left
    256 MiB dirty in the upper's page cache) is still going when a few hundred other
    requests have been answered."""
    upper, _ = upper_and_work("p")
    mnt = pyunion([_lower(tmp_path)], upper, options=[mounts.NO_PASSTHROUGH])
    chunk = os.urandom(1 << 20)
    with open(mnt / "big", "wb") as f:
        for _ in range(256):
            f.write(chunk)
    syncer = _started(FSYNC, str(mnt / "big"))
    try:
        assert syncer.stdout.readline() == "syncing\n"
        _other_requests(mnt)
        assert syncer.poll() is None, "the fsync ended before the other requests were served"
        out, err = syncer.communicate(timeout=120)
    finally:
        if syncer.poll() is None:
            syncer.kill()
            syncer.wait()
    assert out == "synced\n", err
