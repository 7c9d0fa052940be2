"""Generated layer tars (unionfs/image/archive/generate.py + tarwriter.py), read back by GNU tar,
and unpacked with their files linked from a tree that has them (``files_from``).

A tree with every shape the writer has a special case for (names and link targets past the
ustar fields, names that are not UTF-8, ids and sizes past the octal fields, nanosecond and
pre-1970 times, binary xattr values, hard links, devices, FIFOs) is written as a layer tar
and extracted by GNU tar, an independent reader; the extracted tree must be the source tree.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests import treesnap
from unionfs.image.archive.generate import write_layer_tar
from unionfs.image.archive.unpack import LayerError, unpack_layer
from unionfs.image.limits import Limits

LONG_DIR = "d" * 120
LONG_TARGET = "t" * 300


def build_tree(root: Path) -> None:
    (root / LONG_DIR / ("e" * 200)).mkdir(parents=True)
    (root / LONG_DIR / ("e" * 200) / ("f" * 250)).write_text("deep and long\n")
    (root / "ünïcödé").write_text("utf-8 name\n")
    with open(os.fsencode(root) + b"/not-utf8-\xff\xfe", "w") as f:
        f.write("latin-1 name\n")
    os.symlink(LONG_TARGET, root / "long-link")
    os.symlink("ünïcödé", root / "short-link")
    (root / "h1").write_text("hard link\n")
    os.link(root / "h1", root / LONG_DIR / "h2")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    big = root / "big-owner"
    big.write_bytes(os.urandom(70_000))
    os.chown(big, 3_000_000, 2_500_000)
    os.setxattr(big, "user.binary", b"\x00\xff\xfe value")
    os.setxattr(big, "user.text", "ü".encode())
    os.chmod(big, 0o4751)
    os.utime(big, ns=(1, 1_700_000_000_123_456_789))
    old = root / "before-1970"
    old.write_text("old\n")
    os.utime(old, ns=(0, -86_400 * 10**9))
    (root / "empty-dir").mkdir(mode=0o1777)
    os.chmod(root / "empty-dir", 0o1777)


def test_gnu_tar_reads_back_the_tree(tmp_path: Path) -> None:
    source, extracted, archive = tmp_path / "source", tmp_path / "extracted", tmp_path / "l.tar"
    source.mkdir()
    extracted.mkdir()
    build_tree(source)
    with open(archive, "wb") as out:
        count = write_layer_tar(str(source), out)
    listing = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert count == len(listing.stdout.splitlines()) == 15
    result = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                             "-xpf", str(archive), "-C", str(extracted)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for root in (source, extracted):  # a directory's own mtime changes as it is filled
        os.utime(root / LONG_DIR, ns=(0, 10**18))
        os.utime(root / LONG_DIR / ("e" * 200), ns=(0, 10**18))
    treesnap.assert_same_tree(treesnap.snapshot(extracted, times=True),
                              treesnap.snapshot(source, times=True),
                              "GNU tar's extraction and the source")
    assert os.path.getsize(archive) % 10240 == 0


def test_unpacking_with_files_linked_from_elsewhere(tmp_path: Path) -> None:
    """``files_from`` (pull's layer from a snapshot that holds it): the layer is the one a
    plain unpacking makes, its regular files hard links of those below ``files_from``; a file
    there whose attributes differ from its entry, or reached through a symlink, is refused."""
    source, archive = tmp_path / "source", tmp_path / "l.tar"
    source.mkdir()
    build_tree(source)
    with open(archive, "wb") as out:
        write_layer_tar(str(source), out)
    plain, linked = tmp_path / "plain", tmp_path / "linked"

    def unpack(target: Path, files_from: Path | None) -> None:
        target.mkdir()
        with open(archive, "rb") as blob:
            unpack_layer(blob, str(target), whiteout_format="overlay", limits=Limits(),
                         what="test", files_from=str(files_from) if files_from else None)

    unpack(plain, None)
    unpack(linked, plain)
    # (the link counts agree: the files are the same inodes)
    ours, theirs = treesnap.snapshot(linked, times=True), treesnap.snapshot(plain, times=True)
    treesnap.assert_same_tree(ours, theirs, "a layer with linked files and a plain one")
    # (os.walk: Debian's Python 3.11 rglob follows the long symlink's target and fails)
    files = [Path(top, name) for top, _, names in os.walk(plain) for name in names
             if stat.S_ISREG(Path(top, name).lstat().st_mode)]
    assert len(files) == 7
    for path in files:
        assert path.stat().st_ino == (linked / path.relative_to(plain)).stat().st_ino

    os.chmod(plain / "ünïcödé", 0o600)
    with pytest.raises(LayerError, match="differs"):
        unpack(tmp_path / "changed", plain)
    os.chmod(plain / "ünïcödé", 0o644)
    (tmp_path / "elsewhere").mkdir()
    os.rename(plain / LONG_DIR, tmp_path / "elsewhere" / LONG_DIR)
    os.symlink(tmp_path / "elsewhere" / LONG_DIR, plain / LONG_DIR)
    with pytest.raises(LayerError):
        unpack(tmp_path / "through-a-symlink", plain)
