"""What the pyfuse3 extension (patches/README.md) saves: warm ``find -ls``, ``ls -lR`` and
``stat`` through symlinks on a generated two-layer tree, pyunion on the extended pyfuse3
(``.venv``) and on the plain one (``.venv-plain``, made by ``make test-plain-pyfuse3``), and
fuse-overlayfs for reference.

``python3 -m bench.pyfuse3_ext [REPS]`` as root from the repository root. Each implementation
and workload gets a fresh mount: one first pass, then REPS warm passes (median and minimum
printed). pyunion's requests are counted with ``-o stats=FILE``: those of a mount with the
first pass only are subtracted, which leaves the warm passes' share. Other processes dropping
the kernel's caches meanwhile (tests do) show up as requests in warm passes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = "/var/tmp/pyunion-bench/pyfuse3-ext-v1"
DIRS, FILES, LINKS = 500, 30, 10
COUNTED = ("opendir", "readdir", "lookup", "getattr", "readlink", "getxattr")


def make_dataset() -> None:
    """l2: DIRS directories of FILES small files and LINKS symlinks to them; l1 above it
    overrides one file and whites out another in every fifth directory."""
    if os.path.exists(f"{ROOT}/done"):
        return
    shutil.rmtree(ROOT, ignore_errors=True)
    for d in range(DIRS):
        base = f"{ROOT}/l2/usr/lib/d{d:03}"
        os.makedirs(base)
        for f in range(FILES):
            with open(f"{base}/f{f:02}.py", "w") as out:
                out.write("x" * (f * 37 % 2000))
        for s in range(LINKS):
            os.symlink(f"f{s:02}.py", f"{base}/link{s}.so")
        if d % 5 == 0:
            top = f"{ROOT}/l1/usr/lib/d{d:03}"
            os.makedirs(top)
            with open(f"{top}/f00.py", "w") as out:
                out.write("override")
            os.mknod(f"{top}/f01.py", 0o20000, 0)  # a whiteout: link1.so dangles here
    open(f"{ROOT}/done", "w").close()


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _stat_links(mnt: str) -> float:
    start = time.perf_counter()
    for d in range(DIRS):
        for s in range(LINKS):
            if s != 1:
                os.stat(f"{mnt}/usr/lib/d{d:03}/link{s}.so")
    return time.perf_counter() - start


WORKLOADS: dict[str, Callable[[str], float]] = {
    "find -ls": lambda mnt: _run(["find", mnt, "-ls"]),
    "ls -lR": lambda mnt: _run(["ls", "-lR", mnt]),
    f"stat via {DIRS * (LINKS - 1)} symlinks": _stat_links,
}


def _fresh(name: str) -> str:
    path = f"{ROOT}/{name}"
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def mounted_run(impl: str, fn: Callable[[str], float], reps: int):
    """(first pass time, warm pass times, request counts) of one fresh mount."""
    upper, work, mnt = _fresh("upper"), _fresh("work"), _fresh("mnt")
    stats = f"{ROOT}/stats.json"
    lowers = f"{ROOT}/l1:{ROOT}/l2"
    proc = None
    if impl == "fuse-overlayfs":
        subprocess.run(["fuse-overlayfs", "-o",
                        f"lowerdir={lowers},upperdir={upper},workdir={work}", mnt],
                       check=True, stderr=subprocess.DEVNULL)
    else:
        venv = ".venv" if impl == "extended" else ".venv-plain"
        proc = subprocess.Popen([f"{REPO}/{venv}/bin/python", "-m", "mount_helper", lowers,
                                 upper, mnt, "-f", "-o", f"workdir={work},stats={stats}"],
                                cwd=REPO)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{impl}: mount failed")
            time.sleep(0.05)
    try:
        first = fn(mnt)
        warm = [fn(mnt) for _ in range(reps)]
    finally:
        subprocess.run(["umount", mnt], check=True)
        if proc is not None:
            proc.wait(timeout=120)
    counts = {}
    if proc is not None:
        with open(stats) as f:
            counts = json.load(f)
    return first, warm, counts


def main() -> int:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    make_dataset()
    impls = ["extended", "plain", "fuse-overlayfs"]
    if not os.path.exists(f"{REPO}/.venv-plain/bin/python"):
        print("no .venv-plain (make test-plain-pyfuse3 makes it): plain pyfuse3 skipped")
        impls.remove("plain")
    for impl in impls:
        print(impl)
        for name, fn in WORKLOADS.items():
            first, warm, counts = mounted_run(impl, fn, reps)
            print(f"  {name:24} first {first:6.3f} s   warm median {statistics.median(warm):6.3f}"
                  f" s, min {min(warm):6.3f} s")
            if counts:
                _, _, first_counts = mounted_run(impl, fn, 0)
                per_pass = {k: round((counts.get(k, 0) - first_counts.get(k, 0)) / reps)
                            for k in COUNTED}
                print("    requests, first pass:", {k: first_counts.get(k, 0) for k in COUNTED})
                print("    requests, warm pass: ", per_pass)
    return 0


if __name__ == "__main__":
    sys.exit(main())
