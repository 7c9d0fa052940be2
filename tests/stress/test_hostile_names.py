"""Hostile names and shapes, each compared with kernel overlayfs on the same lower.

* names of 255 bytes, with newlines, invalid UTF-8, and every byte but '/' and NUL: in a
  lower, created, renamed, deleted (whiteouts) through the mount, with the same outcomes and
  the same tree as kernel overlayfs, and kernel overlayfs over pyunion's upper the same again;
* a merged directory of many entries (10,000 short, 100,000 long, over two lowers with
  whiteouts): listed in full, and in time linear in its size (10x the entries must take
  less than 20x the time);
* a sparse lower file copied up stays sparse;
* xattrs at the size limit of the upper's filesystem: copied up, set and refused as the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

import pytest

from tests import treesnap
from tests.stress.conftest import daemon_mounted, fresh_dir, kernel_overlay, size

BYTE_NAMES = [b"b" + bytes([c]) for c in range(1, 256) if c != ord("/")]
HOSTILE = [
    b"L" * 255,
    b"new\nline",
    b"\n",
    b"tab\there",
    b"\xff\xfe invalid utf-8 \xc3\x28",
    b"-rf",
    b" leading and trailing ",
    bytes(c for c in range(1, 256) if c != ord("/")),  # 254 bytes: every byte but / and NUL
    "ünïcødé ✓".encode(),
]


def _outcome(fn, *args) -> str:
    try:
        fn(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _script(root: bytes) -> list[tuple[str, str]]:
    """The same operations on a mount; their outcomes."""
    j = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    out = []
    for name in HOSTILE:
        out.append(("create " + repr(name[:20]), _outcome(
            lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)), j(b"new", name))))
        out.append(("rename lower " + repr(name[:20]), _outcome(
            os.rename, j(b"low", name), j(b"low", name[:-1] + b"~"))))
        out.append(("unlink byte " + repr(name[:20]), _outcome(os.unlink, j(b"bytes", b"b\n"))))
    for name in BYTE_NAMES[::7]:
        out.append(("unlink " + repr(name), _outcome(os.unlink, j(b"bytes", name))))
        out.append(("mkdir " + repr(name), _outcome(os.mkdir, j(b"new", name))))
    out.append(("create 256", _outcome(os.mkdir, j(b"new", b"M" * 256))))
    out.append(("rename to 256", _outcome(os.rename, j(b"bytes", b"b\x01"), j(b"M" * 256))))
    out.append(("listing", repr(sorted(os.listdir(j(b"bytes"))))))
    return out


def _lower_with_names(lower: Path) -> None:
    for d in (b"low", b"bytes", b"new"):
        os.mkdir(os.path.join(bytes(lower), d))
    for name in HOSTILE:
        with open(os.path.join(bytes(lower), b"low", name), "wb") as f:
            f.write(name)
    for name in BYTE_NAMES:
        with open(os.path.join(bytes(lower), b"bytes", name), "wb") as f:
            f.write(name)


@pytest.mark.timeout(120)
def test_hostile_names_as_kernel(tmp_path, figures):
    lower = fresh_dir(tmp_path, "lower")
    _lower_with_names(lower)
    lower_snap = treesnap.snapshot(lower, times=True)
    upper, mnt = fresh_dir(tmp_path, "upper"), fresh_dir(tmp_path, "mnt")
    kupper = fresh_dir(tmp_path, "kupper")
    with daemon_mounted([lower], upper, mnt) as proc:
        ours = _script(bytes(mnt))
        ours_tree = treesnap.snapshot(mnt)
        figures.daemon(proc.pid)
    with kernel_overlay([lower], kupper, tmp_path) as kmnt:
        theirs = _script(bytes(kmnt))
        theirs_tree = treesnap.snapshot(kmnt)
    diff = [f"{what}: pyunion {a} kernel {b}"
            for (what, a), (_, b) in zip(ours, theirs, strict=True) if a != b]
    assert not diff, "outcomes differ:\n  " + "\n  ".join(diff)
    treesnap.assert_same_tree(ours_tree, theirs_tree, "pyunion and kernel overlayfs")
    with kernel_overlay([lower], upper, tmp_path) as kmnt:
        treesnap.assert_same_tree(treesnap.snapshot(kmnt), theirs_tree,
                                  "kernel overlayfs over pyunion's upper and the reference")
    treesnap.assert_same_tree(treesnap.snapshot(lower, times=True), lower_snap, "the lower")
    figures["ops"] = len(ours)
    figures.note(f"{len(HOSTILE)} hostile names, {len(BYTE_NAMES)} one-byte names")


ENTRIES = size(10_000, 100_000)


def _big_dir(top: Path, bottom: Path, n: int, name: str) -> set[str]:
    """``name`` holding n entries over two lowers (half each) and n/10 whiteouts in the top
    one hiding bottom entries; the names the merged listing must show."""
    for layer in (top, bottom):
        (layer / name).mkdir()
    expected = set()
    for i in range(n):
        layer = top if i % 2 else bottom
        (layer / name / f"entry-{i:07d}").touch()
        expected.add(f"entry-{i:07d}")
    for i in range(0, n, 20):  # even: in the bottom layer; hidden by a whiteout on top
        os.mknod(top / name / f"entry-{i:07d}", 0o600 | 0o020000, os.makedev(0, 0))
        expected.discard(f"entry-{i:07d}")
    return expected


def _timed_listing(path: Path, repeats: int = 3) -> tuple[float, list[str]]:
    best, names = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        names = os.listdir(path)
        best = min(best, time.perf_counter() - start)
    return best, names


@pytest.mark.timeout(size(120, 600))
def test_big_directory_listing_is_linear(tmp_path, figures):
    top, bottom = fresh_dir(tmp_path, "top"), fresh_dir(tmp_path, "bottom")
    small = _big_dir(top, bottom, ENTRIES // 10, "small")
    big = _big_dir(top, bottom, ENTRIES, "big")
    upper = fresh_dir(tmp_path, "upper")
    with daemon_mounted([top, bottom], upper, fresh_dir(tmp_path, "mnt")) as proc:
        mnt = Path(proc.args[proc.args.index("-f") - 1])
        t_small, names_small = _timed_listing(mnt / "small")
        t_big, names_big = _timed_listing(mnt / "big")
        figures.daemon(proc.pid)
    assert sorted(names_small) == sorted(small)
    assert len(names_big) == len(set(names_big)) and set(names_big) == big
    with kernel_overlay([top, bottom], fresh_dir(tmp_path, "kupper"), tmp_path) as kmnt:
        k_small, _ = _timed_listing(kmnt / "small")
        k_big, k_names = _timed_listing(kmnt / "big")
    assert set(k_names) == big
    ratio = t_big / t_small
    figures["ops"] = len(names_big) + len(names_small)
    figures.note(f"listing {ENTRIES // 10:,} vs {ENTRIES:,} entries: {t_small * 1000:.0f} ms vs "
                 f"{t_big * 1000:.0f} ms, ratio {ratio:.1f} (kernel overlayfs "
                 f"{k_big / max(k_small, 1e-9):.1f})")
    assert ratio < 20, f"10x the entries took {ratio:.1f}x the time"


@pytest.mark.timeout(60)
def test_sparse_copy_up_stays_sparse(tmp_path, figures):
    lower, upper, mnt = (fresh_dir(tmp_path, n) for n in ("lower", "upper", "mnt"))
    apparent = 1 << 30
    chunks = {0: b"head", 300 << 20: os.urandom(1 << 20), apparent - 4096: b"tail" * 1024}
    with open(lower / "sparse", "wb") as f:
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
        f.truncate(apparent)
    with daemon_mounted([lower], upper, mnt):
        os.chmod(mnt / "sparse", 0o600)  # copy-up (full, not metacopy)
        with open(mnt / "sparse", "r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(b"!")
            for off, data in chunks.items():
                f.seek(off)
                assert f.read(len(data)) == data
            f.seek(100 << 20)
            assert f.read(1 << 20) == bytes(1 << 20), "a hole does not read as zeros"
    st = os.stat(upper / "sparse")
    assert st.st_size == apparent + 1
    allocated = st.st_blocks * 512
    figures.note(f"1 GiB sparse lower file with 1 MiB of data: upper copy allocates "
                 f"{allocated >> 10} KiB")
    assert allocated < 16 << 20, f"the upper copy allocates {allocated >> 20} MiB: not sparse"


def _largest_value(path: Path) -> int:
    """The largest user xattr value the filesystem of ``path`` takes (binary search)."""
    lo, hi = 1, 65536
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            os.setxattr(path, "user.probe", b"v" * mid)
            lo = mid
        except OSError:
            hi = mid - 1
        with contextlib.suppress(OSError):
            os.removexattr(path, "user.probe")
    return lo


@pytest.mark.timeout(60)
def test_xattrs_at_size_limit(tmp_path, figures):
    lower = fresh_dir(tmp_path, "lower")
    (lower / "f").write_text("x")
    limit = _largest_value(lower / "f")
    os.setxattr(lower / "f", "user.big", os.urandom(limit))
    big = os.getxattr(lower / "f", "user.big")
    for name in ("a", "b"):
        (lower / name).write_text(name)
    outcomes = {}
    for kind in ("pyunion", "kernel"):
        upper = fresh_dir(tmp_path, f"{kind}-upper")
        with contextlib.ExitStack() as stack:
            if kind == "pyunion":
                mnt = fresh_dir(tmp_path, "mnt")
                stack.enter_context(daemon_mounted([lower], upper, mnt))
            else:
                mnt = stack.enter_context(kernel_overlay([lower], upper, tmp_path))
            os.chmod(mnt / "f", 0o600)  # copy-up keeps the big value
            got = os.getxattr(mnt / "f", "user.big")
            outcomes[kind] = [
                got == big,
                _outcome(os.setxattr, mnt / "a", "user.max", b"m" * limit),
                _outcome(os.setxattr, mnt / "b", "user.over", b"o" * (limit + 1)),
                _outcome(os.setxattr, mnt / "b", "user.65k", b"o" * 65537),
                _outcome(os.setxattr, mnt / "b", "user." + "n" * 250, b"v"),
                _outcome(os.setxattr, mnt / "b", "user." + "n" * 251, b"v"),
            ]
            assert os.getxattr(upper / "f", "user.big") == big
    figures.note(f"largest xattr value on the upper's filesystem: {limit} bytes")
    assert outcomes["pyunion"][0], "the copied-up xattr differs"
    assert outcomes["pyunion"] == outcomes["kernel"], outcomes
