"""POSIX details of the write path, each compared with kernel overlayfs where it can be.

Every scenario runs on pyunion and on kernel overlayfs (``redirect_dir=on,index=on``) over the
same lower, each with its own upper, and the observations (errno names, "changed or not" of
times, modes, link counts, what the upper holds) must be equal. A few assertions on the kernel's
own observations check that the scenario means what it says. Only the ``.wh.`` name rule is
pyunion's own (the kernel allows such names).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import mounts, treesnap
from tests.posix_helpers import (
    NOBODY,
    Mounter,
    Union,
    assert_same,
    create_file,
    mkfifo,
    on_both,
    opaque_value,
    open_close,
    outcome,
    public_dir,
    put,
    put_dir,
    run_as_nobody,
    upper_kind,
    utimensat,
)
from unionfs.fs.operations import PYFUSE3_NO_OPEN
from unionfs.fs.syscalls import RENAME_NOREPLACE, renameat2

TICK = 0.03  # longer than the kernel's coarse clock step, so a change of a time is visible
OLD_NS = 1_000_000_000 * 1_000_000_000 + 123_456_789  # 2001-09-09, with nanoseconds


@pytest.fixture
def mounter(pyunion_daemon, overlay, tmp_path) -> Mounter:
    return Mounter(pyunion_daemon, overlay, tmp_path)


def same_trees(unions: dict[str, Union], what: str) -> None:
    treesnap.assert_same_tree(treesnap.snapshot(unions["pyunion"].mnt),
                              treesnap.snapshot(unions["kernel"].mnt), what)


def _error_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    put(lower, "file", b"lower file\n")
    put(lower, "file2", b"second lower file\n")
    put(lower, "dir/inner", b"inner\n")
    put(lower, "dir2/a", b"a\n")
    put(lower, "dir2/b", b"b\n")
    put(lower, "merged/lowerchild", b"lower child\n")
    put_dir(lower, "emptydir")
    put_dir(lower, "emptydir2")
    os.symlink("nowhere", lower / "dangling")
    os.symlink("dir", lower / "dirlink")
    return lower


def _error_setup(m: Path) -> None:
    """Upper-only objects, made the same way on both unions before the error cases."""
    (m / "upfile").write_bytes(b"upper file\n")
    (m / "updir").mkdir()
    (m / "updir" / "f").write_bytes(b"in upper dir\n")
    (m / "upempty").mkdir()
    (m / "upempty2").mkdir()


# --- ENAMETOOLONG ----------------------------------------------------------------------------

LONG = "n" * 256
LONGEST = "m" * 255


def _nametoolong(u: Union) -> dict[str, Any]:
    m = u.mnt
    _error_setup(m)
    return {
        "open O_CREAT": outcome(create_file, m / LONG),
        "open O_CREAT in lower dir": outcome(create_file, m / "dir" / LONG),
        "open O_CREAT in upper dir": outcome(create_file, m / "updir" / LONG),
        "open existing-looking": outcome(open_close, m / LONG, os.O_RDONLY),
        "mkdir": outcome(os.mkdir, m / LONG),
        "mkdir in lower dir": outcome(os.mkdir, m / "dir" / LONG),
        "lookup": outcome(os.lstat, m / LONG),
        "lookup in lower dir": outcome(os.lstat, m / "dir" / LONG),
        "lookup as a path prefix": outcome(os.lstat, m / LONG / "x"),
        "rename lower file to long name": outcome(os.rename, m / "file", m / LONG),
        "rename upper file to long name": outcome(os.rename, m / "upfile", m / "dir" / LONG),
        "rename lower dir to long name": outcome(os.rename, m / "emptydir", m / LONG),
        "rename from long name": outcome(os.rename, m / LONG, m / "x"),
        "symlink": outcome(os.symlink, "target", m / LONG),
        "link": outcome(os.link, m / "file", m / LONG),
        "mknod fifo": outcome(mkfifo, m / LONG),
        "unlink": outcome(os.unlink, m / LONG),
        "rmdir": outcome(os.rmdir, m / LONG),
        "255 bytes: create": outcome(create_file, m / LONGEST),
        "255 bytes: lookup": outcome(os.lstat, m / LONGEST),
        "255 bytes: rename": outcome(os.rename, m / LONGEST, m / "dir" / LONGEST),
        "255 bytes: mkdir": outcome(os.mkdir, m / LONGEST),
    }


def test_enametoolong(mounter, tmp_path):
    """A name over 255 bytes gives ENAMETOOLONG (not ENOENT) wherever it appears."""
    unions = mounter.both([_error_lower(tmp_path)])
    kernel = on_both(unions, _nametoolong, "names over 255 bytes")
    for case in ("open O_CREAT", "mkdir", "lookup", "rename lower file to long name"):
        assert kernel[case] == "ENAMETOOLONG", (case, kernel[case])
    same_trees(unions, "trees after the ENAMETOOLONG cases")


# --- ENOTEMPTY, EEXIST, ENOTDIR, EISDIR ------------------------------------------------------


def _enotempty(u: Union) -> dict[str, Any]:
    m = u.mnt
    _error_setup(m)
    seen = {
        "rmdir lower dir with lower child": outcome(os.rmdir, m / "dir"),
        "rmdir upper dir with child": outcome(os.rmdir, m / "updir"),
        "rename empty upper dir over non-empty lower dir": outcome(os.rename, m / "upempty",
                                                                   m / "dir"),
        "rename empty lower dir over non-empty lower dir": outcome(os.rename, m / "emptydir",
                                                                   m / "merged"),
        "rename empty lower dir over non-empty upper dir": outcome(os.rename, m / "emptydir",
                                                                   m / "updir"),
    }
    (m / "merged" / "new").write_bytes(b"x")
    os.unlink(m / "merged" / "new")
    seen["rmdir merged dir, only the lower child left"] = outcome(os.rmdir, m / "merged")
    os.unlink(m / "dir2" / "a")
    seen["rmdir lower dir, one of two children removed"] = outcome(os.rmdir, m / "dir2")
    os.unlink(m / "dir2" / "b")
    seen["rmdir lower dir, all children removed"] = outcome(os.rmdir, m / "dir2")
    seen["rename empty dir over emptied lower dir"] = outcome(os.rename, m / "upempty2",
                                                              m / "emptydir2")
    return seen


def test_enotempty(mounter, tmp_path):
    unions = mounter.both([_error_lower(tmp_path)])
    kernel = on_both(unions, _enotempty, "ENOTEMPTY cases")
    assert kernel["rmdir merged dir, only the lower child left"] == "ENOTEMPTY"
    assert kernel["rmdir lower dir, all children removed"] == "ok"
    same_trees(unions, "trees after the ENOTEMPTY cases")


def _eexist(u: Union) -> dict[str, Any]:
    m = u.mnt
    _error_setup(m)
    excl = os.O_EXCL
    seen = {
        "mkdir over lower file": outcome(os.mkdir, m / "file"),
        "mkdir over lower dir": outcome(os.mkdir, m / "dir"),
        "mkdir over upper file": outcome(os.mkdir, m / "upfile"),
        "mkdir over upper dir": outcome(os.mkdir, m / "updir"),
        "mkdir over dangling lower symlink": outcome(os.mkdir, m / "dangling"),
        "O_EXCL on lower file": outcome(create_file, m / "file", excl),
        "O_EXCL on lower dir": outcome(create_file, m / "dir", excl),
        "O_EXCL on upper file": outcome(create_file, m / "upfile", excl),
        "O_EXCL on dangling lower symlink": outcome(create_file, m / "dangling", excl),
        "O_EXCL on file in lower dir": outcome(create_file, m / "dir" / "inner", excl),
        "link to existing lower file": outcome(os.link, m / "upfile", m / "file"),
        "link to existing lower dir": outcome(os.link, m / "file", m / "dir"),
        "link lower file to existing upper file": outcome(os.link, m / "file", m / "upfile"),
        "symlink over lower file": outcome(os.symlink, "t", m / "file"),
        "mknod over lower dir": outcome(mkfifo, m / "dir"),
        "RENAME_NOREPLACE lower file over lower file": outcome(
            renameat2, m / "file", m / "file2", RENAME_NOREPLACE),
        "RENAME_NOREPLACE upper file over lower file": outcome(
            renameat2, m / "upfile", m / "file", RENAME_NOREPLACE),
        "RENAME_NOREPLACE lower file over upper file": outcome(
            renameat2, m / "file", m / "upfile", RENAME_NOREPLACE),
        "RENAME_NOREPLACE lower dir over empty lower dir": outcome(
            renameat2, m / "emptydir", m / "emptydir2", RENAME_NOREPLACE),
        "RENAME_NOREPLACE lower file over lower dir": outcome(
            renameat2, m / "file", m / "dir", RENAME_NOREPLACE),
    }
    os.unlink(m / "file2")
    seen["O_EXCL over a deleted lower file"] = outcome(create_file, m / "file2", excl)
    os.unlink(m / "file2")
    seen["RENAME_NOREPLACE onto a deleted lower name"] = outcome(
        renameat2, m / "upfile", m / "file2", RENAME_NOREPLACE)
    seen["RENAME_NOREPLACE to a new name"] = outcome(
        renameat2, m / "file", m / "fresh", RENAME_NOREPLACE)
    return seen


def test_eexist(mounter, tmp_path):
    unions = mounter.both([_error_lower(tmp_path)])
    kernel = on_both(unions, _eexist, "EEXIST cases")
    assert kernel["RENAME_NOREPLACE lower file over lower file"] == "EEXIST"
    assert kernel["O_EXCL over a deleted lower file"] == "ok"
    same_trees(unions, "trees after the EEXIST cases")


def _enotdir(u: Union) -> dict[str, Any]:
    m = u.mnt
    _error_setup(m)
    return {
        "lookup below a lower file": outcome(os.lstat, m / "file" / "x"),
        "lookup below an upper file": outcome(os.lstat, m / "upfile" / "x"),
        "lookup with trailing slash": outcome(os.lstat, str(m / "file") + "/"),
        "create below a lower file": outcome(create_file, m / "file" / "x"),
        "mkdir below a lower file": outcome(os.mkdir, m / "file" / "x"),
        "rmdir of a lower file": outcome(os.rmdir, m / "file"),
        "rmdir of an upper file": outcome(os.rmdir, m / "upfile"),
        "rmdir of a symlink to a dir": outcome(os.rmdir, m / "dirlink"),
        "listdir of a lower file": outcome(os.listdir, m / "file"),
        "O_DIRECTORY on a lower file": outcome(open_close, m / "file", os.O_DIRECTORY),
        "rename lower dir over lower file": outcome(os.rename, m / "emptydir", m / "file"),
        "rename upper dir over lower file": outcome(os.rename, m / "upempty", m / "file"),
        "rename lower dir over upper file": outcome(os.rename, m / "dir", m / "upfile"),
        "rename file with trailing slash": outcome(os.rename, str(m / "file") + "/", m / "x"),
    }


def test_enotdir(mounter, tmp_path):
    unions = mounter.both([_error_lower(tmp_path)])
    kernel = on_both(unions, _enotdir, "ENOTDIR cases")
    assert kernel["rename lower dir over lower file"] == "ENOTDIR"
    same_trees(unions, "trees after the ENOTDIR cases")


def _eisdir(u: Union) -> dict[str, Any]:
    m = u.mnt
    _error_setup(m)
    return {
        "open lower dir O_WRONLY": outcome(open_close, m / "dir", os.O_WRONLY),
        "open lower dir O_RDWR": outcome(open_close, m / "dir", os.O_RDWR),
        "open upper dir O_RDWR": outcome(open_close, m / "updir", os.O_RDWR),
        "open lower dir O_CREAT": outcome(create_file, m / "dir"),
        "unlink lower dir": outcome(os.unlink, m / "dir"),
        "unlink empty lower dir": outcome(os.unlink, m / "emptydir"),
        "unlink upper dir": outcome(os.unlink, m / "updir"),
        "rename lower file over empty lower dir": outcome(os.rename, m / "file", m / "emptydir"),
        "rename lower file over non-empty lower dir": outcome(os.rename, m / "file", m / "dir"),
        "rename upper file over empty upper dir": outcome(os.rename, m / "upfile", m / "upempty"),
        "truncate lower dir": outcome(os.truncate, m / "dir", 0),
    }


def test_eisdir(mounter, tmp_path):
    unions = mounter.both([_error_lower(tmp_path)])
    kernel = on_both(unions, _eisdir, "EISDIR cases")
    assert kernel["unlink lower dir"] == "EISDIR"
    same_trees(unions, "trees after the EISDIR cases")


# --- as an ordinary user ---------------------------------------------------------------------


def _user_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    put(lower, "rootfile", b"root's file\n", 0o644)
    put(lower, "rootfile666", b"root's writable file\n", 0o666)
    put(lower, "secret", b"secret\n", 0o600)
    put_dir(lower, "sticky", 0o1777)
    put(lower, "sticky/rootowned", b"in sticky dir\n", 0o666)
    put_dir(lower, "mine", 0o755, (NOBODY, NOBODY))
    put(lower, "mine/own", b"nobody's file\n", 0o644, (NOBODY, NOBODY))
    return lower


_USER_OPS = r'''
import stat
r = ARGS["root"]
OUT["create in root dir"] = attempt(create, r + "/new")
OUT["mkdir in root dir"] = attempt(os.mkdir, r + "/newdir")
OUT["symlink in root dir"] = attempt(os.symlink, "t", r + "/newlink")
OUT["mknod fifo in root dir"] = attempt(os.mknod, r + "/fifo", stat.S_IFIFO | 0o644)
OUT["link in root dir"] = attempt(os.link, r + "/mine/own", r + "/ownlink")
OUT["unlink root file"] = attempt(os.unlink, r + "/rootfile")
OUT["rename root file"] = attempt(os.rename, r + "/rootfile", r + "/mine/stolen")
OUT["chmod root file"] = attempt(os.chmod, r + "/rootfile", 0o777)
OUT["chown root file"] = attempt(os.chown, r + "/rootfile", 65534, 65534)
OUT["utime explicit on writable root file"] = attempt(os.utime, r + "/rootfile666", (1, 1))
OUT["utime now on read-only root file"] = attempt(os.utime, r + "/rootfile")
OUT["utime now on writable root file"] = attempt(os.utime, r + "/rootfile666")
OUT["setxattr on root file"] = attempt(os.setxattr, r + "/rootfile", "user.x", b"1")
OUT["open root file for writing"] = attempt(write_at, r + "/rootfile", b"x")
OUT["truncate root file"] = attempt(os.truncate, r + "/rootfile", 0)
OUT["read 0600 root file"] = attempt(lambda p: open(p, "rb").read(), r + "/secret")
OUT["write writable root file"] = attempt(write_at, r + "/rootfile666", b"W")
OUT["create in sticky dir"] = attempt(create, r + "/sticky/mine")
OUT["unlink root file in sticky dir"] = attempt(os.unlink, r + "/sticky/rootowned")
OUT["rename root file in sticky dir"] = attempt(os.rename, r + "/sticky/rootowned",
                                                r + "/sticky/moved")
OUT["create in own dir"] = attempt(create, r + "/mine/new")
OUT["chmod own file"] = attempt(os.chmod, r + "/mine/own", 0o600)
OUT["chown own file to root"] = attempt(os.chown, r + "/mine/own", 0, -1)
OUT["chgrp own file to root group"] = attempt(os.chown, r + "/mine/own", -1, 0)
OUT["listdir root dir"] = sorted(os.listdir(r))
'''


def test_permissions_as_ordinary_user(pyunion_daemon, overlay):
    """As uid 65534: EACCES creating in a root 0755 dir, EPERM chmod/chown of root's files,
    sticky-dir rules, utime rules; same errors and resulting trees as the kernel."""
    with public_dir() as base:
        unions = Mounter(pyunion_daemon, overlay, base).both([_user_lower(base)])
        kernel = on_both(unions, lambda u: run_as_nobody(_USER_OPS, {"root": str(u.mnt)}),
                         "errors as uid 65534")
        assert kernel["create in root dir"] == "EACCES"
        assert kernel["chmod root file"] == "EPERM"
        same_trees(unions, "trees after the ordinary user's attempts")


# --- set-id bits -----------------------------------------------------------------------------

SETID_MODES = (0o4777, 0o6777, 0o2777, 0o2767)
USER_WRITES = ("write", "truncate", "O_TRUNC")


def _setid_lower(root: Path) -> Path:
    """Root's set-id files; ``-grp`` ones belong to the writer's group (65534)."""
    lower = put_dir(root, "lower")
    for op in USER_WRITES:
        for mode in SETID_MODES:
            put(lower, f"lower-{op}-{mode:o}", b"set-id program\n", mode)
            put(lower, f"lower-{op}-{mode:o}-grp", b"set-id program\n", mode, (0, NOBODY))
    return lower


_USER_WRITE = r'''
for path in ARGS["paths"]:
    if "-write-" in path:
        OUT[path] = attempt(write_at, path, b"X", 2)
    elif "-truncate-" in path:
        OUT[path] = attempt(os.truncate, path, 3)
    else:
        OUT[path] = attempt(lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)), path)
'''


def _setid_by_user(u: Union) -> dict[str, Any]:
    m = u.mnt
    for op in USER_WRITES:
        for mode in SETID_MODES:
            for suffix, gid in (("", 0), ("-grp", NOBODY)):
                path = m / f"upper-{op}-{mode:o}{suffix}"
                path.write_bytes(b"set-id program\n")
                os.chown(path, 0, gid)
                os.chmod(path, mode)
    names = sorted(os.listdir(m))
    results = run_as_nobody(_USER_WRITE, {"paths": [str(m / n) for n in names]})
    return {n: (results[str(m / n)], oct(stat.S_IMODE(os.stat(m / n).st_mode))) for n in names}


def test_write_by_ordinary_user_clears_setid(pyunion_daemon, overlay):
    """uid 65534 writes / truncates / opens with O_TRUNC root's set-id files it may write
    (lower and upper ones, group root or the writer's group): S_ISUID and S_ISGID are cleared
    exactly as the kernel clears them (S_ISGID without group exec too, unless the writer is in
    the file's group)."""
    with public_dir() as base:
        unions = Mounter(pyunion_daemon, overlay, base).both([_setid_lower(base)])
        kernel = on_both(unions, _setid_by_user, "modes after a write by uid 65534")
        assert kernel["lower-write-4777"] == ("ok", "0o777")
        assert kernel["lower-write-2767-grp"] == ("ok", "0o2767")


CHOWN_CASES: dict[str, tuple[int, tuple[int, int]]] = {
    "04755 to uid 1000": (0o4755, (1000, -1)),
    "06755 to uid 1000": (0o6755, (1000, -1)),
    "02755 to gid 1000": (0o2755, (-1, 1000)),
    "02745 to gid 1000": (0o2745, (-1, 1000)),
    "04755 to the same owner": (0o4755, (0, 0)),
    "04755 with -1 -1": (0o4755, (-1, -1)),
}


def _chown_setid(u: Union) -> dict[str, Any]:
    m = u.mnt
    seen = {}
    for name, (mode, (uid, gid)) in CHOWN_CASES.items():
        upper_name = "upper " + name
        (m / upper_name).write_bytes(b"program\n")
        os.chmod(m / upper_name, mode)
        for target in ("lower " + name, upper_name):
            os.chown(m / target, uid, gid)
            st = os.stat(m / target)
            seen[target] = (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid)
    return seen


def test_chown_by_root_clears_setuid(mounter, tmp_path):
    """chown as root of set-id files (lower and upper) clears the bits as the kernel does."""
    lower = put_dir(tmp_path, "lower")
    for name, (mode, _) in CHOWN_CASES.items():
        put(lower, "lower " + name, b"program\n", mode)
    kernel = on_both(mounter.both([lower]), _chown_setid, "modes after chown by root")
    assert kernel["lower 04755 to uid 1000"][0] == "0o755"


# --- open, unlinked files --------------------------------------------------------------------


def _unlinked_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    put(lower, "rw", b"lower rw\n")
    put(lower, "ro", b"lower ro\n")
    put(lower, "h1", b"hard link\n")
    os.link(lower / "h1", lower / "h2")
    return lower


def _use_unlinked(fd: int, writable: bool) -> dict[str, Any]:
    st = os.fstat(fd)
    seen: dict[str, Any] = {"nlink": st.st_nlink}
    if writable:
        seen["write"] = outcome(os.pwrite, fd, b"NEW", 2)
        seen["ftruncate"] = outcome(os.ftruncate, fd, 20)
        seen["fchmod"] = outcome(os.fchmod, fd, 0o600)
        seen["mode"] = oct(stat.S_IMODE(os.fstat(fd).st_mode))
        seen["size"] = os.fstat(fd).st_size
    seen["read"] = os.pread(fd, 100, 0)
    seen["nlink at the end"] = os.fstat(fd).st_nlink
    return seen


def _unlinked(u: Union, names: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    m = u.mnt
    (m / "up").write_bytes(b"upper file\n")
    seen = {}
    for name, flags in names:
        fd = os.open(m / name, flags)
        try:
            os.unlink(m / name)
            seen[name] = _use_unlinked(fd, flags == os.O_RDWR)
        finally:
            os.close(fd)
    seen["names left"] = sorted(os.listdir(m))
    return seen


def test_open_unlinked_file(mounter, tmp_path):
    """fstat of an open, unlinked file gives st_nlink 0 (1 for a remaining hard link), and it
    still reads, writes, truncates and chmods; the other name sees the writes."""
    names = (("up", os.O_RDWR), ("rw", os.O_RDWR), ("h1", os.O_RDWR))
    unions = mounter.both([_unlinked_lower(tmp_path)])
    kernel = on_both(unions, lambda u: _unlinked(u, names), "open unlinked files")
    assert kernel["up"]["nlink"] == 0
    assert kernel["rw"]["read"].startswith(b"loNEW")
    assert kernel["h1"]["nlink"] == 1
    seen = {kind: (u.mnt / "h2").read_bytes() for kind, u in unions.items()}
    assert seen["pyunion"] == seen["kernel"] == kernel["h1"]["read"]


def test_open_unlinked_lower_file_read_only(pyunion_daemon, overlay, tmp_path):
    """A lower file opened O_RDONLY, then unlinked: fstat gives st_nlink 0 and it still reads.
    Not differential: kernel overlayfs reports st_nlink 1 here (it stats the lower file, which
    still has its name), so this asserts the POSIX answer."""
    lower = _unlinked_lower(tmp_path)
    union = Mounter(pyunion_daemon, overlay, tmp_path).mount("pyunion", [lower])
    seen = _unlinked(union, (("ro", os.O_RDONLY),))
    assert seen["ro"] == {"nlink": 0, "read": b"lower ro\n", "nlink at the end": 0}
    assert "ro" not in seen["names left"]


# --- times -----------------------------------------------------------------------------------


def _mc(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_mtime_ns, st.st_ctime_ns


def _fd_op(flags: int, action: Callable[[int], object]) -> Callable[[Path, Path], None]:
    def op(f: Path, d: Path) -> None:
        fd = os.open(f, flags)
        try:
            action(fd)
        finally:
            os.close(fd)
    return op


def _rename(f: Path, d: Path) -> Path:
    new = d / (f.name + ".renamed")
    os.rename(f, new)
    return new


TIME_OPS: dict[str, Callable[[Path, Path], Path | None]] = {
    "write": _fd_op(os.O_WRONLY, lambda fd: os.pwrite(fd, b"w", 0)),
    "append": _fd_op(os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, b"more")),
    "write 0 bytes": _fd_op(os.O_WRONLY, lambda fd: os.write(fd, b"")),
    "open O_RDWR, no write": _fd_op(os.O_RDWR, lambda fd: None),
    "open O_TRUNC": _fd_op(os.O_WRONLY | os.O_TRUNC, lambda fd: None),
    "read": _fd_op(os.O_RDONLY, lambda fd: os.read(fd, 100)),
    "ftruncate": _fd_op(os.O_RDWR, lambda fd: os.ftruncate(fd, 2)),
    "truncate": lambda f, d: os.truncate(f, 2),
    "truncate to same size": lambda f, d: os.truncate(f, os.stat(f).st_size),
    "chmod": lambda f, d: os.chmod(f, 0o640),
    "chmod to same mode": lambda f, d: os.chmod(f, 0o644),
    "chown to same owner": lambda f, d: os.chown(f, 0, 0),
    "setxattr": lambda f, d: os.setxattr(f, "user.t", b"1"),
    "utime explicit": lambda f, d: os.utime(f, ns=(OLD_NS, OLD_NS)),
    "link": lambda f, d: os.link(f, d / (f.name + ".link")),
    "unlink other name": lambda f, d: os.unlink(d / (f.name + ".2")),
    "rename": _rename,
    "create sibling": lambda f, d: create_file(d / (f.name + ".new")),
    "mkdir sibling": lambda f, d: os.mkdir(d / (f.name + ".dir")),
    "symlink sibling": lambda f, d: os.symlink("t", d / (f.name + ".sym")),
    "unlink sibling": lambda f, d: os.unlink(d / (f.name + ".sib")),
}


def _times_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    for op in TIME_OPS:
        f = put(lower, f"ld/{op}", b"content\n")
        os.link(f, lower / "ld" / f"{op}.2")
        put(lower, f"ld/{op}.sib", b"sibling\n")
    for path in lower.rglob("*"):
        os.utime(path, ns=(OLD_NS, OLD_NS))
    os.utime(lower / "ld", ns=(OLD_NS, OLD_NS))
    return lower


def _time_changes(u: Union) -> dict[str, Any]:
    m = u.mnt
    (m / "ud").mkdir()
    for op in TIME_OPS:
        (m / "ud" / op).write_bytes(b"content\n")
        os.link(m / "ud" / op, m / "ud" / f"{op}.2")
        (m / "ud" / f"{op}.sib").write_bytes(b"sibling\n")
    seen = {}
    for where in ("ld", "ud"):
        d = m / where
        for op, action in TIME_OPS.items():
            f = d / op
            before_f, before_d = _mc(f), _mc(d)
            time.sleep(TICK)
            new = action(f, d) or f
            after_f, after_d = _mc(new), _mc(d)
            seen[f"{where}: {op}"] = {
                "file mtime changed": after_f[0] != before_f[0],
                "file ctime changed": after_f[1] != before_f[1],
                "dir mtime changed": after_d[0] != before_d[0],
                "dir ctime changed": after_d[1] != before_d[1],
            }
    return seen


def test_mtime_ctime_changes(mounter, tmp_path):
    """Which of file mtime/ctime and parent dir mtime/ctime change for write, truncate, chmod,
    chown, link, unlink, rename, ... on lower ("ld") and upper ("ud") files, as on the kernel."""
    unions = mounter.both([_times_lower(tmp_path)])
    if not PYFUSE3_NO_OPEN or mounts.PASSTHROUGH:  # (passthrough copies up at open)
        kernel = on_both(unions, _time_changes, "time changes")
    else:
        # Files are used without open requests (inode_io.py): a lower file is copied up at
        # its first write, not when opened for writing. Opened and closed unwritten it
        # keeps its times, as on any filesystem; the kernel's copy-up at open changes ctimes.
        ours, kernel = _time_changes(unions["pyunion"]), _time_changes(unions["kernel"])
        untouched = dict.fromkeys(("file mtime changed", "file ctime changed",
                                   "dir mtime changed", "dir ctime changed"), False)
        for op in ("ld: write 0 bytes", "ld: open O_RDWR, no write"):
            assert ours.pop(op) == untouched, op
            assert kernel.pop(op)["file ctime changed"], op
        assert_same(ours, kernel, "time changes")
    # The copy-up puts a new entry into the (already copied-up) upper dir: its ctime changes,
    # its mtime is restored.
    assert kernel["ld: chmod"] == {"file mtime changed": False, "file ctime changed": True,
                                   "dir mtime changed": False, "dir ctime changed": True}
    assert kernel["ud: link"]["dir mtime changed"] and kernel["ud: link"]["file ctime changed"]


UTIME_CASES: dict[str, tuple[int | str, int | str]] = {
    "now, now": ("now", "now"),
    "omit, explicit": ("omit", OLD_NS + 5),
    "explicit, omit": (OLD_NS + 7, "omit"),
    "omit, omit": ("omit", "omit"),
    "now, omit": ("now", "omit"),
    "omit, now": ("omit", "now"),
    "explicit, explicit": (OLD_NS + 11, OLD_NS + 13),
}


def _describe_time(before: int, after: int, wanted: int | str) -> str:
    if after == before:
        return "unchanged"
    if isinstance(wanted, int) and after == wanted:
        return "as given"
    if abs(after - time.time_ns()) < 10 * 10**9:
        return "now"
    return f"other: {after}"


def _utimens(u: Union) -> dict[str, Any]:
    m = u.mnt
    (m / "ud").mkdir()
    for case in UTIME_CASES:
        (m / "ud" / case).write_bytes(b"upper\n")
        os.utime(m / "ud" / case, ns=(OLD_NS, OLD_NS))
    seen = {}
    for where in ("ld", "ud"):
        for case, (atime, mtime) in UTIME_CASES.items():
            path = m / where / case
            before = os.stat(path)
            time.sleep(TICK)
            result = outcome(utimensat, path, atime, mtime)
            after = os.stat(path)
            seen[f"{where}: {case}"] = {
                "result": result,
                "atime": _describe_time(before.st_atime_ns, after.st_atime_ns, atime),
                "mtime": _describe_time(before.st_mtime_ns, after.st_mtime_ns, mtime),
                "ctime changed": after.st_ctime_ns != before.st_ctime_ns,
                "in upper": upper_kind(u.upper / where / case),
            }
    os.utime(m / "ld" / "plain", ns=(OLD_NS + 17, OLD_NS + 19))
    st = os.stat(m / "ld" / "plain")
    seen["os.utime ns on a lower file"] = (st.st_atime_ns - OLD_NS, st.st_mtime_ns - OLD_NS)
    return seen


def test_utimens_now_and_omit(mounter, tmp_path):
    """utimensat with UTIME_NOW / UTIME_OMIT / explicit ns times on lower and upper files."""
    lower = put_dir(tmp_path, "lower")
    for case in [*UTIME_CASES, "plain"]:
        put(lower, f"ld/{case}", b"lower\n")
        os.utime(lower / "ld" / case, ns=(OLD_NS, OLD_NS))
    kernel = on_both(mounter.both([lower]), _utimens, "utimensat")
    assert kernel["ld: omit, explicit"]["mtime"] == "as given"
    assert kernel["ld: omit, explicit"]["atime"] == "unchanged"
    assert kernel["ud: now, now"]["mtime"] == "now"


# --- .wh. names ------------------------------------------------------------------------------


def _wh_attempts(m: Path) -> dict[str, str]:
    (m / "upfile").write_bytes(b"upper\n")
    (m / "updir").mkdir()
    return {
        "create": outcome(create_file, m / ".wh.created"),
        "create in lower dir": outcome(create_file, m / "dir" / ".wh.created"),
        "create opaque marker": outcome(create_file, m / "dir" / ".wh..wh..opq"),
        "mkdir": outcome(os.mkdir, m / ".wh.dir"),
        "symlink": outcome(os.symlink, "target", m / ".wh.symlink"),
        "link": outcome(os.link, m / "file", m / ".wh.link"),
        "mknod fifo": outcome(mkfifo, m / ".wh.fifo"),
        "rename lower file to .wh.": outcome(os.rename, m / "file", m / ".wh.file"),
        "rename upper file to .wh.": outcome(os.rename, m / "upfile", m / "dir" / ".wh.file"),
        "rename upper dir to .wh.": outcome(os.rename, m / "updir", m / ".wh.updir"),
    }


def test_whiteout_prefixed_names_are_refused(mounter, tmp_path):
    """pyunion refuses every new name starting with ``.wh.`` with EINVAL (it would read back as
    a whiteout); nothing lands in the upper. The kernel allows them (checked, so the operations
    themselves are valid)."""
    lower = put_dir(tmp_path, "lower")
    put(lower, "file", b"lower\n")
    put(lower, "dir/inner", b"inner\n")
    unions = mounter.both([lower])
    subject = _wh_attempts(unions["pyunion"].mnt)
    kernel = _wh_attempts(unions["kernel"].mnt)
    assert set(kernel.values()) == {"ok"}, kernel
    assert subject == dict.fromkeys(subject, "EINVAL"), subject
    upper = unions["pyunion"].upper
    found = [str(p.relative_to(upper)) for p in upper.rglob(".wh.*")]
    assert not found, f"pyunion left .wh. names in its upper: {found}"
    assert not [p for p in unions["pyunion"].mnt.rglob(".wh.*")]


# --- whiteouts in the upper ------------------------------------------------------------------


def _whiteout_lowers(root: Path) -> list[Path]:
    top, bottom = put_dir(root, "top"), put_dir(root, "bottom")
    for name in ("hidden", "dir/gone", "dir/kept", "plain", "tree/a", "tree/sub/b"):
        put(bottom, name, b"bottom " + name.encode() + b"\n")
    put_dir(bottom, "lowerdir")
    put_dir(bottom, "fulldir/sub")
    put(bottom, "fulldir/sub/f", b"f\n")
    for name in ("file", "copied", "renamed-lower", "recreated"):
        put(top, name, name.encode() + b"\n")
    put_dir(top, "dir")
    for name in ("hidden", "dir/gone", "orphan"):
        os.mknod(top / name, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    return [top, bottom]


def _remove_things(u: Union) -> dict[str, Any]:
    m = u.mnt
    (m / "upper-file").write_bytes(b"upper only\n")
    (m / "upper-dir").mkdir()
    (m / "upper-moved").write_bytes(b"upper, moved\n")
    with open(m / "copied", "ab") as f:
        f.write(b"copied up\n")
    os.rename(m / "upper-moved", m / "upper-moved-2")
    os.rename(m / "renamed-lower", m / "renamed-lower-2")
    os.unlink(m / "recreated")
    (m / "recreated").write_bytes(b"new\n")
    for name in ("file", "copied", "upper-file", "upper-moved-2", "renamed-lower-2", "recreated",
                 "dir/kept", "plain"):
        os.unlink(m / name)
    for name in ("upper-dir", "lowerdir"):
        os.rmdir(m / name)
    shutil.rmtree(m / "fulldir")
    names = ("file", "copied", "upper-file", "upper-moved", "upper-moved-2", "renamed-lower",
             "renamed-lower-2", "recreated", "dir/kept", "plain", "upper-dir", "lowerdir",
             "fulldir", "hidden", "orphan", "dir/gone")
    seen: dict[str, Any] = {f"upper: {n}": upper_kind(u.upper / n) for n in names}
    seen.update({f"lstat: {n}": outcome(os.lstat, m / n) for n in names})
    seen["listing"] = sorted(str(p.relative_to(m)) for p in m.rglob("*"))
    return seen


def test_whiteouts(mounter, tmp_path):
    """Removing a lower name leaves a char 0/0 whiteout in the upper, removing an upper-only
    name leaves nothing; whiteouts (made by us or found in a lower) are never visible."""
    unions = mounter.both(_whiteout_lowers(tmp_path))
    kernel = on_both(unions, _remove_things, "whiteouts")
    assert kernel["upper: file"] == "whiteout"
    assert kernel["upper: upper-file"] == "absent"
    for kind, union in unions.items():
        snap = treesnap.snapshot(union.mnt)
        visible = [p for p, e in snap["entries"].items()
                   if e["type"] == stat.S_IFCHR and e.get("rdev") == (0, 0)]
        assert not visible, f"{kind} shows whiteouts: {visible}"
    same_trees(unions, "trees after removals")
    remounted = {kind: mounter.remount(u) for kind, u in unions.items()}
    same_trees(remounted, "trees after removals and a remount")


def _recreate_dir(u: Union) -> dict[str, Any]:
    m = u.mnt
    shutil.rmtree(m / "tree")
    os.mkdir(m / "tree")
    seen: dict[str, Any] = {"listing": os.listdir(m / "tree")}
    (m / "tree" / "sub").mkdir()
    seen["listing after mkdir sub"] = os.listdir(m / "tree" / "sub")
    up = u.upper / "tree"
    seen["upper tree opaque"] = opaque_value(up)
    seen["upper tree entries"] = sorted(os.listdir(up))
    seen["upper tree/sub opaque"] = opaque_value(up / "sub")
    return seen


def test_rm_rf_and_mkdir_gives_opaque_dir(mounter, tmp_path):
    """``rm -rf dir; mkdir dir`` of a lower dir: empty dir, ``trusted.overlay.opaque=y`` in the
    upper, no whiteouts inside it; still empty after a remount."""
    lower = put_dir(tmp_path, "lower")
    for name in ("tree/a", "tree/sub/b", "tree/sub/deeper/c"):
        put(lower, name, b"x\n")
    unions = mounter.both([lower])
    kernel = on_both(unions, _recreate_dir, "rm -rf + mkdir")
    assert kernel["upper tree opaque"] == b"y" and kernel["listing"] == []
    remounted = {kind: mounter.remount(u) for kind, u in unions.items()}
    same_trees(remounted, "trees after rm -rf + mkdir and a remount")
