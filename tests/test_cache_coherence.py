"""With the default long cache timeouts, a change made through the mount is visible at once
through every path that could hold a stale cache; with timeout=0, so is a change made to a
lower layer underneath (the option for lowers that do change)."""

from __future__ import annotations

import os
from pathlib import Path


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
    mnt = pyunion([lower], upper)
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
