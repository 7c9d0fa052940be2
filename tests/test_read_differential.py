"""Differential tests of the merged *read* view: pyunion against kernel overlayfs.

Stacks come from ``tests/stackgen.py`` (seeded, so every failure is reproducible with its seed).
The kernel is the reference for kernel-form stacks (char 0:0 whiteouts, ``trusted.overlay.opaque``);
fuse-overlayfs is the reference for OCI-form stacks (``.wh.`` files), which the kernel does not
read. ``stackgen.expected_snapshot`` resolves the stack from disk as a third witness.

Kernel limits, handled openly:
- a lowerdir-only kernel mount needs at least 2 lowers ("at least 2 lowerdir are needed while
  upperdir nonexistent"); for a one-layer stack the reference is the kernel over
  ``[layer, empty dir]``, which adds no name and no attribute (a merged dir takes its attributes
  from the top-most layer), and the kernel over the layer with an empty upper.
- fuse-overlayfs 1.10 reports st_nlink of a hard-linked file as the number of its names looked
  up so far, not the real count, so comparisons with it leave nlink out; the kernel reports the
  layer's real st_nlink and is compared with nlink.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xattr

from tests import cli_helpers, stackgen, treesnap

SEEDS = (1, 2, 3, 4)
# (seed, layers) for the plain tree comparison: more seeds and other stack heights
SHAPES = [(s, 3) for s in SEEDS] + [(s, 2) for s in (5, 6, 7)] + [(s, 6) for s in (8, 9, 10)]
NOBODY = 65534
PRIVATE_PREFIXES = ("trusted.overlay.", "user.overlay.")


# --- helpers --------------------------------------------------------------------------------
def _dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True)
    return path


def _upper(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An empty upper dir and a workdir beside it, alone in their parent dir.

    Its mtime is fixed so that two such uppers look alike (the mount root shows the upper's).
    """
    base = _dir(tmp_path, name)
    upper = _dir(base, "upper")
    os.utime(upper, ns=(stackgen.BASE_TIME_NS, stackgen.BASE_TIME_NS))
    return upper, _dir(base, "work")


def _snap(root: Path, nlink: bool = True) -> dict[str, Any]:
    """treesnap snapshot with mtimes, plus the mount root itself under the key ``"."``."""
    snap = treesnap.snapshot(root, times=True)
    snap["entries"]["."] = treesnap.describe(str(root), os.lstat(root), times=True)
    if not nlink:
        for entry in snap["entries"].values():
            entry.pop("nlink", None)
    return snap


def _expected(lowers: list[Path], form: str, nlink: bool = True) -> dict[str, Any]:
    snap = stackgen.expected_snapshot(lowers, form, times=True)
    snap["entries"]["."] = treesnap.describe(str(lowers[0]), os.lstat(lowers[0]), times=True)
    if not nlink:
        for entry in snap["entries"].values():
            entry.pop("nlink", None)
    return snap


def _walk(root: Path) -> list[str]:
    """Relative paths of everything below ``root`` (no symlink following), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def _fingerprint(root: Path) -> dict[str, tuple]:
    """Everything stored on disk below ``root`` (root included): any change shows, ctime too."""
    out = {}
    for rel in ["."] + _walk(root):
        path = root / rel
        st = os.lstat(path)
        names = sorted(xattr.listxattr(str(path), symlink=True))
        xs = tuple((n, xattr.getxattr(str(path), n, symlink=True)) for n in names)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_ino,
                    st.st_rdev, st.st_mtime_ns, st.st_ctime_ns, xs, digest)
    return out


def _all_xattrs(path: Path) -> dict[str, bytes]:
    return {n: xattr.getxattr(str(path), n, symlink=True)
            for n in sorted(xattr.listxattr(str(path), symlink=True))}


def _getxattr_errno(path: Path, name: str) -> str:
    return _errno_of(lambda: xattr.getxattr(str(path), name, symlink=True))


def _errno_of(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"


def _drop_caches() -> None:
    """Make the kernel forget unused dentries and inodes (FUSE gets FORGET for them)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --- libc directory stream -----------------------------------------------------------------
class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.POINTER(_Dirent)
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.restype = None
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.closedir.argtypes = [ctypes.c_void_p]


class DirStream:
    """opendir/readdir/telldir/seekdir/closedir of glibc, as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: int | None = None

    def __enter__(self) -> DirStream:
        self.handle = _libc.opendir(os.fsencode(self.path))
        if not self.handle:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), str(self.path))
        return self

    def __exit__(self, *exc: object) -> None:
        _libc.closedir(self.handle)

    def read(self) -> tuple[str, int, int] | None:
        """Next (name, d_type, d_ino), None at the end."""
        ctypes.set_errno(0)
        ent = _libc.readdir(self.handle)
        if not ent:
            e = ctypes.get_errno()
            if e:
                raise OSError(e, os.strerror(e), str(self.path))
            return None
        d = ent.contents
        return os.fsdecode(d.d_name), d.d_type, d.d_ino

    def read_all(self) -> list[tuple[str, int, int]]:
        out = []
        while (item := self.read()) is not None:
            out.append(item)
        return out

    def tell(self) -> int:
        return _libc.telldir(self.handle)

    def seek(self, pos: int) -> None:
        _libc.seekdir(self.handle, pos)


_libc.access.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _access(path: Path, mode: int) -> None:
    """access(2) that raises OSError with its errno (os.access only says True/False)."""
    if _libc.access(os.fsencode(path), mode) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def _listing(path: Path) -> list[tuple[str, int, int]]:
    with DirStream(path) as d:
        return d.read_all()


# --- the merged tree -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_oracles_agree(seed: int, tmp_path: Path, overlay, fuse_overlayfs) -> None:
    """Validates the generator and the references: kernel, fuse-overlayfs and the resolver.

    The kernel form under the kernel and under fuse-overlayfs, and the OCI form of the same
    seed under fuse-overlayfs, all show the tree that stackgen.expected_snapshot predicts.
    """
    lowers = stackgen.make_stack(tmp_path / "k", seed, form="kernel")
    oci = stackgen.make_stack(tmp_path / "o", seed, form="oci")
    expected = _expected(lowers, "kernel")
    kernel = _snap(overlay(lowers, None, None))
    treesnap.assert_same_tree(kernel, expected, "kernel overlay vs stackgen resolver")
    treesnap.assert_same_tree(_expected(oci, "oci"), expected, "oci vs kernel form (resolver)")
    fo_kernel = _snap(fuse_overlayfs(lowers, None, None), nlink=False)
    treesnap.assert_same_tree(fo_kernel, _expected(lowers, "kernel", nlink=False),
                              "fuse-overlayfs vs resolver, kernel form")
    fo_oci = _snap(fuse_overlayfs(oci, None, None), nlink=False)
    treesnap.assert_same_tree(fo_oci, _expected(lowers, "kernel", nlink=False),
                              "fuse-overlayfs on oci form vs resolver")


def test_generator_covers_the_cases() -> None:
    """Each seed's stack has every kind of object and every kind of cross-layer override."""
    for seed in SEEDS:
        seen: set[str] = set()
        view: dict[str, str] = {}
        for layer in reversed(stackgen.make_layers(seed)):
            for path, spec in sorted(layer.items()):
                seen.add(spec.kind)
                seen.update(("opaque",) if spec.opaque else ())
                seen.update(("xattr",) if any(n.startswith("user.") for n in spec.xattrs) else ())
                seen.update(("empty",) if spec.kind == "file" and not spec.data else ())
                below = view.get(path) if path else None
                if below and spec.kind != "whiteout":
                    over = "dir" if spec.kind == "dir" else "file"
                    seen.add(f"{over}_over_{'dir' if below == 'dir' else 'file'}")
            stackgen.apply_layer(view, layer)
        wanted = {"dir", "file", "hardlink", "symlink", "fifo", "whiteout", "opaque", "xattr",
                  "empty", "file_over_file", "file_over_dir", "dir_over_file", "dir_over_dir"}
        assert wanted <= seen, f"seed {seed} lacks {sorted(wanted - seen)}"


@pytest.mark.parametrize(("seed", "layers"), SHAPES, ids=[f"seed{s}-{n}layers" for s, n in SHAPES])
def test_read_only_view_matches_kernel(seed: int, layers: int, tmp_path: Path, pyunion,
                                       overlay) -> None:
    """No upper: pyunion's tree (names, types, modes, owners, sizes, contents, links, xattrs,
    mtimes, nlink, hard-link groups, the root's attributes) equals the kernel's."""
    lowers = stackgen.make_stack(tmp_path / "s", seed, layers=layers)
    kernel = _snap(overlay(lowers, None, None))
    mine = _snap(pyunion(lowers, None))
    treesnap.assert_same_tree(mine, kernel, f"pyunion vs kernel, no upper, seed {seed}")


@pytest.mark.parametrize("seed", SEEDS)
def test_empty_upper_view_matches_kernel(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """With an empty upper the tree is the same, and reading it puts nothing into the upper."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    k_upper, k_work = _upper(tmp_path, "k")
    p_upper, _ = _upper(tmp_path, "p")
    kernel = _snap(overlay(lowers, k_upper, k_work))
    mine = _snap(pyunion(lowers, p_upper))
    treesnap.assert_same_tree(mine, kernel, f"pyunion vs kernel, empty upper, seed {seed}")
    assert os.listdir(k_upper) == []
    assert os.listdir(p_upper) == [], "reading the merged tree wrote into the upper"


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_single_lower(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """One lower, no upper. The kernel refuses a single lowerdir without upper, so it is
    mounted over [layer, empty dir] and, separately, over the layer with an empty upper."""
    lowers = stackgen.make_stack(tmp_path / "s", seed, layers=1)
    empty = _dir(tmp_path, "empty")
    kernel = _snap(overlay([*lowers, empty], None, None))
    treesnap.assert_same_tree(kernel, _expected(lowers, "kernel"), "kernel vs resolver")
    k_upper, k_work = _upper(tmp_path, "k")
    with_upper = _snap(overlay(lowers, k_upper, k_work))
    mine = _snap(pyunion(lowers, None))
    treesnap.assert_same_tree(mine, kernel, f"pyunion vs kernel, one lower, seed {seed}")
    for snap in (mine, with_upper):  # with an upper, the root has the upper's attributes
        del snap["entries"]["."]
    treesnap.assert_same_tree(mine, with_upper, "pyunion vs kernel with empty upper")


@pytest.mark.parametrize("seed", SEEDS)
def test_oci_form_matches_fuse_overlayfs(seed: int, tmp_path: Path, pyunion, overlay,
                                         fuse_overlayfs) -> None:
    """OCI form (.wh.NAME, .wh..wh..opq): pyunion shows what fuse-overlayfs shows (nlink
    aside), and exactly the kernel's view of the same stack written in kernel form."""
    oci = stackgen.make_stack(tmp_path / "o", seed, form="oci")
    ref = _snap(fuse_overlayfs(oci, None, None), nlink=False)
    mine = pyunion(oci, None)
    treesnap.assert_same_tree(_snap(mine, nlink=False), ref,
                              f"pyunion vs fuse-overlayfs, oci form, seed {seed}")
    kernel_form = stackgen.make_stack(tmp_path / "k", seed, form="kernel")
    kernel = _snap(overlay(kernel_form, None, None))
    treesnap.assert_same_tree(_snap(mine), kernel, "pyunion(oci form) vs kernel(kernel form)")
    listed = []
    for rel in ["."] + _walk(mine):
        if (mine / rel).is_dir() and not (mine / rel).is_symlink():
            listed += [f"{rel}/{n}" for n in os.listdir(mine / rel) if n.startswith(".wh.")]
    assert not listed, f"whiteout files are listed: {listed[:10]}"


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_mixed_forms(seed: int, tmp_path: Path, pyunion, fuse_overlayfs) -> None:
    """Layers in different forms in one stack (OCI top and bottom, kernel middle) read the same
    as fuse-overlayfs, which reads both forms, and as the resolver."""
    kernel_form = stackgen.make_stack(tmp_path / "k", seed, form="kernel")
    oci = stackgen.make_stack(tmp_path / "o", seed, form="oci")
    mixed = [oci[0], kernel_form[1], oci[2]]
    ref = _snap(fuse_overlayfs(mixed, None, None), nlink=False)
    treesnap.assert_same_tree(ref, _expected(kernel_form, "kernel", nlink=False), "fo vs resolver")
    treesnap.assert_same_tree(_snap(pyunion(mixed, None), nlink=False), ref,
                              f"pyunion vs fuse-overlayfs, mixed forms, seed {seed}")


def _raw_paths(lowers: list[Path]) -> list[str]:
    """Every path stored in any layer, markers (whiteouts, .wh. files) included."""
    return sorted({p for layer in lowers for p in _walk(layer)})


def _lstat_view(path: Path, nlink: bool) -> tuple | str:
    try:
        st = os.lstat(path)
    except OSError as e:
        return errno.errorcode[e.errno]
    size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else None
    mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
    links = st.st_nlink if nlink and not stat.S_ISDIR(st.st_mode) else None
    return st.st_mode, st.st_uid, st.st_gid, size, mtime, st.st_rdev, links


@pytest.mark.parametrize("form", ["kernel", "oci"])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_direct_lookups(seed: int, form: str, tmp_path: Path, pyunion, overlay,
                        fuse_overlayfs) -> None:
    """On a fresh mount, without listing any dir first: lstat of every visible path gives the
    reference's attributes, and every path stored in a layer but hidden (whited out, below an
    opaque dir or a non-dir, or a whiteout/.wh. marker itself) fails like the reference."""
    lowers = stackgen.make_stack(tmp_path / "s", seed, form=form)
    ref = overlay(lowers, None, None) if form == "kernel" else fuse_overlayfs(lowers, None, None)
    nlink = form == "kernel"  # fuse-overlayfs's nlink is not a reference (module docstring)
    mine = pyunion(lowers, None)
    visible = set(stackgen.merged_view(lowers, form))
    paths = sorted(visible) + sorted(set(_raw_paths(lowers)) - visible)
    random.Random(seed).shuffle(paths)
    got = {p: _lstat_view(mine / p, nlink) for p in paths}
    expected = {p: _lstat_view(ref / p, nlink) for p in paths}
    hidden = [p for p in paths if p not in visible]
    assert hidden and all(isinstance(expected[p], str) for p in hidden), "reference"
    assert all(not isinstance(expected[p], str) for p in visible), "reference"
    wrong = {p: (got[p], expected[p]) for p in paths if got[p] != expected[p]}
    assert not wrong, f"lstat (pyunion, reference): {dict(list(wrong.items())[:8])}"


def _make_files(layer: Path, sizes: dict[str, int], seed: int) -> None:
    layer.mkdir()
    rng = random.Random(seed)
    for name, size in sizes.items():
        (layer / name).write_bytes(rng.randbytes(size))
    with open(layer / "sparse", "wb") as f:  # 40 MiB, mostly hole
        for offset in (0, 1 << 20, (40 << 20) - 5000):
            f.seek(offset)
            f.write(rng.randbytes(5000))


def _reads(path: Path, seed: int) -> dict[str, str]:
    """Contents read several ways: sequential chunks of odd sizes, pread, mmap."""
    out = {}
    size = path.stat().st_size
    for chunk in (1, 4097, 1 << 20):
        if chunk == 1 and size > 20000:
            continue
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while data := f.read(chunk):
                h.update(data)
        out[f"read{chunk}"] = h.hexdigest()
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        offsets = [0, size, size + 10, max(size - 1, 0)] + [rng.randrange(size + 1)
                                                            for _ in range(30)]
        h = hashlib.sha256()
        for off in offsets:
            h.update(os.pread(fd, rng.choice((1, 100, 4096, 70000)), off))
        out["pread"] = h.hexdigest()
        if size:
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
                out["mmap"] = hashlib.sha256(m[:]).hexdigest()
    finally:
        os.close(fd)
    return out


def test_file_contents(tmp_path: Path, pyunion, overlay) -> None:
    """File data of many sizes (0, page edges, several MiB, a 40 MiB sparse file), read in odd
    chunk sizes, by pread past EOF and by mmap, equals the kernel's; the top layer's version
    of a name wins even when it is smaller or larger than the one below."""
    sizes = {"empty": 0, "one": 1, "page-1": 4095, "page": 4096, "page+1": 4097,
             "128k+1": (128 << 10) + 1, "3m+7": (3 << 20) + 7, "grow": 10, "shrink": 300000}
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    _make_files(bottom, sizes, 1)
    top.mkdir()
    rng = random.Random(2)
    (top / "grow").write_bytes(rng.randbytes(500000))
    (top / "shrink").write_bytes(rng.randbytes(3))
    kernel, mine = overlay([top, bottom], None, None), pyunion([top, bottom], None)
    for name in [*sizes, "sparse"]:
        ref = _reads(kernel / name, 3)
        assert len({v for k, v in ref.items() if k != "pread"}) == 1, f"kernel reference {name}"
        assert _reads(mine / name, 3) == ref, f"{name}: read through pyunion differs"


# --- readdir -------------------------------------------------------------------------------
def _dir_listings(root: Path) -> dict[str, list[tuple[str, int]]]:
    """{dir: sorted [(name, d_type)]} over the tree; also checks d_ino against st_ino."""
    out = {}
    for rel in ["."] + _walk(root):
        path = root / rel
        if path.is_symlink() or not path.is_dir():
            continue
        entries = _listing(path)
        names = [e[0] for e in entries]
        assert len(names) == len(set(names)), f"{rel}: names listed twice: {names}"
        assert names.count(".") == 1 and names.count("..") == 1, f"{rel}: . or .. missing"
        for name, _, d_ino in entries:
            if name not in (".", ".."):
                st_ino = os.lstat(path / name).st_ino
                assert d_ino == st_ino, f"{rel}/{name}: d_ino {d_ino} != st_ino {st_ino}"
        scanned = [e.name for e in os.scandir(path)]
        assert sorted(scanned) == sorted(set(names) - {".", ".."}), f"{rel}: scandir"
        out[rel] = sorted((n, t) for n, t, _ in entries if n not in (".", ".."))
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_readdir_matches_kernel(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """Every dir lists each name once with its d_type, plus . and ..; d_ino == st_ino."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    kernel = _dir_listings(overlay(lowers, None, None))
    mine = _dir_listings(pyunion(lowers, None))
    assert mine.keys() == kernel.keys()
    bad = {d: (mine[d], kernel[d]) for d in kernel if mine[d] != kernel[d]}
    assert not bad, f"listings differ (pyunion, kernel): {dict(list(bad.items())[:5])}"


def _read_in_parts(path: Path, seed: int) -> list[str]:
    """Read the dir in random-sized parts; after each part, read ahead a little, then seekdir
    back to the position saved at the end of the part. Returns the names of the parts."""
    rng = random.Random(seed)
    out: list[str] = []
    with DirStream(path) as d:
        while True:
            for _ in range(rng.randint(1, 400)):
                item = d.read()
                if item is None:
                    return out
                out.append(item[0])
            pos = d.tell()
            ahead = [d.read() for _ in range(rng.randint(1, 60))]
            d.seek(pos)
            again = d.read()
            first = ahead[0][0] if ahead[0] else None
            assert (again[0] if again else None) == first, f"seekdir({pos}) went elsewhere"
            if again is None:
                return out
            out.append(again[0])


def _tell_round_trip(path: Path, seed: int) -> None:
    """telldir after each entry; seekdir to 60 saved positions in random order gives the
    entry that followed each of them the first time."""
    with DirStream(path) as d:
        names, positions = [], []
        while (item := d.read()) is not None:
            names.append(item[0])
            positions.append(d.tell())
        rng = random.Random(seed)
        for i in rng.sample(range(len(names) - 1), 60):
            d.seek(positions[i])
            item = d.read()
            assert item is not None and item[0] == names[i + 1], (
                f"seekdir(telldir after {names[i]!r}) read {item and item[0]!r}, "
                f"expected {names[i + 1]!r}")
        d.seek(positions[-1])
        assert d.read() is None, "seekdir to the end position read another entry"


def _interleaved(path: Path, names: list[str]) -> None:
    """Two streams on one dir read alternately each see every name once; a position saved
    before the first read takes a stream back to the first entry."""
    with DirStream(path) as a, DirStream(path) as b:
        start = a.tell()
        first = a.read()
        got = {"a": [first[0]] if first else [], "b": []}
        done: set[str] = set()
        while len(done) < 2:
            for key, stream, step in (("a", a, 7), ("b", b, 13)):
                for _ in range(step if key not in done else 0):
                    item = stream.read()
                    if item is None:
                        done.add(key)
                        break
                    got[key].append(item[0])
        assert sorted(got["a"]) == names and sorted(got["b"]) == names, "interleaved streams"
        a.seek(start)
        again = a.read()
        assert again is not None and first is not None and again[0] == first[0], "rewind"


@pytest.mark.parametrize("form", ["kernel", "oci"])
def test_big_dir_seekdir(form: str, tmp_path: Path, pyunion, overlay, fuse_overlayfs) -> None:
    """~2000 names merged from 3 layers: the listing has them all once, telldir/seekdir round
    trip, and a listing read in parts with seekdir back neither skips nor repeats a name."""
    lowers = stackgen.make_wide_stack(tmp_path / "s", 7, form=form)
    mounts = {"reference": (overlay(lowers, None, None) if form == "kernel"
                            else fuse_overlayfs(lowers, None, None)),
              "pyunion": pyunion(lowers, None)}
    expected = [".", ".."] + [p[4:] for p in stackgen.merged_view(lowers, form) if p != "big"]
    assert len(expected) == 2002
    for what, mnt in mounts.items():
        big = mnt / "big"
        names = [n for n, _, _ in _listing(big)]
        assert sorted(names) == sorted(expected), f"{what}: names of big"
        for seed in (1, 2, 3):
            parts = _read_in_parts(big, seed)
            assert len(parts) == len(set(parts)), f"{what}: repeated names after seekdir"
            assert sorted(parts) == sorted(names), f"{what}: names skipped after seekdir"
        _tell_round_trip(big, 5)
        _interleaved(big, sorted(names))


# --- inodes --------------------------------------------------------------------------------
def _inodes(root: Path) -> dict[str, tuple[int, int, int]]:
    return {rel: (st.st_ino, st.st_nlink, st.st_dev)
            for rel in ["."] + _walk(root) for st in [os.lstat(root / rel)]}


@pytest.mark.parametrize("seed", SEEDS)
def test_inodes_stable_and_hard_links(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """st_ino stays the same after the kernel drops its inode cache; hard-linked names share
    one st_ino; st_nlink of non-dirs is the kernel's (the layer's real link count)."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    kernel = overlay(lowers, None, None)
    mine = pyunion(lowers, None)
    k_before, before = _inodes(kernel), _inodes(mine)
    _drop_caches()
    k_after, after = _inodes(kernel), _inodes(mine)
    assert k_before == k_after
    changed = {p: (before[p][0], after[p][0]) for p in before if before[p] != after[p]}
    assert not changed, f"st_ino/nlink changed after drop_caches: {dict(list(changed.items())[:8])}"
    groups = stackgen.expected_snapshot(lowers)["links"]
    assert groups, "the stack should have visible hard links"
    for group in groups:
        assert len({after[p][0] for p in group}) == 1, f"hard links {group}: several st_ino"
    nlinks = {p: (after[p][1], k_after[p][1]) for p in after
              if not (mine / p).is_dir() and after[p][1] != k_after[p][1]}
    assert not nlinks, f"st_nlink (pyunion, kernel): {dict(list(nlinks.items())[:8])}"
    objects: dict[int, set[int]] = {}
    for p in after:
        objects.setdefault(after[p][0], set()).add(k_after[p][0])
    shared = {ino: ks for ino, ks in objects.items() if len(ks) > 1}
    assert not shared, f"one pyunion st_ino for several objects: {shared}"


def test_concurrent_readers_and_forgets(tmp_path: Path, pyunion, overlay) -> None:
    """Six threads make 8 walks reading the whole tree while the kernel keeps dropping its
    inode cache (FORGETs arrive mid-walk, lookups race with readdirplus): every walk sees
    the kernel's tree."""
    lowers = stackgen.make_stack(tmp_path / "s", 3)
    kernel = _snap(overlay(lowers, None, None))
    mine = pyunion(lowers, None)
    stop = threading.Event()

    def dropper() -> None:
        while not stop.is_set():
            _drop_caches()
            time.sleep(0.05)

    background = threading.Thread(target=dropper)
    background.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            snaps = list(pool.map(lambda _: _snap(mine), range(8)))
    finally:
        stop.set()
        background.join()
    for i, snap in enumerate(snaps):
        treesnap.assert_same_tree(snap, kernel, f"concurrent walk {i}")


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_inode_numbers_are_the_layers(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """All layers on one fs: like the kernel, st_ino of each non-dir is the real inode number
    of the layer file that provides it (union-semantics.md 3.9, decision 10.2)."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    kernel, mine = _inodes(overlay(lowers, None, None)), _inodes(pyunion(lowers, None))
    real = {rel: os.lstat(p).st_ino for rel, p in stackgen.merged_view(lowers).items()}
    assert all(kernel[p][0] == ino for p, ino in real.items()), "kernel reference"
    wrong = {p: (mine[p][0], ino) for p, ino in real.items() if mine[p][0] != ino}
    assert not wrong, f"st_ino (pyunion, layer): {dict(list(wrong.items())[:8])}"


STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_blksize",
               "st_mtime_ns", "st_ctime_ns", "st_rdev")


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_stat_fields_match_kernel(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """Every lstat field but st_dev/st_ino/st_atime equals the kernel's, for every object and
    the root: dir nlink and size, st_blocks (sparse and empty files), blksize, ctime."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    kernel, mine = overlay(lowers, None, None), pyunion(lowers, None)
    wrong = {}
    for rel in ["."] + _walk(kernel):
        k, m = os.lstat(kernel / rel), os.lstat(mine / rel)
        diff = {f: (getattr(m, f), getattr(k, f)) for f in STAT_FIELDS
                if getattr(m, f) != getattr(k, f)}
        if diff:
            wrong[rel] = diff
    assert not wrong, f"lstat fields (pyunion, kernel): {dict(list(wrong.items())[:8])}"


def _reset_atimes(lowers: list[Path]) -> list[Path]:
    """All objects of the layers, with atime set back to mtime (relatime then updates the
    atime on the next access, so any access shows). Returns them."""
    objects = [layer / rel for layer in lowers for rel in ["."] + _walk(layer)]
    for path in objects:
        st = os.lstat(path)
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
    return objects


def _atimes(objects: list[Path]) -> dict[Path, int]:
    return {path: os.lstat(path).st_atime_ns for path in objects}


def test_reads_leave_layer_atimes(tmp_path: Path, pyunion, overlay) -> None:
    """Reading every file and listing every dir through the mount leaves the atime of the
    layers' files and dirs alone: the kernel opens real files and dirs with O_NOATIME
    (union-semantics.md 3.11). Each atime is set back to its mtime first, so that relatime
    (ext4 default) would update it on any access.

    Symlinks are left out: the kernel does not touch a lower symlink's atime either, but from
    user space readlink(2) always does (no O_NOATIME for it), so a FUSE daemon cannot match.
    """
    lowers = stackgen.make_stack(tmp_path / "s", 1)
    objects = [p for p in _reset_atimes(lowers) if not p.is_symlink()]
    before = _atimes(objects)
    _snap(overlay(lowers, None, None))
    assert _atimes(objects) == before, "kernel reference"
    _snap(pyunion(lowers, None))
    after = _atimes(objects)
    changed = [p for p in objects if after[p] != before[p]]
    kinds = Counter(stat.filemode(os.lstat(p).st_mode)[0] for p in changed)
    assert not changed, (f"{len(changed)} layer objects got a new atime (by type: "
                         f"{dict(kinds)}), e.g. {[str(p) for p in changed[:3]]}")


def _inos_in_order(mnt: Path, paths: list[str]) -> dict[str, tuple[int, int]]:
    return {p: (os.lstat(mnt / p).st_ino, os.lstat(mnt / p).st_dev) for p in paths}


def test_inode_numbers_survive_remount(tmpfs, tmp_path: Path, pyunion, overlay) -> None:
    """Layers on two filesystems (top lower on a tmpfs): each non-dir has the same st_ino in
    two mounts of the stack, one looking up tmpfs objects first, one ext4 objects first, as
    with the kernel (which keeps the real numbers of non-dirs and gives each lower fs its own
    st_dev; its dir numbers are synthesized per mount here, union-semantics.md 3.9); no
    (st_dev, st_ino) pair is shared by two different objects."""
    layers = stackgen.make_layers(4)
    lowers = [tmpfs(tmp_path / "topfs", "24m") / "layer0"]
    lowers += [tmp_path / f"layer{i}" for i in range(1, len(layers))]
    for path, layer in zip(lowers, layers, strict=True):
        stackgen.write_layer(path, layer, "kernel")
    view = stackgen.merged_view(lowers)
    paths = sorted(p for p in view if not stat.S_ISDIR(os.lstat(view[p]).st_mode))
    real = {p: (os.lstat(view[p]).st_dev, os.lstat(view[p]).st_ino) for p in paths}
    runs: dict[str, list[dict[str, tuple[int, int]]]] = {"kernel": [], "pyunion": []}
    on_top = {p: view[p].is_relative_to(lowers[0]) for p in paths}
    orders = [sorted(paths, key=lambda p, t=t: (on_top[p] != t, p.count("/"), p))
              for t in (True, False)]
    assert [on_top[o[0]] for o in orders] == [True, False] and "/" not in orders[1][0]
    for order in orders:
        k_mnt = overlay(lowers, None, None)
        runs["kernel"].append(_inos_in_order(k_mnt, order))
        p_mnt = pyunion(lowers, None)
        runs["pyunion"].append(_inos_in_order(p_mnt, order))
    for what, (first, second) in runs.items():
        objects: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for p in paths:
            objects.setdefault(first[p], set()).add(real[p])
        assert all(len(v) == 1 for v in objects.values()), f"{what}: (st_dev, st_ino) shared"
        moved = {p: (first[p][0], second[p][0]) for p in paths if first[p][0] != second[p][0]}
        assert not moved, f"{what}: st_ino differs between mounts: {dict(list(moved.items())[:5])}"


# --- xattrs, symlinks, special files, statfs ------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_xattrs_match_kernel(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """listxattr/getxattr of every object (all namespaces, as root) equal the kernel's: user.*
    and trusted.test* shown, trusted.overlay.* (opaque, impure) never listed nor readable."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    kernel = overlay(lowers, None, None)
    mine = pyunion(lowers, None)
    private_on_disk = 0
    for rel, real in stackgen.merged_view(lowers).items():
        on_disk = _all_xattrs(real)
        private = [n for n in on_disk if n.startswith(PRIVATE_PREFIXES)]
        private_on_disk += len(private)
        got, ref = _all_xattrs(mine / rel), _all_xattrs(kernel / rel)
        assert ref == {n: v for n, v in on_disk.items() if n not in private}, "kernel reference"
        assert got == ref, f"{rel}: xattrs {got} != kernel {ref}"
        for name in [*private, "user.not-there"]:
            assert _getxattr_errno(mine / rel, name) == "ENODATA", f"{rel}: {name} readable"
    assert private_on_disk, "the stack should carry trusted.overlay.* xattrs"


def test_user_overlay_xattrs_hidden(tmp_path: Path, pyunion, overlay, fuse_overlayfs) -> None:
    """user.overlay.* (and trusted.overlay.*) on layer objects never show through pyunion, as
    with fuse-overlayfs. The kernel (trusted mode) shows user.overlay.* (not compared)."""
    top, bottom = _dir(tmp_path, "top"), _dir(tmp_path, "bottom")
    for layer in (top, bottom):
        (layer / "d").mkdir()
    files = {"f": top, "d/g": bottom, "d": top}
    for rel, layer in files.items():
        path = layer / rel
        if not path.exists():
            path.write_text(rel)
        xattr.setxattr(str(path), "user.overlay.junk", b"1")
        xattr.setxattr(str(path), "trusted.overlay.junk", b"1")
        xattr.setxattr(str(path), "user.visible", b"yes")
    ref = fuse_overlayfs([top, bottom], None, None)
    mine = pyunion([top, bottom], None)
    for rel in files:
        names = sorted(xattr.listxattr(str(mine / rel)))
        assert names == sorted(xattr.listxattr(str(ref / rel))) == ["user.visible"], rel
        for name in ("user.overlay.junk", "trusted.overlay.junk"):
            assert _getxattr_errno(mine / rel, name) == "ENODATA", f"{rel}: {name} readable"
        assert xattr.getxattr(str(mine / rel), "user.visible") == b"yes"


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_symlinks_and_special_files(seed: int, tmp_path: Path, pyunion, overlay) -> None:
    """readlink (incl. dangling), fifo and device types/rdev equal the kernel's, per object."""
    lowers = stackgen.make_stack(tmp_path / "s", seed)
    kernel = overlay(lowers, None, None)
    mine = pyunion(lowers, None)
    kinds: set[str] = set()
    for rel in _walk(kernel):
        k, m = os.lstat(kernel / rel), os.lstat(mine / rel)
        assert stat.S_IFMT(m.st_mode) == stat.S_IFMT(k.st_mode), rel
        if stat.S_ISLNK(k.st_mode):
            kinds.add("dangling" if not (kernel / rel).exists() else "symlink")
            assert os.readlink(mine / rel) == os.readlink(kernel / rel), rel
        elif stat.S_ISFIFO(k.st_mode) or stat.S_ISCHR(k.st_mode) or stat.S_ISBLK(k.st_mode):
            kinds.add("special")
            assert m.st_rdev == k.st_rdev, rel
        if stat.S_ISREG(k.st_mode):
            assert m.st_size == k.st_size, rel
        if stat.S_ISFIFO(k.st_mode):
            kinds.add("fifo")
    assert {"dangling", "fifo", "special"} <= kinds


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """Factory: ``tmpfs(path, size)`` mounts a tmpfs there; unmounted at teardown.

    Request it before the mount fixtures: teardown runs in reverse order, so the union mounts
    on top of these tmpfs layers are gone before the tmpfs is unmounted.
    """
    made: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], check=True, timeout=30)
        made.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(made):
            result = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
            if result.returncode != 0:  # still busy: detach now, freed when unused
                subprocess.run(["umount", "-l", str(path)], timeout=30)


def _statfs(path: Path) -> tuple[int, int, int, int, int]:
    s = os.statvfs(path)
    return s.f_blocks, s.f_bsize, s.f_frsize, s.f_files, s.f_namemax


def test_statfs(tmpfs, tmp_path: Path, pyunion, overlay) -> None:
    """statfs reports the upper's fs; without upper, the top lower's. Both are put on tmpfs
    mounts of distinct sizes (lowers below on the ext4 of tmp_path) to tell them apart."""
    top_fs, upper_fs = tmpfs(tmp_path / "topfs", "24m"), tmpfs(tmp_path / "upperfs", "40m")
    layers = stackgen.make_layers(3)
    lowers = [top_fs / "layer0"] + [tmp_path / f"layer{i}" for i in range(1, len(layers))]
    for path, layer in zip(lowers, layers, strict=True):
        stackgen.write_layer(path, layer, "kernel")
    k_upper, k_work = _dir(upper_fs, "k/upper"), _dir(upper_fs, "k/work")
    p_upper = _dir(upper_fs, "p/upper")
    assert len({_statfs(top_fs)[0], _statfs(upper_fs)[0], _statfs(tmp_path)[0]}) == 3
    cases = {
        "no upper": (_statfs(top_fs), overlay(lowers, None, None), pyunion(lowers, None)),
        "upper": (_statfs(upper_fs), overlay(lowers, k_upper, k_work), pyunion(lowers, p_upper)),
    }
    for what, (backing, kernel, mine) in cases.items():
        assert _statfs(kernel)[:4] == backing[:4], f"kernel reference, {what}"
        assert _statfs(mine) == _statfs(kernel), (
            f"{what}: pyunion statfs (blocks, bsize, frsize, files, namemax) "
            f"{_statfs(mine)} != kernel {_statfs(kernel)}")


# --- permissions ---------------------------------------------------------------------------
PROBE = r"""
import errno, json, os, sys

def attempt(fn):
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"

def read(p):
    with open(p, "rb") as f:
        f.read(1)

root = sys.argv[1]
out = {}
for rel, kind in json.load(sys.stdin):
    p = os.path.join(root, rel)
    r = {"lstat": attempt(lambda: os.lstat(p))}
    if kind == "file":
        r["read"] = attempt(lambda: read(p))
    if kind == "dir":
        r["list"] = attempt(lambda: os.listdir(p))
    if kind in ("file", "dir"):
        r["access_r"] = os.access(p, os.R_OK)
        r["access_x"] = os.access(p, os.X_OK)
    out[rel] = r
json.dump(out, sys.stdout)
"""


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A scratch dir uid 65534 can traverse (pytest's own temp root is 0700). Requested
    before the mount fixtures, so it is removed after they unmounted."""
    with cli_helpers.public_dir("pyunion-readdiff-") as path:
        yield path


def _probe_as_nobody(mnt: Path, objects: list[tuple[str, str]]) -> dict[str, Any]:
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", PROBE, str(mnt)],
        input=json.dumps(objects), capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_permissions_as_nobody(seed: int, public_tmp: Path, pyunion, overlay) -> None:
    """As uid/gid 65534 (default_permissions): lstat/open/listdir/access of every object give
    the kernel's results; a 0600 root file is EACCES, a 0644 one readable."""
    pub = public_tmp
    lowers = stackgen.make_stack(pub / "s", seed)
    perm = _dir(lowers[0], "perm")
    for name, mode in (("secret", 0o600), ("public", 0o644)):
        (perm / name).write_text(name)
        (perm / name).chmod(mode)
    perm.chmod(0o755)
    kernel = overlay(lowers, None, None, mnt=_dir(pub, "k-mnt"))
    mine = pyunion(lowers, None, mnt=_dir(pub, "p-mnt"), options=("allow_other",))
    objects = []
    for rel in _walk(kernel):
        st = os.lstat(kernel / rel)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "x"
        objects.append((rel, kind))
    ref = _probe_as_nobody(kernel, objects)
    assert ref["perm/secret"]["read"] == "EACCES" and ref["perm/public"]["read"] == "ok"
    assert any(r.get("read") == "EACCES" for p, r in ref.items() if p != "perm/secret")
    got = _probe_as_nobody(mine, objects)
    assert got["perm/secret"]["read"] == "EACCES", got["perm/secret"]
    assert got["perm/public"]["read"] == "ok", got["perm/public"]
    diff = {p: (got[p], ref[p]) for p in ref if got[p] != ref[p]}
    assert not diff, f"as nobody (pyunion, kernel): {dict(list(diff.items())[:6])}"


# --- read-only ---------------------------------------------------------------------------
def _write_attempts(mnt: Path, view: dict[str, Path]) -> dict[str, str]:
    """Try every kind of write on objects of the merged tree; {operation: errno name}."""
    files = sorted(p for p, real in view.items() if real.is_file() and not real.is_symlink()
                   and real.stat().st_nlink == 1)
    dirs = sorted(p for p, real in view.items() if real.is_dir() and not real.is_symlink())
    f, d = mnt / files[0], mnt / dirs[0]
    with_xattr = [p for p in files if any(n.startswith("user.") for n in
                                          xattr.listxattr(str(view[p])))]
    ops: dict[str, Callable[[], object]] = {
        "open_wronly": lambda: os.close(os.open(f, os.O_WRONLY)),
        "open_rdwr": lambda: os.close(os.open(f, os.O_RDWR)),
        "open_trunc": lambda: os.close(os.open(f, os.O_WRONLY | os.O_TRUNC)),
        "open_append": lambda: os.close(os.open(f, os.O_WRONLY | os.O_APPEND)),
        "create": lambda: os.close(os.open(d / "new-file", os.O_CREAT | os.O_WRONLY, 0o644)),
        "mkdir": lambda: os.mkdir(d / "new-dir"),
        "mkdir_root": lambda: os.mkdir(mnt / "new-dir"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(d),
        "chmod": lambda: os.chmod(f, 0o777),
        "chmod_dir": lambda: os.chmod(d, 0o777),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (1, 1)),
        "truncate": lambda: os.truncate(f, 0),
        "rename": lambda: os.rename(f, d / "renamed"),
        "link": lambda: os.link(f, d / "linked"),
        "symlink": lambda: os.symlink("target", d / "new-symlink"),
        "mkfifo": lambda: os.mkfifo(d / "new-fifo"),
        "setxattr": lambda: xattr.setxattr(str(f), "user.new", b"1"),
        "access_w": lambda: _access(f, os.W_OK),
    }
    if with_xattr:
        name = next(n for n in xattr.listxattr(str(view[with_xattr[0]])) if n.startswith("user."))
        ops["removexattr"] = lambda: xattr.removexattr(str(mnt / with_xattr[0]), name)
    return {op: _errno_of(fn) for op, fn in ops.items()}


@pytest.mark.parametrize("with_upper", [False, True], ids=["no-upper", "ro-upper"])
def test_writes_fail_erofs(with_upper: bool, tmp_path: Path, pyunion, overlay) -> None:
    """On a read-only view (no upper, or an upper with -o ro) every write is EROFS, like the
    kernel's; no layer changes (lowers: from before mount to after unmount; upper: after)."""
    lowers = stackgen.make_stack(tmp_path / "s", 2)
    view = stackgen.merged_view(lowers)
    before = {str(p): _fingerprint(p) for p in lowers}
    if with_upper:
        k_upper, k_work = _upper(tmp_path, "k")
        p_upper, _ = _upper(tmp_path, "p")
        kernel = overlay(lowers, k_upper, k_work, options=("ro", "redirect_dir=on", "index=on"))
        mine = pyunion(lowers, p_upper, options=("ro",))
        upper_before = _fingerprint(p_upper)
    else:
        kernel, mine = overlay(lowers, None, None), pyunion(lowers, None)
    ref = _write_attempts(kernel, view)
    assert set(ref.values()) == {"EROFS"}, f"kernel reference: {ref}"
    got = _write_attempts(mine, view)
    wrong = {op: e for op, e in got.items() if e != "EROFS"}
    assert not wrong, f"writes on a read-only pyunion view did not fail with EROFS: {wrong}"
    treesnap.assert_same_tree(_snap(mine), _snap(kernel), "view after the write attempts")
    if with_upper:
        assert _fingerprint(p_upper) == upper_before, "the upper changed"
        assert os.listdir(p_upper) == []
    changed = [p for p in lowers if _fingerprint(p) != before[str(p)]]
    assert not changed, f"lower layers changed: {changed}"
