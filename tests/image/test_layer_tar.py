"""Generated layer tars (unionfs/image/archive/generate.py + tarwriter.py), read back by GNU tar,
and measured (unpack.measure_layer) as unpacking measures them.

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
from unionfs.image.archive.unpack import LayerError, measure_layer, unpack_layer
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


@pytest.mark.parametrize("compressor", [None, ["gzip", "-n"], ["zstd", "-q"]])
def test_measuring_a_layer_reads_what_unpacking_reads(tmp_path: Path, compressor) -> None:
    """``measure_layer`` (pull's check of a blob whose layer a snapshot gives) measures what
    ``unpack_layer`` does: the blob's digest and size and the diff_id as sha256sum reads them,
    the tar's size, GNU tar's count of entries; a truncated blob is refused by both."""
    source = tmp_path / "source"
    source.mkdir()
    build_tree(source)
    blob = tmp_path / "layer.tar"
    with open(blob, "wb") as out:
        write_layer_tar(str(source), out)
    diff_id = "sha256:" + _sha256sum(blob)
    tar_size = blob.stat().st_size
    entries = len(subprocess.run(["tar", "-tf", str(blob)], capture_output=True, check=True,
                                 timeout=60).stdout.splitlines())
    if compressor:
        subprocess.run([*compressor, str(blob)], check=True, timeout=60)
        blob = next(p for p in tmp_path.iterdir() if p.name.startswith("layer.tar."))
    limits = Limits()
    with open(blob, "rb") as f:
        measured = measure_layer(f, limits=limits, what="test")
    (tmp_path / "unpacked").mkdir()
    with open(blob, "rb") as f:
        unpacked = unpack_layer(f, str(tmp_path / "unpacked"), whiteout_format="overlay",
                                limits=limits, what="test")
    assert measured == unpacked
    assert (measured.blob_digest, measured.blob_size, measured.diff_id, measured.tar_size,
            measured.entries) == ("sha256:" + _sha256sum(blob), blob.stat().st_size, diff_id,
                                  tar_size, entries)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(blob.read_bytes()[:blob.stat().st_size // 2])
    with open(truncated, "rb") as f, pytest.raises(LayerError):
        measure_layer(f, limits=limits, what="test")


def _sha256sum(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True,
                          timeout=60).stdout.split()[0]
