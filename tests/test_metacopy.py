"""metacopy=on: metadata-only copy-up in the kernel's form, compared with kernel overlayfs."""

from __future__ import annotations

import os
from pathlib import Path

import xattr

from tests import mounts, treesnap

KERNEL_OPTIONS = ("redirect_dir=on", "index=on", "metacopy=on")
DATA = bytes(range(256)) * 4096  # 1 MiB


def _lower(root: Path) -> Path:
    lower = root / "lower"
    (lower / "d").mkdir(parents=True)
    for name in ("a", "b", "c", "d/e", "moved"):
        (lower / name).write_bytes(DATA + name.encode())
    return lower


def _metadata_changes(mnt: Path) -> None:
    os.chmod(mnt / "a", 0o600)
    os.chown(mnt / "b", 1234, 2345)
    os.utime(mnt / "c", ns=(1_000_000_000, 2_000_000_000))
    xattr.setxattr(str(mnt / "d/e"), "user.note", b"kept")


def _is_metacopy(path: Path) -> bool:
    return "trusted.overlay.metacopy" in os.listxattr(path, follow_symlinks=False)


def test_metadata_changes_copy_no_data(tmp_path, upper_and_work, pyunion, overlay):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    kupper, kwork = upper_and_work("k")
    mine = pyunion([lower], upper, options=["metacopy=on"])
    ref = overlay([lower], kupper, kwork, options=KERNEL_OPTIONS)
    _metadata_changes(mine)
    _metadata_changes(ref)
    treesnap.assert_same_tree(treesnap.snapshot(mine, times=True),
                              treesnap.snapshot(ref, times=True), "pyunion vs kernel")
    for name in ("a", "b", "c", "d/e"):
        assert _is_metacopy(upper / name), name
        assert os.lstat(upper / name).st_size == len(DATA) + len(name)
        assert os.lstat(upper / name).st_blocks == 0, f"{name}: data was copied"
        assert (mine / name).read_bytes() == DATA + name.encode()


def test_write_completes_the_copy(tmp_path, upper_and_work, pyunion, overlay):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    kupper, kwork = upper_and_work("k")
    # (a reader held across the data copy-up: the daemon-served mode, as in test_cache_coherence)
    mine = pyunion([lower], upper, options=["metacopy=on", mounts.NO_PASSTHROUGH])
    ref = overlay([lower], kupper, kwork, options=KERNEL_OPTIONS)
    for mnt in (mine, ref):
        _metadata_changes(mnt)
        reader = open(mnt / "a", "rb")  # opened on the lower data, before the data copy-up
        with open(mnt / "a", "ab") as f:
            f.write(b"+more")
        reader.seek(len(DATA))
        assert reader.read() == b"a+more"
        reader.close()
        os.rename(mnt / "moved", mnt / "d/renamed")
    # Times of what was written here differ by when it was written; compare the rest.
    treesnap.assert_same_tree(treesnap.snapshot(mine), treesnap.snapshot(ref),
                              "pyunion vs kernel")
    assert os.lstat(mine / "c").st_mtime_ns == os.lstat(ref / "c").st_mtime_ns
    assert not _is_metacopy(upper / "a")
    assert os.lstat(upper / "a").st_mode & 0o777 == 0o600


def test_kernel_reads_our_metacopy_upper(tmp_path, upper_and_work, pyunion, overlay):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    mnt = pyunion([lower], upper, options=["metacopy=on"])
    _metadata_changes(mnt)
    ours = treesnap.snapshot(mnt, times=True)
    from tests.mounts import unmount

    unmount(mnt)
    work = tmp_path / "kernel-work"
    work.mkdir()
    again = overlay([lower], upper, work, options=KERNEL_OPTIONS)
    treesnap.assert_same_tree(treesnap.snapshot(again, times=True), ours, "kernel vs pyunion")


def test_metacopy_needs_redirect_dir(tmp_path, upper_and_work):
    import subprocess
    import sys

    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mount_helper", str(lower), str(upper), str(mnt),
         "-o", "metacopy=on,redirect_dir=off"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "metacopy=on needs redirect_dir=on" in result.stderr
