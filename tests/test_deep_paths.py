"""Paths near and past PATH_MAX: pyunion against kernel overlayfs, at depth.

Every lower layer of the write-differential fixture (tests/test_write_differential.py) is
moved down a chain of 16 directories of 250-byte names, so its merged paths are 4,015 to
about 4,050 bytes long and every backing path (layer root + merged path) is longer than
PATH_MAX. Operations run inside the deepest directory (reached by ``chdir``, one name at a
time, as a user gets there) on pyunion and on kernel overlayfs (``redirect_dir=on,index=on``),
with the same outcome or errno expected from both and the same trees afterwards; then kernel
overlayfs mounts pyunion's upper and must show the same tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import mounts, treesnap
from tests.opscript import Model, Op, random_op, short
from tests.test_write_differential import _enter_kernel, _fresh, _snap, build_lowers

# 16 names of 250 bytes: the deepest directory's merged path is 4,015 bytes long.
CHAIN = [f"{i:02d}" + "d" * 248 for i in range(16)]
CHAIN_BYTES = len("/".join(CHAIN))
PATH_MAX = 4096
CHAIN_MTIME_NS = 1_200_000_000_000_000_000

# The operations the defect report lists, on lower objects (copy-ups), at depth.
FIXED_PROGRAM = [
    Op("create", ("new", "WRONLY|CREAT", 0o644, b"new\n")),
    Op("mkdir", ("newdir", 0o755)),
    Op("mkfifo", ("fifo2", 0o640)),
    Op("link", ("f_top", "d1/lnk")),
    Op("link", ("h1", "h1b")),
    Op("symlink", ("f1", "newsym")),
    Op("rename", ("f_bottom", "d1/f_moved", "0")),
    Op("rename", ("d1/sub", "d1/sub_renamed", "0")),  # a redirect, same parent
    Op("rename", ("d1/sub_renamed", "shared/sub2", "0")),  # EXDEV: redirect over redirect_max
    Op("rename", ("newdir", "d1/newdir2", "0")),
    Op("truncate", ("fat", 1000)),
    Op("write_at", ("d1/f2", 3, b"XY")),
    Op("chmod", ("d1/f1", 0o600)),
    Op("chown", ("f1", 1000, 1000, False)),
    Op("setxattr", ("f_top", "user.k", b"deep", "0", False)),
    Op("utime", ("mdir/m", 1_000_000_000_123_456_789, 1_000_000_000_123_456_789, False)),
    Op("unlink", ("shared/w",)),  # a whiteout
    Op("unlink", ("h2",)),
    Op("rmdir", ("empty",)),
    Op("rmdir", ("d1/sub_renamed/deeper",)),  # not empty
    Op("listdir", ("d1",)),
    Op("listdir", ("d1/sub_renamed",)),
    Op("read", ("d1/sub_renamed/g",)),
    Op("read", ("h1b",)),
    Op("mkdir", ("M" * 256, 0o755)),  # ENAMETOOLONG: a name over 255 bytes
]


def deepen(layer: Path) -> None:
    """Moves the whole content of ``layer`` down the chain (made through directory fds: its
    own paths are longer than PATH_MAX)."""
    names = os.listdir(layer)
    root_fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    fds = [root_fd]
    try:
        for name in CHAIN:
            os.mkdir(name, 0o755, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        for name in names:
            os.rename(name, name, src_dir_fd=root_fd, dst_dir_fd=fds[-1])
        for parent_fd, name in zip(fds[:-1], CHAIN, strict=True):
            os.utime(name, ns=(CHAIN_MTIME_NS, CHAIN_MTIME_NS), dir_fd=parent_fd)
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def inside(mnt: Path) -> Iterator[None]:
    """The deepest directory of ``mnt`` as the working directory."""
    old = os.getcwd()
    os.chdir(mnt)
    try:
        for name in CHAIN:
            os.chdir(name)
        yield
    finally:
        os.chdir(old)


def deep_snap(mnt: Path, t0: int) -> dict[str, Any]:
    with inside(mnt):
        return _snap(Path("."), t0)


def internal_names(upper: Path) -> list[str]:
    """``.wh.*`` names anywhere in an upper (walked by dir fds: it is deeper than PATH_MAX)."""
    out = []
    for dirpath, dirnames, filenames, _fd in os.fwalk(upper):
        out += [f"{dirpath}/{n}" for n in dirnames + filenames if n.startswith(".wh.")]
    return out


class DeepPair:
    """pyunion and kernel overlayfs over the same deep lowers, driven op by op at depth."""

    def __init__(self, stack: contextlib.ExitStack, base: Path, lowers: Sequence[Path]) -> None:
        self.base, self.lowers, self.t0 = base, lowers, time.time_ns()
        self.ops: list[Op] = []
        self.upper = _fresh(base, "s-upper")
        self.subject = stack.enter_context(
            mounts.pyunion_mounted(lowers, self.upper, _fresh(base, "s-mnt")))
        self.ref = _enter_kernel(stack, lowers, _fresh(base, "k-upper"), _fresh(base, "k-work"),
                                 _fresh(base, "k-mnt"))
        self.model = Model(self.check_trees())

    def run(self, op: Op) -> None:
        self.ops.append(op)
        with inside(self.ref):
            ref = op.apply(".")
        with inside(self.subject):
            got = op.apply(".")
        assert got == ref, f"{op}\n  pyunion: {short(got)}\n  kernel: {short(ref)}\n{self}"
        self.model = Model(self.check_trees())

    def check_trees(self) -> dict[str, Any]:
        ref = deep_snap(self.ref, self.t0)
        diff = treesnap.differences(deep_snap(self.subject, self.t0), ref)
        assert not diff, "trees differ (pyunion, kernel):\n  " + "\n  ".join(diff) + f"\n{self}"
        return ref

    def __str__(self) -> str:
        return "ops:\n  " + "\n  ".join(map(str, self.ops))


def check_upper_offline(pair: DeepPair, ref_snap: dict[str, Any]) -> None:
    """Unmounted: pyunion's upper is in kernel form, and kernel overlayfs reads it back."""
    assert internal_names(pair.upper) == []
    with contextlib.ExitStack() as stack:
        mnt = _enter_kernel(stack, pair.lowers, pair.upper, _fresh(pair.base, "offline-work"),
                            _fresh(pair.base, "offline-mnt"))
        diff = treesnap.differences(deep_snap(mnt, pair.t0), ref_snap)
    assert not diff, "kernel over pyunion's upper differs:\n  " + "\n  ".join(diff) + f"\n{pair}"


def deep_lowers(base: Path) -> list[Path]:
    """The fixture's lowers, deepened, in a directory whose own path is long too."""
    lowers = build_lowers(base)
    for layer in lowers:
        deepen(layer)
    return lowers


def long_base(tmp_path: Path) -> Path:
    """Where a test keeps its layers: a 100-byte name, so even the deepest directory's
    backing path (layer root + 4,015 bytes) is longer than PATH_MAX."""
    base = tmp_path / ("b" * 100)
    base.mkdir()
    return base


def run_program(base: Path, program: Sequence[Op] | None, steps: int = 0,
                seed: int = 0) -> None:
    base = long_base(base)
    lowers = deep_lowers(base)
    assert len(os.fsencode(str(lowers[0]))) + 1 + CHAIN_BYTES > PATH_MAX  # really too long
    with contextlib.ExitStack() as stack:
        pair = DeepPair(stack, base, lowers)
        if program is not None:
            for op in program:
                pair.run(op)
        rng = random.Random(seed)
        for _ in range(steps):
            pair.run(random_op(rng.choice, pair.model))
        ref_snap = pair.check_trees()
    check_upper_offline(pair, ref_snap)


@pytest.mark.timeout(300)
def test_operations_at_depth_match_the_kernel(tmp_path: Path) -> None:
    run_program(tmp_path, FIXED_PROGRAM)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(3))
def test_random_programs_at_depth_match_the_kernel(tmp_path: Path, seed: int) -> None:
    run_program(tmp_path, None, steps=40, seed=seed)


@pytest.mark.timeout(120)
def test_a_merged_path_of_path_max_fails_as_on_the_kernel(tmp_path: Path) -> None:
    """From the mount root, a path string of 4,096 bytes or more is refused (by the VFS,
    before any filesystem sees it), on both."""
    base = long_base(tmp_path)
    lowers = deep_lowers(base)
    with contextlib.ExitStack() as stack:
        pair = DeepPair(stack, base, lowers)
        for mnt in (pair.ref, pair.subject):
            long_path = f"{mnt}/{'/'.join(CHAIN)}/d1/f1"
            assert len(long_path) >= PATH_MAX
            with pytest.raises(OSError) as caught:
                os.stat(long_path)
            assert caught.value.errno == errno.ENAMETOOLONG
            with inside(mnt):
                assert os.stat("d1/f1").st_size > 0  # the same file, reached by steps
