"""The per-request cost of pyfuse3 itself: a file system that answers every request at once.

``python -m bench.nullfs [--requests N]`` mounts a one-file file system whose handlers do
nothing (``getxattr`` answers ENODATA, ``getattr`` a fixed stat), sends it N ``getxattr``
requests from this process (the kernel does not cache a missing xattr; the name is looked up
once), and reports the daemon's user and system CPU per request, read from
/proc/PID/stat. It is what pyfuse3 (and trio) cost per request before any file system work:
the floor under pyunion's own per-request CPU (the apt row's ``user µs/request``).

The daemon is a child process (``python -m bench.nullfs serve MNT``), unmounted and waited for
in ``finally``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.implementations import cpu_seconds

FILE_INODE = 2
NULLFS = "nullfs"
NAMES = [NULLFS]
REPO = Path(__file__).resolve().parent.parent
PLAIN_VENV_PYTHON = REPO / ".venv-plain" / "bin" / "python"


def serve(mountpoint: str) -> None:
    """The null file system, in the foreground, until unmounted."""
    import pyfuse3
    import trio

    class Null(pyfuse3.Operations):
        def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = inode
            entry.st_mode = (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE \
                else (stat.S_IFREG | 0o644)
            entry.st_nlink = 1
            entry.attr_timeout = entry.entry_timeout = 3600  # one lookup, then getxattrs
            return entry

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            if name != b"f":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(FILE_INODE)

        async def getxattr(self, inode, name, ctx):
            raise pyfuse3.FUSEError(errno.ENODATA)

    class PlainNull(Null):
        """The same with plain (not async) methods, which the extended pyfuse3 calls inline."""

        def getxattr(self, inode, name, ctx):  # type: ignore[override]
            raise pyfuse3.FUSEError(errno.ENODATA)

    plain = os.environ.get("NULLFS_PLAIN_METHODS") == "1"
    pyfuse3.init(PlainNull() if plain else Null(), mountpoint, {"fsname=nullfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


def _cpu_seconds(pid: int) -> tuple[float, float]:
    cpu = cpu_seconds(pid)
    if cpu is None:
        raise RuntimeError("the null file system's daemon is gone")
    return cpu


def _wait_mounted(mnt: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the null file system did not mount at {mnt}")
        time.sleep(0.02)


def measure(requests: int, python: str = sys.executable) -> dict[str, Any]:
    """Mounts the null file system with ``python``, sends ``requests`` getxattr requests."""
    with tempfile.TemporaryDirectory(prefix="pyunion-nullfs-") as tmp:
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        proc = subprocess.Popen([python, "-m", "bench.nullfs", "serve", mnt],
                                cwd=Path(__file__).resolve().parent.parent)
        try:
            _wait_mounted(mnt, proc)
            path = os.path.join(mnt, "f")
            os.stat(path)
            user0, sys0 = _cpu_seconds(proc.pid)
            start = time.monotonic()
            for _ in range(requests):
                try:
                    os.getxattr(path, "user.none")
                except OSError:
                    pass
            wall = time.monotonic() - start
            user1, sys1 = _cpu_seconds(proc.pid)
        finally:
            subprocess.run(["umount", mnt], check=False)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                subprocess.run(["umount", "-l", mnt], check=False)
                proc.kill()
                proc.wait()
    return {"requests": requests, "wall_us": wall / requests * 1e6,
            "user_us": (user1 - user0) / requests * 1e6,
            "sys_us": (sys1 - sys0) / requests * 1e6}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The row of ``make bench``: this pyfuse3 (the extended one), with async and with plain
    handler methods, and PyPI's (``.venv-plain``, where ``make test-plain-pyfuse3`` made it)."""
    requests = 20_000 if args.quick else 100_000
    rows = {"extended, async methods": measure(requests)}
    os.environ["NULLFS_PLAIN_METHODS"] = "1"
    try:
        rows["extended, plain methods"] = measure(requests)
    finally:
        del os.environ["NULLFS_PLAIN_METHODS"]
    if PLAIN_VENV_PYTHON.exists():
        rows["PyPI 3.5.0"] = measure(requests, str(PLAIN_VENV_PYTHON))
    return rows


def render(res: dict[str, Any]) -> list[str]:
    lines = ["", "Null file system: the per-request cost of pyfuse3 itself "
             "(getxattr answered ENODATA at once)",
             f"{'pyfuse3':24s} {'requests':>9s} {'wall µs':>8s} {'user µs':>8s} {'sys µs':>7s}"
             + "  (per request, of the daemon)"]
    for name, row in res.items():
        lines.append(f"{name:24s} {row['requests']:9d} {row['wall_us']:8.1f} "
                     f"{row['user_us']:8.1f} {row['sys_us']:7.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1])
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.nullfs", description=__doc__)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--python", action="append",
                    help="NAME=PYTHON to compare pyfuse3 builds (default: this one)")
    args = ap.parse_args(argv)
    pythons = dict(p.split("=", 1) for p in args.python) if args.python \
        else {"extended": sys.executable}
    res = {name: measure(args.requests, python) for name, python in pythons.items()}
    print("\n".join(render(res)))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
