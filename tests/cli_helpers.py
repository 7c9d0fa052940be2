"""Helpers for the ``mount.pyunion`` command-line tests (test_mount_cli, test_mount_errors).

Runs the helper in background or foreground mode, makes the scratch mounts the tests need
(tmpfs, read-only binds) and always undoes them, finds the daemon of a background mount through
/proc, and takes the "shape" snapshots that show whether a refused mount changed anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xattr

from tests import mounts

# The network of the tests' containers run as root: the host's, which pyunion leaves alone.
# The default (root's: the bridge) would add a bridge, veths and NAT rules to the host's own
# network, shared by every test run on the machine (and every store's default network is the
# same pyunion0, 10.90.0.0/24); tests/container/test_network.py tests the default in a network
# namespace of its own.
TEST_NETWORK = {"PYUNION_NETWORK": "host"}

HELPER = [sys.executable, "-m", "mount_helper"]
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# A mount namespace whose /dev is an empty tmpfs (plus /dev/null): /dev/fuse is missing there only.
WITHOUT_DEV_FUSE = [
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && exec "$@"',
    "sh",
]
# A mount namespace whose fusermount3 is a copy without the setuid bit; run as uid/gid 65534.
FUSERMOUNT_NOT_SETUID_AS_NOBODY = [
    *WITHOUT_DEV_FUSE[:6],
    'f=$(mktemp) && cp "$(command -v fusermount3)" "$f" && chmod 0755 "$f"'
    ' && mount --bind "$f" "$(command -v fusermount3)" && exec "$@"',
    "sh",
    *AS_NOBODY,
]
# A mount namespace whose /dev/fuse is 0666 (as udev makes it), run as uid/gid 65534.
_DEV_FUSE_0666 = ("mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3"
                  " && mknod -m 666 /dev/fuse c 10 229")
DEV_FUSE_0666_AS_NOBODY = [*WITHOUT_DEV_FUSE[:6], _DEV_FUSE_0666 + ' && exec "$@"', "sh",
                           *AS_NOBODY]
# Same, and its /etc/fuse.conf is empty (no user_allow_other).
NO_USER_ALLOW_OTHER_AS_NOBODY = [
    *WITHOUT_DEV_FUSE[:6],
    _DEV_FUSE_0666 + ' && f=$(mktemp) && mount --bind "$f" /etc/fuse.conf && exec "$@"',
    "sh",
    *AS_NOBODY,
]
# A mount namespace whose /dev/fuse is root's, 0600; run as uid/gid 65534.
DEV_FUSE_0600_AS_NOBODY = [
    *WITHOUT_DEV_FUSE[:6],
    "mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3"
    ' && mknod -m 600 /dev/fuse c 10 229 && exec "$@"',
    "sh",
    *AS_NOBODY,
]
RUN_TIMEOUT = 60.0
PREFIX = "mount.pyunion: "


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_through_files(cmd: Sequence[str], *, timeout: float, input: str | bytes | None = None,
                      stdin: Any = None, on_start: Callable[[subprocess.Popen], None] | None = None,
                      **popen: Any) -> tuple[int, bytes, bytes]:
    """Runs ``cmd`` and waits for that process only: (status, stdout, stderr).

    Output goes to anonymous files, not pipes: a background daemon that (wrongly) keeps the
    caller's stdout/stderr open must not make this wait forever. Standard input is ``input``
    (text or bytes), else ``stdin`` (an open file), else /dev/null. ``on_start`` sees the
    process as soon as it exists (to kill it at teardown).
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryFile())
        err = stack.enter_context(tempfile.TemporaryFile())
        if input is not None:
            stdin = stack.enter_context(tempfile.TemporaryFile())
            stdin.write(input.encode() if isinstance(input, str) else input)
            stdin.seek(0)
        proc = subprocess.Popen([str(c) for c in cmd],
                                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=out, stderr=err, **popen)
        if on_start is not None:
            on_start(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def run_helper(args: Sequence[str], *, wrapper: Sequence[str] = (), timeout: float = RUN_TIMEOUT,
               cmd: Sequence[str] = HELPER, cwd: os.PathLike | str | None = None) -> Result:
    """Run ``[*wrapper, *cmd, *args]`` and wait for that process only."""
    status, out, err = run_through_files([*wrapper, *cmd, *map(str, args)], timeout=timeout,
                                         cwd=cwd)
    return Result(status, out.decode(errors="replace"), err.decode(errors="replace"))


def run_checked(cmd: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}): {result.stderr.strip()}"
    return result


# --------------------------------------------------------------------------- mount table


def mountinfo_lines() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f]


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def mounts_below(roots: Sequence[os.PathLike | str]) -> Counter[str]:
    """Mount points at or below any of ``roots`` (a multiset: stacked mounts count twice)."""
    bases = [os.path.realpath(r) for r in roots]
    found: Counter[str] = Counter()
    for fields in mountinfo_lines():
        point = _unescape(fields[4])
        if any(point == b or point.startswith(b + os.sep) for b in bases):
            found[point] += 1
    return found


@dataclass
class MountInfo:
    source: str
    fstype: str
    mount_options: list[str]  # per-mount options (field 6): ro, nosuid, nodev, noexec, ...
    super_options: list[str]  # superblock options: user_id=, allow_other, default_permissions


def mount_info(path: os.PathLike | str) -> MountInfo | None:
    """The top-most mount at ``path`` as listed in /proc/self/mountinfo, or None."""
    target = os.path.realpath(path)
    found = None
    for fields in mountinfo_lines():
        if _unescape(fields[4]) == target:
            sep = fields.index("-")
            found = MountInfo(
                source=_unescape(fields[sep + 2]),
                fstype=fields[sep + 1],
                mount_options=fields[5].split(","),
                super_options=fields[sep + 3].split(",") if len(fields) > sep + 3 else [],
            )
    return found


def undo_mounts(new: Counter[str]) -> None:
    """Unmount mounts a test did not mean to create (deepest first, stacked ones repeatedly)."""
    for point in sorted(new, key=len, reverse=True):
        for _ in range(new[point]):
            mounts.unmount(point)


@contextlib.contextmanager
def tmpfs_mounted(path: os.PathLike | str, options: str = "") -> Iterator[Path]:
    """A fresh tmpfs at ``path`` for the block; unmounted in ``finally``."""
    cmd = ["mount", "-t", "tmpfs"]
    if options:
        cmd += ["-o", options]
    run_checked([*cmd, "clitests", path])
    try:
        yield Path(path)
    finally:
        mounts.unmount(path)


@contextlib.contextmanager
def readonly_bind(src: os.PathLike | str, dst: os.PathLike | str) -> Iterator[Path]:
    """``src`` bind-mounted read-only at ``dst`` (same filesystem, read-only mount)."""
    run_checked(["mount", "--bind", src, dst])
    try:
        run_checked(["mount", "-o", "remount,bind,ro", dst])
        yield Path(dst)
    finally:
        mounts.unmount(dst)


def remount_ro(path: os.PathLike | str) -> None:
    run_checked(["mount", "-o", "remount,ro", path])


# --------------------------------------------------------------------------- directories


def run_as_nobody_with_fuse(pub: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Gives everything under ``pub`` to uid 65534 and runs the shell ``script`` there as that
    user, in a mount namespace whose /dev/fuse is 0666; ``{helper}`` in it is mount.pyunion."""
    for dirpath, dirnames, filenames in os.walk(pub):
        for name in (".", *dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
    return subprocess.run(
        [*DEV_FUSE_0666_AS_NOBODY, "sh", "-c", script.format(helper=" ".join(HELPER))],
        cwd=pub, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()})


@contextlib.contextmanager
def public_dir(prefix: str = "pyunion-clitests-") -> Iterator[Path]:
    """A 0755 scratch dir in /tmp that uid 65534 can traverse (pytest's basetemp is 0700).

    Anything still mounted below it is unmounted before it is removed.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        undo_mounts(mounts_below([path]))
        shutil.rmtree(path, ignore_errors=True)


def make_dirs(base: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        p = base / name
        p.mkdir(parents=True)
        out.append(p)
    return out


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def default_workdir(upper: os.PathLike | str) -> Path:
    """The contract's default workdir: ``<parent of upper>/.<upper name>.work``."""
    upper = Path(upper)
    return upper.parent / f".{upper.name}.work"


def _all_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = xattr.listxattr(path, symlink=True)
    except OSError:
        return ()
    items = []
    for name in sorted(names):
        try:
            items.append((name, xattr.getxattr(path, name, symlink=True)))
        except OSError as e:
            items.append((name, f"<errno {e.errno}>".encode()))
    return tuple(items)


def tree_shape(root: os.PathLike | str) -> dict[str, tuple]:
    """Names, types, modes, symlink targets and all xattrs (every namespace) below ``root``.

    Hidden entries are included; ``root`` itself is recorded as ``"."``. Used to prove that a
    refused mount created or changed nothing (no workdir, no marker xattr on the upper ...).
    """
    shape: dict[str, tuple] = {}
    pending = [(os.fspath(root), ".")]
    while pending:
        full, rel = pending.pop()
        st = os.lstat(full)
        target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
        shape[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), target,
                      _all_xattrs(full))
        if stat.S_ISDIR(st.st_mode):
            for name in os.listdir(full):
                pending.append((os.path.join(full, name), os.path.join(rel, name)))
    return shape


# --------------------------------------------------------------------------- processes


def pids_with_arg(arg: os.PathLike | str) -> set[int]:
    """Processes (other than this one) whose command line has ``arg`` as one argument."""
    wanted = {os.fspath(arg), os.path.realpath(arg)}
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if wanted & set(args):
            found.add(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has finished running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until all ``pids`` have exited; returns those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if pid_alive(p)}
        if alive:
            time.sleep(0.05)
    return alive


def kill_leftovers(pids: set[int]) -> None:
    """SIGKILL daemons we started (found by our unique mountpoint path) that did not exit."""
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def foreground_mounted(args: Sequence[os.PathLike | str], mnt: os.PathLike | str,
                       cmd: Sequence[str] = HELPER) -> Iterator[Path]:
    """``mount.pyunion ARGS -f`` (any argument form) mounted at ``mnt`` for the block."""
    proc = mounts.start_pyunion([*cmd, *map(str, args), "-f"], mnt)
    try:
        yield Path(mnt)
    finally:
        try:
            mounts.unmount(mnt, proc)
        finally:
            if proc.stderr:
                proc.stderr.close()


def as_nobody(code: str, *args: os.PathLike | str) -> str:
    """Run a Python snippet as uid/gid 65534; returns its stdout (stripped)."""
    result = subprocess.run([*AS_NOBODY, sys.executable, "-c", code, *map(str, args)],
                            capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, f"snippet failed as nobody: {result.stderr.strip()}"
    return result.stdout.strip()


# Tries one operation; prints "ok <data>" or "errno <name>".
TRY_AS_USER = """
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path) as f:
            print("ok", f.read())
    elif op == "create":
        with open(path, "x") as f:
            f.write("x")
        print("ok")
    elif op == "listdir":
        print("ok", ",".join(sorted(os.listdir(path))))
except OSError as e:
    print("errno", errno.errorcode.get(e.errno, e.errno))
"""


def try_as_nobody(op: str, path: os.PathLike | str) -> str:
    return as_nobody(TRY_AS_USER, op, path)


@contextlib.contextmanager
def sbin_wrapper(name: str) -> Iterator[Path]:
    """``/sbin/<name>`` exec'ing this venv's ``python -m mount_helper`` (for mount(8)).

    Only created if absent; only a file created here is removed afterwards.
    """
    path = Path("/sbin") / name
    created = False
    if not path.exists():
        path.write_text(f'#!/bin/sh\nexec {sys.executable} -m mount_helper "$@"\n')
        path.chmod(0o755)
        created = True
    try:
        yield path
    finally:
        if created:
            path.unlink()
