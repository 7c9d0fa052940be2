"""The workloads, and the worker process that runs one against a mount.

The runner starts ``python -m bench.workloads NAME MOUNT DATASET [--passes N]`` after dropping
the caches. The worker times each pass itself (``time.perf_counter`` around the operation only,
not the interpreter start-up) and prints one JSON line: ``[{"seconds": s, "count": n, ...}]``.
Every implementation runs exactly the same code: direct ``os.*`` calls for metadata and reads,
the usual tools (``rm -rf``, ``tar``, ``grep``) where that is what a user would run.
A separate process per cell also means a hung filesystem can be killed by a timeout.

Read workloads run twice in one mount: pass 1 cold (fresh mount, caches dropped), pass 2 warm.
Write workloads change the tree, so a second pass would measure something else: cold only.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str  # "read" (cold + warm) | "add" (new names only) | "modify" (changes lower files)
    about: str
    single_pass: bool = False
    touches: tuple[str, ...] = ()  # manifest keys of the lower paths a "modify" workload changes

    @property
    def passes(self) -> tuple[str, ...]:
        return ("cold", "warm") if self.mode == "read" and not self.single_pass else ("cold",)


WORKLOADS = [
    Workload("stat", "read", "lstat every path of the merged tree (list from the manifest)"),
    Workload("readdir", "read", "recursive scandir walk, names and d_type only"),
    Workload("seqread", "read", "read the largest file sequentially in 1 MiB reads"),
    Workload("readsmall", "read", "open/read/close every regular file under 1 MiB"),
    Workload("parallel", "read",
             "2 processes together: each lists every other directory, reads its small files"),
    Workload("find-ls", "read", "find MNT -ls: every entry's attributes, symlink targets"),
    Workload("du", "read", "du -s MNT"),
    Workload("ls-lR", "read", "ls -lR MNT (also asks every entry for its ACL and capability)"),
    Workload("create", "add", "create small files (0-2 KiB) in new directories"),
    Workload("untar-grep", "add", "tar -xf a source tarball into the mount, then grep -r it"),
    Workload("append", "modify", "append 1 byte to the largest lower file (full copy-up)",
             touches=("append_file",)),
    Workload("chmod", "modify", "chmod lower files (copy-up of each)", touches=("chmod_files",)),
    Workload("rm-rf", "modify", "rm -rf a lower subtree", touches=("rm_subtree",)),
]
BY_NAME = {w.name: w for w in WORKLOADS}


class Context:
    def __init__(self, mnt: Path, dataset: Path) -> None:
        self.mnt = mnt
        self.dataset = dataset
        self.m: dict[str, Any] = json.loads((dataset / "manifest.json").read_text())

    def path(self, rel: str) -> str:
        return os.path.join(self.mnt, rel)

    def tree(self) -> list[str]:
        """The expected tree: ``path<TAB>type (octal)<TAB>size`` lines."""
        return (self.dataset / "tree.txt").read_text().splitlines()


def read_file(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        while chunk := os.read(fd, 1 << 20):
            n += len(chunk)
        return n
    finally:
        os.close(fd)


def walk(top: str) -> int:
    """Depth-first scandir walk in name order (d_type only, no stat); counts the entries."""
    count = 0
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        count += len(entries)
        stack += [e.path for e in reversed(entries) if e.is_dir(follow_symlinks=False)]
    return count


def w_stat(c: Context) -> Result:
    for rel in c.m["paths"]:
        os.lstat(c.path(rel))
    return {"count": len(c.m["paths"])}


def w_readdir(c: Context) -> Result:
    return {"count": walk(str(c.mnt))}


def _tool(command: list[str]) -> Result:
    """A tool users run over the tree; the count is its output's lines."""
    out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    return {"count": out.stdout.count(b"\n")}


def w_find_ls(c: Context) -> Result:
    return _tool(["find", str(c.mnt), "-ls"])


def w_du(c: Context) -> Result:
    return _tool(["du", "-s", str(c.mnt)])


def w_ls_lr(c: Context) -> Result:
    return _tool(["ls", "-lR", str(c.mnt)])


def w_seqread(c: Context) -> Result:
    n = read_file(c.path(c.m["large_file"]))
    if n != c.m["large_size"]:
        raise RuntimeError(f"read {n} bytes of the large file, expected {c.m['large_size']}")
    return {"count": n}


def w_readsmall(c: Context) -> Result:
    total = 0
    for rel in c.m["small_files"]:
        total += read_file(c.path(rel))
    return {"count": len(c.m["small_files"]), "bytes": total}


def _reader(c: Context, k: int) -> None:
    """List every other directory of the tree and read the small files in it."""
    large = {c.path(rel) for rel in c.m["large_files"]}
    dirs = ["."] + [line.split("\t")[0] for line in c.tree()
                    if int(line.split("\t")[1], 8) == stat.S_IFDIR]
    for d in dirs[k::2]:
        with os.scandir(c.path(d)) as it:
            files = [e.path for e in it if e.is_file(follow_symlinks=False)]
        for path in files:
            if path not in large:
                read_file(path)


def w_parallel(c: Context) -> Result:
    """Two forked readers released together; the time is until both are done."""
    gate_r, gate_w = os.pipe()
    pids = []
    for k in range(2):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(gate_w)
                os.read(gate_r, 1)
                _reader(c, k)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    os.close(gate_r)
    t0 = time.perf_counter()
    os.write(gate_w, b"xx")
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    elapsed = time.perf_counter() - t0
    os.close(gate_w)
    if failed:
        raise RuntimeError(f"{len(failed)} reader(s) failed")
    return {"seconds": elapsed}


def w_create(c: Context) -> Result:
    scale = c.m["scale"]
    per_dir = scale["create_files"] // scale["create_dirs"]
    blob = bytes(range(256)) * 8
    top = c.path("bench-created")
    os.mkdir(top)
    n = 0
    for d in range(scale["create_dirs"]):
        dpath = os.path.join(top, f"dir{d:03d}")
        os.mkdir(dpath)
        for i in range(per_dir):
            fd = os.open(os.path.join(dpath, f"file{i:04d}.txt"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, blob[: (n * 37) % 2048])
            os.close(fd)
            n += 1
    return {"count": n}


def w_untar_grep(c: Context) -> Result:
    dest = c.path("bench-src")
    os.mkdir(dest)
    t0 = time.perf_counter()
    subprocess.run(["tar", "-xf", str(c.dataset / c.m["tarball"]), "-C", dest], check=True)
    t1 = time.perf_counter()
    r = subprocess.run(["grep", "-r", "-l", c.m["grep_pattern"], dest],
                       check=True, capture_output=True)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "count": r.stdout.count(b"\n"),
            "parts": {"untar": t1 - t0, "grep": t2 - t1}}


def w_append(c: Context) -> Result:
    with open(c.path(c.m["append_file"]), "ab") as f:
        f.write(b"x")
    return {"count": 1}


def w_chmod(c: Context) -> Result:
    for rel in c.m["chmod_files"]:
        os.chmod(c.path(rel), 0o640)
    return {"count": len(c.m["chmod_files"])}


def w_rmrf(c: Context) -> Result:
    subprocess.run(["rm", "-rf", c.path(c.m["rm_subtree"])], check=True)
    if os.path.lexists(c.path(c.m["rm_subtree"])):
        raise RuntimeError("rm -rf left the subtree in place")
    return {"count": c.m["rm_subtree_entries"]}


def w_check(c: Context) -> Result:
    """Not a workload: does the mount show exactly the merged tree (names, types, sizes)?"""
    from bench.dataset import tree_lines

    lines = tree_lines(c.mnt)
    expected = c.tree()
    missing = sorted(set(expected) - set(lines))
    extra = sorted(set(lines) - set(expected))
    return {"count": len(lines), "ok": not missing and not extra,
            "missing": missing[:5], "extra": extra[:5],
            "n_missing": len(missing), "n_extra": len(extra)}


FUNCTIONS: dict[str, Callable[[Context], Result]] = {
    "check": w_check,
    "stat": w_stat,
    "readdir": w_readdir,
    "find-ls": w_find_ls,
    "du": w_du,
    "ls-lR": w_ls_lr,
    "seqread": w_seqread,
    "readsmall": w_readsmall,
    "parallel": w_parallel,
    "create": w_create,
    "untar-grep": w_untar_grep,
    "append": w_append,
    "chmod": w_chmod,
    "rm-rf": w_rmrf,
}


def run_pass(name: str, c: Context) -> Result:
    t0 = time.perf_counter()
    result = FUNCTIONS[name](c)
    result.setdefault("seconds", time.perf_counter() - t0)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.workloads")
    ap.add_argument("name", choices=sorted(FUNCTIONS))
    ap.add_argument("mnt", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--passes", type=int, default=1)
    args = ap.parse_args(argv)
    c = Context(args.mnt, args.dataset)
    results = [run_pass(args.name, c) for _ in range(args.passes)]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
