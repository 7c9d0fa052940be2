"""The create-heavy mix row: what a build or a test suite does to a tree, by a shell.

One lower layer (made once under ``<cache>/mix-v<VERSION>/lower``): ``read/`` (READ_FILES files
of 4 KiB in 10 directories) and ``chmod/`` (CHMOD_FILES files of 2 KiB). On a fresh tree of
each implementation (order rotated, caches dropped first), ``sh`` (dash) runs SCRIPT: CREATED
files written with ``echo`` into a new directory tree, every ``read/`` file read with ``cat``,
``find -ls`` of the whole tree, ``chmod`` of every ``chmod/`` file (a copy-up each), then ``rm -rf``
of it all; afterwards the tree must be empty but for the directories the script keeps.

Reported as the apt row is: seconds, the ratio to fuse-overlayfs, and pyunion's daemon user CPU
per FUSE request (``-o stats=``) — the figure that says what one request costs in Python.

``python -m bench.mix [--quick]`` runs this row alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

from bench import standalone
from bench.apt import (
    TreeWorkload,
    available_implementations,
    render_summary,
    rotated_samples,
    summarize,
)

MIX = "create-mix"
NAMES = [MIX]
VERSION = 1
CREATED = 2000
READ_FILES = 300
CHMOD_FILES = 500

SCRIPT = f"""
set -e
cd "$1"
mkdir made
d=0
while [ $d -lt 20 ]; do
  mkdir made/d$d
  i=0
  while [ $i -lt {CREATED // 20} ]; do
    echo "file $d $i of the create-heavy mix" > made/d$d/f$i
    i=$((i + 1))
  done
  d=$((d + 1))
done
cat read/*/* > /dev/null
find . -ls > /dev/null
chmod 640 chmod/*
rm -rf made read chmod
"""


def ensure_lower(cache: Path) -> Path:
    """The lower layer, made once (atomically: a half-made one is never used)."""
    base = cache / f"mix-v{VERSION}"
    lower = base / "lower"
    if lower.is_dir():
        return lower
    temp = base / f"making-{os.getpid()}"
    subprocess.run(["rm", "-rf", str(temp)], check=True)
    for d in range(10):
        (temp / "read" / f"d{d}").mkdir(parents=True)
        for i in range(READ_FILES // 10):
            (temp / "read" / f"d{d}" / f"f{i}").write_bytes(os.urandom(4096))
    (temp / "chmod").mkdir()
    for i in range(CHMOD_FILES):
        (temp / "chmod" / f"f{i}").write_bytes(b"x" * 2048)
    os.rename(temp, lower)
    return lower


def _run_script(tree: Path, timeout: float) -> None:
    subprocess.run(["sh", "-c", SCRIPT, "sh", str(tree)], check=True, timeout=timeout,
                   capture_output=True, text=True)


def _verify_empty(tree: Path, timeout: float) -> None:
    left = sorted(os.listdir(tree))
    if left:
        raise RuntimeError(f"the mix left {left[:5]} in the tree")


def _nothing_to_prepare(tree: Path) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


MIX_SCRIPT = TreeWorkload(_nothing_to_prepare, _run_script, _verify_empty)


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log) -> dict[str, Any]:
    lower = ensure_lower(args.cache_dir)
    impls, unavailable = available_implementations()
    samples = rotated_samples(impls, lower, "mix", args, run_dir, log, MIX_SCRIPT)
    return {"reps": args.reps, MIX: {"ok": True, "samples": samples, "unavailable": unavailable,
                                     "summary": summarize(samples)}}


def render(res: dict[str, Any]) -> list[str]:
    out = ["", f"create-heavy mix by sh: {CREATED:,} files created with echo, {READ_FILES} read, "
           f"find -ls, chmod of {CHMOD_FILES} lower files (copy-ups), rm -rf (one lower layer; "
           "seconds, caches dropped first):"]
    row = res.get(MIX)
    if not row:
        return out
    out.append(f"  {res['reps']} repetitions, order rotated; the tree empty after each")
    return out + render_summary(row, "fuse-overlayfs's own are not counted")


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args("mix", __doc__, NAMES, argv,
                                 quick_help="one repetition", reps_help="default 3 (quick 1)",
                                 root_because="it mounts filesystems")
    res = standalone.run_in_fresh_dir(args, run)
    return standalone.report(args, "create-heavy mix row", "mix", res, render)


if __name__ == "__main__":
    raise SystemExit(main())
