"""Helpers for the failure-behaviour and POSIX-detail tests (test_write_failures.py,
test_posix_details.py): the same scenario on pyunion and on kernel overlayfs, errno outcomes,
utimensat with UTIME_NOW/UTIME_OMIT (renameat2 comes from unionfs.fs.syscalls), running
code as an ordinary user, and a 0755 scratch directory that such a user can traverse.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import mounts

KINDS = ("pyunion", "kernel")
NOBODY = 65534

# --- outcomes --------------------------------------------------------------------------------


def outcome(fn: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """``"ok"`` if ``fn(*args)`` succeeds, else the errno name (``"ENOENT"``)."""
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, f"errno {e.errno}")
    return "ok"


def create_file(path: os.PathLike | str, flags: int = 0, mode: int = 0o644) -> None:
    """open(O_CREAT | O_WRONLY | flags) and close."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | flags, mode))


def open_close(path: os.PathLike | str, flags: int) -> None:
    os.close(os.open(path, flags))


def mkfifo(path: os.PathLike | str) -> None:
    os.mknod(path, stat.S_IFIFO | 0o644)


def assert_same(subject: dict[str, Any], reference: dict[str, Any], what: str) -> None:
    """pyunion's observations equal the kernel's; the message lists only the differing keys."""
    keys = sorted(set(subject) | set(reference), key=str)
    missing = "<missing>"
    diff = [f"{k}: pyunion {subject.get(k, missing)!r}, kernel {reference.get(k, missing)!r}"
            for k in keys if subject.get(k, missing) != reference.get(k, missing)]
    assert not diff, f"{what}: pyunion differs from kernel overlayfs:\n  " + "\n  ".join(diff)


# --- syscalls --------------------------------------------------------------------------------

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _raise_errno(path: os.PathLike | str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), os.fspath(path))


def _timespec(value: int | str) -> _Timespec:
    if value == "now":
        return _Timespec(0, UTIME_NOW)
    if value == "omit":
        return _Timespec(0, UTIME_OMIT)
    assert isinstance(value, int)
    return _Timespec(value // 10**9, value % 10**9)


def utimensat(path: os.PathLike | str, atime: int | str, mtime: int | str) -> None:
    """utimensat(2); each time is nanoseconds, ``"now"`` (UTIME_NOW) or ``"omit"`` (UTIME_OMIT)."""
    times = (_Timespec * 2)(_timespec(atime), _timespec(mtime))
    fn = _libc.utimensat
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
    if fn(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        _raise_errno(path)


def drop_caches() -> None:
    """``echo 3 > /proc/sys/vm/drop_caches``: the kernel forgets unused dentries and inodes
    (FUSE sends FORGET), so the next lookup asks the filesystem afresh."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# --- the same stack mounted by pyunion and by the kernel -------------------------------------


@dataclass
class Union:
    """One mounted union: what a test needs to look at it from above and below."""

    kind: str                      # "pyunion" or "kernel"
    lowers: list[Path]
    upper: Path
    work: Path                     # pyunion: its default workdir; kernel: the workdir
    mnt: Path
    proc: subprocess.Popen | None = None
    options: tuple[str, ...] = ()  # pyunion's mount options

    @property
    def temp_dir(self) -> Path:
        """Where the implementation builds copies before renaming them into the upper."""
        return self.work / ("pyunion/tmp" if self.kind == "pyunion" else "work")


class Mounter:
    """Mounts pyunion (through the ``pyunion_daemon`` fixture, so the daemon can be waited for
    and killed) or kernel overlayfs (``overlay`` fixture) over given lowers with a fresh upper
    under ``base/<kind>/``, and remounts them."""

    def __init__(self, pyunion_daemon: Callable, overlay: Callable, base: Path) -> None:
        self._pyunion_daemon = pyunion_daemon
        self._overlay = overlay
        self.base = base
        self._count = 0

    def _fresh(self, stem: str) -> Path:
        self._count += 1
        path = self.base / f"{stem}-{self._count}"
        path.mkdir(mode=0o755)
        return path

    def mount(self, kind: str, lowers: list[Path], top: Path | None = None,
              options: tuple[str, ...] = ()) -> Union:
        """A new union of ``kind`` with its own upper in ``top`` (default: a fresh dir);
        ``options`` are pyunion's mount options."""
        top = top if top is not None else self._fresh(kind)
        upper = top / "upper"
        upper.mkdir(mode=0o755, exist_ok=True)
        work = top / (".upper.work" if kind == "pyunion" else "work")
        if kind == "kernel":
            work.mkdir(exist_ok=True)
        return self._mount(Union(kind, lowers, upper, work, self._fresh(f"{kind}-mnt"),
                                 options=options))

    def _mount(self, union: Union) -> Union:
        if union.kind == "pyunion":
            union.mnt, union.proc = self._pyunion_daemon(union.lowers, union.upper, union.mnt,
                                                         union.options)
        else:
            union.mnt = self._overlay(union.lowers, union.upper, union.work, union.mnt)
        return union

    def both(self, lowers: list[Path], options: tuple[str, ...] = ()) -> dict[str, Union]:
        return {kind: self.mount(kind, lowers, options=options) for kind in KINDS}

    def remount(self, union: Union) -> Union:
        """Unmounts (waiting for the daemon to exit) and mounts the same layers again."""
        mounts.unmount(union.mnt, union.proc)
        fresh = Union(union.kind, union.lowers, union.upper, union.work,
                      self._fresh(f"{union.kind}-mnt"), options=union.options)
        return self._mount(fresh)


def on_both(unions: dict[str, Union], scenario: Callable[[Union], dict[str, Any]],
            what: str) -> dict[str, Any]:
    """Runs ``scenario`` on each union, asserts pyunion saw what the kernel saw; returns the
    kernel's observations (for sanity checks of the scenario itself)."""
    seen = {kind: scenario(union) for kind, union in unions.items()}
    for kind, observed in seen.items():  # shown by pytest when the test fails
        print(f"{what} [{kind}]: {observed}")
    assert_same(seen["pyunion"], seen["kernel"], what)
    return seen["kernel"]


# --- layers ----------------------------------------------------------------------------------


def put(root: Path, rel: str, data: bytes = b"", mode: int = 0o644,
        owner: tuple[int, int] = (0, 0)) -> Path:
    """A regular file in a layer (chown before chmod: chown clears set-id bits)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def put_dir(root: Path, rel: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> Path:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def upper_kind(path: Path) -> str:
    """What the upper holds at ``path``: absent, whiteout, file, dir, ... (for comparisons)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chardev")):
        if test(st.st_mode):
            return name
    return "other"


def opaque_value(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
    except OSError:
        return None


# --- an ordinary user ------------------------------------------------------------------------

_NOBODY_PRELUDE = r'''
import errno, json, os, sys
def attempt(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"
def create(path, flags=0):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | flags, 0o644))
def write_at(path, data, offset=0):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
ARGS = json.loads(sys.argv[1])
OUT = {}
'''


def run_as_nobody(body: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs python ``body`` as uid/gid 65534 without supplementary groups.

    ``body`` sees ``ARGS`` (``args``), the helpers ``attempt``/``create``/``write_at`` and fills
    the dict ``OUT``, which is returned. Uses the system python (the venv may not be readable).
    """
    code = _NOBODY_PRELUDE + body + "\nprint(json.dumps(OUT))\n"
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
           "/usr/bin/python3", "-c", code, json.dumps(args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, f"snippet as uid {NOBODY} failed: {result.stderr}"
    return json.loads(result.stdout)


@contextlib.contextmanager
def public_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp that uid 65534 can traverse (pytest's tmp dirs are 0700).

    On the way out, anything still mounted below it is unmounted before it is removed, so a
    failure can never make the removal walk into a mounted union.
    """
    path = Path(tempfile.mkdtemp(prefix="pyunion-posix-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        prefix = os.path.realpath(path) + os.sep
        for point in sorted(mounts.mounted_paths(), reverse=True):
            if point.startswith(prefix):
                mounts.unmount(point)
        if not any(p.startswith(prefix) for p in mounts.mounted_paths()):
            shutil.rmtree(path, ignore_errors=True)
