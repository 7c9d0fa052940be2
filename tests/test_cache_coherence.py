"""With the default long cache timeouts, a change made through the mount is visible at once
through every path that could hold a stale cache; with timeout=0, so is a change made to a
lower layer underneath (the option for lowers that do change)."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import struct
from pathlib import Path

import pytest

from tests import mounts
from unionfs.fs.state import PYFUSE3_CACHE_READDIR


def _lower(root: Path) -> Path:
    lower = root / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d/a").write_bytes(b"lower a\n")
    os.link(lower / "d/a", lower / "b")
    (lower / "d/keep").write_bytes(b"keep\n")
    return lower


def _warm(mnt: Path) -> None:
    """Fill every kernel cache: names, attributes, pages, the listing."""
    for _ in range(2):
        assert sorted(os.listdir(mnt / "d")) == ["a", "keep"]
        os.stat(mnt / "b")
        (mnt / "d/a").read_bytes()
        (mnt / "b").read_bytes()


def test_changes_through_the_mount_are_seen_everywhere(tmp_path, upper_and_work, pyunion):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    # A reader held across the copy-up sees the new data in the daemon-served mode; with
    # passthrough it reads its lower file (tests/test_passthrough.py).
    mnt = pyunion([lower], upper, options=[mounts.NO_PASSTHROUGH])
    _warm(mnt)
    reader = open(mnt / "b", "rb")  # another name of the same file, opened before the change
    with open(mnt / "d/a", "ab") as f:  # copy-up of a hard-linked lower file
        f.write(b"appended\n")
    assert (mnt / "b").read_bytes() == b"lower a\nappended\n", "other hard-link name"
    assert os.stat(mnt / "b").st_size == len(b"lower a\nappended\n")
    assert os.stat(mnt / "b").st_nlink == 2
    assert reader.read() == b"lower a\nappended\n", "fd opened before the copy-up"
    reader.close()
    os.chmod(mnt / "b", 0o600)
    assert os.stat(mnt / "d/a").st_mode & 0o777 == 0o600, "attributes through the other name"
    (mnt / "d/new").write_bytes(b"new\n")
    os.unlink(mnt / "d/keep")
    assert sorted(os.listdir(mnt / "d")) == ["a", "new"], "the parent's listing"
    os.rename(mnt / "d", mnt / "e")
    assert not (mnt / "d").exists()
    assert sorted(os.listdir(mnt / "e")) == ["a", "new"]
    assert (mnt / "e/a").read_bytes() == b"lower a\nappended\n"


def test_timeout_zero_sees_lower_changes(tmp_path, upper_and_work, pyunion):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    mnt = pyunion([lower], upper, options=["timeout=0"])
    _warm(mnt)
    (lower / "d/added").write_bytes(b"added underneath\n")
    (lower / "d/keep").write_bytes(b"changed underneath, longer\n")
    assert sorted(os.listdir(mnt / "d")) == ["a", "added", "keep"]
    assert (mnt / "d/added").read_bytes() == b"added underneath\n"
    assert os.stat(mnt / "d/keep").st_size == len(b"changed underneath, longer\n")
    assert (mnt / "d/keep").read_bytes() == b"changed underneath, longer\n"


def _d_inos(path: Path) -> dict[str, int]:
    """Names and d_ino of a listing as getdents64 gives them, "." and ".." included (Python's
    scandir leaves the dot entries out; ``ls -i`` stats ".." instead of reading its d_ino)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(1 << 16)
    entries = {}
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while (n := libc.syscall(SYS_GETDENTS64, fd, buf, len(buf))) > 0:
            pos = 0
            while pos < n:  # struct linux_dirent64: ino, off, reclen, type, name
                ino, _off, reclen = struct.unpack_from("QqH", buf.raw, pos)
                name = buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
                entries[os.fsdecode(name)] = ino
                pos += reclen
        assert n == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return entries


SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(platform.machine())


@pytest.mark.skipif(SYS_GETDENTS64 is None, reason="getdents64 number unknown here")
def test_cached_listings_follow_internal_changes(tmp_path, upper_and_work, pyunion):
    """Listings the kernel may keep (cache_readdir, with the pyfuse3 extension) stay right
    where pyunion changes a directory without a request on it: hard-link siblings linked in
    the upper by another name's copy-up, the ".." of a directory moved elsewhere."""
    lower = _lower(tmp_path)
    (lower / "x/sub").mkdir(parents=True)
    (lower / "y").mkdir()
    upper, _ = upper_and_work("p")
    mnt = pyunion([lower], upper)
    before = {}
    for _ in range(2):
        before = {d: _d_inos(mnt / d) for d in (".", "d", "x/sub")}
    with open(mnt / "d/a", "ab") as f:  # copy-up; links the other name, "b", in the upper
        f.write(b"appended\n")
    assert _d_inos(mnt) == before["."], "the sibling's directory: same names and d_ino"
    assert _d_inos(mnt / "d") == before["d"]
    for name, ino in _d_inos(mnt).items():
        if name not in (".", ".."):
            assert os.lstat(mnt / name).st_ino == ino, name
    os.rename(mnt / "x/sub", mnt / "y/sub")
    moved = _d_inos(mnt / "y/sub")
    assert moved["."] == before["x/sub"]["."]
    assert moved[".."] == os.stat(mnt / "y").st_ino, "the moved directory's .. entry"


def test_symlink_targets(tmp_path, upper_and_work, pyunion):
    """Symlink targets (which the kernel may cache, with the pyfuse3 extension) read right
    after a copy-up of the link and after a new link replaces it under the same name."""
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "s").symlink_to("old-target")
    upper, _ = upper_and_work("p")
    mnt = pyunion([lower], upper)
    for _ in range(2):
        assert os.readlink(mnt / "s") == "old-target"
    os.chown(mnt / "s", 1234, 1234, follow_symlinks=False)  # a copy-up of the link
    assert os.readlink(mnt / "s") == "old-target"
    os.symlink("new-target", mnt / "t")
    os.rename(mnt / "t", mnt / "s")
    assert os.readlink(mnt / "s") == "new-target"
    os.unlink(mnt / "s")
    os.symlink("third", mnt / "s")
    assert os.readlink(mnt / "s") == "third"


@pytest.mark.parametrize("timeout", ["3600", "0"])
def test_what_the_kernel_caches(tmp_path, upper_and_work, pyunion_daemon, timeout):
    """Listings and symlink targets are cached (no repeated readdir or readlink requests) when
    the installed pyfuse3 can ask for it and timeout > 0; with timeout=0 or a plain pyfuse3,
    every read reaches the daemon."""
    lower = _lower(tmp_path)
    (lower / "s").symlink_to("b")
    upper, _ = upper_and_work("p")
    stats = tmp_path / "stats.json"
    mnt, proc = pyunion_daemon([lower], upper, options=[f"stats={stats}", f"timeout={timeout}"])
    passes = 5
    for _ in range(passes):
        assert sorted(os.listdir(mnt / "d")) == ["a", "keep"]
        assert os.readlink(mnt / "s") == "b"
    mounts.unmount(mnt, proc)
    counts = json.loads(stats.read_text())
    readdirs, readlinks = counts.get("readdir", 0), counts.get("readlink", 0)
    if timeout != "0" and PYFUSE3_CACHE_READDIR:
        # Some slack: other processes dropping the kernel's caches (tests do) cost a refill.
        assert readdirs < 2 * passes and readlinks < passes, counts
    else:
        assert readdirs == 2 * passes and readlinks == passes, counts
