"""The page-cache rows: what FUSE passthrough changes for files read through mounts.

Without passthrough, every FUSE mount keeps its own copy of a file's pages (its inode's page
cache) on top of the lower file's pages the daemon read: N mounts reading one base file cost
N + 1 copies. With passthrough (and in kernel overlayfs), a file opened through the mount is
backed by the real lower file, so reads and mmap go to that file's page cache, shared by every
mount, and never reach the daemon.

Implementations, each mounted fresh per sample with its own empty upper and workdir over one
lower directory: ``kernel`` (overlayfs, ``redirect_dir=on,index=on``), ``fuse-overlayfs``,
``pyunion`` (passthrough: the default, ``passthrough=auto``) and ``pyunion-nopt`` (``-o
passthrough=off``). pyunion mounts also get ``-o stats=``: its
``read`` request count (``daemon reads``) shows whether reads reached the daemon at all.
Order of the implementations rotated per repetition.

Rows (``--quick`` sizes in brackets), cached under ``<cache>/pagecache-v<VERSION>/``:

- ``pagecache-readers``: ``<scale>/lower/base.bin``, 256 MiB [64 MiB] of seeded random bytes.
  N = 1, 4, 16 mounts over that lower; ``sync``, drop caches, read ``Cached:`` of
  /proc/meminfo, ``cat`` the file through each mount in turn to /dev/null, read ``Cached:``
  again: the growth in MiB. Anything else on the machine moves ``Cached:`` too, so the median
  of the repetitions (3 [1]) is shown. Before it, MemAvailable (after a cache drop) must hold
  (N + 1) copies of the file plus 1 GiB; an N that does not fit is skipped with a note.
- ``pagecache-python``: 8 mounts over a Debian bookworm minbase rootfs with python3 installed
  (a copy of bench/apt.py's cached rootfs, ``apt-get install --no-download python3`` run in a
  chroot of it once: ``python-rootfs/``); drop caches, then ``chroot MNT python3 -c pass`` in
  each mount, one after the other (sequentially: the first start is the cold one, the other
  seven show what a second container pays). Page-cache growth and wall time of the 8 starts.
  Skipped with the reason when the rootfs cannot be built (no Debian mirror).
- ``pagecache-seqread``: ``<scale>/lower/big.bin``, 1 GiB [256 MiB], read in 1 MiB reads
  through one mount: cold (after the cache drop), then warm (again, same mount); MB/s
  (10^6 bytes). ``plain``, the lower directory itself, is the reference.
- ``pagecache-mmap``: the same file mmapped through one mount; one byte read from each of
  20,000 distinct random 4 KiB pages (seeded; default readahead), cold then warm (a new
  mapping of the same file, same pages), seconds. ``plain`` as reference.

The reads of the last two rows run in a worker process (``python -m bench.pagecache worker
KIND FILE``), killed with its process group on timeout, so a hung mount cannot hang the run.
Ratios are to kernel overlayfs: page-cache growth or seconds divided by kernel's (lower is
better). ``python -m bench.pagecache [--quick]`` runs these rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import apt, standalone
from bench.apt import OneLayer
from bench.implementations import (
    REPO,
    FuseOverlayfs,
    Implementation,
    Kernel,
    Mounted,
    MountFailed,
    Pyunion,
    PyunionNoPassthrough,
    cleanup_cell,
    drop_caches,
    read_stats,
    umount,
)
from bench.report import _fmt, _table

Log = Callable[[str], None]
Measure = Callable[[list[Mounted]], dict[str, Any]]

READERS, PYTHON, SEQREAD, MMAP = ("pagecache-readers", "pagecache-python",
                                  "pagecache-seqread", "pagecache-mmap")
NAMES = [READERS, PYTHON, SEQREAD, MMAP]
VERSION = 1
SEED = 17
MIB = 2**20
PAGE = 4096
MMAP_PAGES = 20_000
CONTAINERS = 8
MEM_MARGIN = 1 << 30
REFERENCE = "kernel"
PLAIN = "plain"


@dataclass(frozen=True)
class Scale:
    name: str
    base_bytes: int  # the file N readers share
    big_bytes: int  # the file of the sequential and mmap rows
    readers: tuple[int, ...] = (1, 4, 16)


FULL = Scale("full", 256 * MIB, 1024 * MIB)
QUICK = Scale("quick", 64 * MIB, 256 * MIB)


# ---------------------------------------------------------------------------------------------
# implementations


def implementations() -> list[Implementation]:
    """kernel, fuse-overlayfs, and pyunion with passthrough (its default) and without."""
    return [Kernel(), FuseOverlayfs(), Pyunion(), PyunionNoPassthrough()]


# ---------------------------------------------------------------------------------------------
# the cached files and rootfs


def ensure_files(cache: Path, scale: Scale, log: Log) -> Path:
    """``<cache>/pagecache-v<V>/<scale>/lower`` with base.bin and big.bin (seeded random)."""
    base = cache / f"pagecache-v{VERSION}" / scale.name
    lower, meta_path = base / "lower", base / "meta.json"
    want = {"base.bin": scale.base_bytes, "big.bin": scale.big_bytes}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(meta_path.read_text()) == {"seed": SEED, "files": want} and all(
                (lower / n).stat().st_size == size for n, size in want.items()):
            return lower
    log(f"writing {lower} ({sum(want.values()) // MIB} MiB of random bytes) ...")
    if base.exists():
        shutil.rmtree(base)
    lower.mkdir(parents=True)
    rng = random.Random(SEED)
    for name, size in want.items():
        with open(lower / name, "wb") as f:
            for _ in range(size // MIB):
                f.write(rng.randbytes(MIB))
    os.sync()
    meta_path.write_text(json.dumps({"seed": SEED, "files": want}))
    return lower


def ensure_python_rootfs(cache: Path, log: Log) -> tuple[Path | None, dict[str, Any]]:
    """bench/apt.py's rootfs with python3 installed (once), or (None, {"error": why})."""
    base = cache / f"pagecache-v{VERSION}"
    target, meta_path = base / "python-rootfs", base / "python-rootfs.json"
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_text())
        if target.is_dir():
            return target, meta
    src, apt_meta = apt.ensure_rootfs(cache, log)
    if src is None:
        return None, apt_meta
    try:
        meta = _build_python_rootfs(src, base, log)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, {"error": _why(e)}
    return target, meta


def _build_python_rootfs(src: Path, base: Path, log: Log) -> dict[str, Any]:
    tmp = base / "python-rootfs.building"
    if tmp.exists():
        apt._remove_tree(tmp)
    base.mkdir(parents=True, exist_ok=True)
    log(f"cp -a {src} {tmp}; apt-get install --no-download python3 in a chroot of it ...")
    subprocess.run(["cp", "-a", str(src), str(tmp)], check=True, timeout=apt.BUILD_TIMEOUT)
    with apt._chroot_mounts(tmp):
        apt._run(["chroot", str(tmp), "apt-get", "install", "-y", "-q", "--no-download",
                  "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", "python3"],
                 apt.BUILD_TIMEOUT)
    version = apt._run(["chroot", str(tmp), "python3", "-c",
                        "import sys; print(sys.version.split()[0])"], 60).stdout.strip()
    meta = {"version": VERSION, "python3": version, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp.rename(base / "python-rootfs")
    (base / "python-rootfs.json").write_text(json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------------------------------------
# mounts and measurements


def _why(e: BaseException) -> str:
    stderr = getattr(e, "stderr", None) or ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    return f"{type(e).__name__}: {e}" + (f": {stderr.strip().splitlines()[-1]}"
                                         if stderr.strip() else "")


@contextlib.contextmanager
def _mounted(impl: Implementation | None, lower: Path, cell: Path) -> Iterator[Mounted]:
    """A fresh mount of ``impl`` over ``lower`` (``impl`` None: the lower itself, plain)."""
    if impl is None:
        yield Mounted(lower)
        return
    mnt, upper, work = cell / "mnt", cell / "upper", cell / "work"
    for d in (mnt, upper, work):
        d.mkdir(parents=True)
    m = impl.mount(OneLayer(lower), cell, mnt, upper, work)
    try:
        yield m
    finally:
        m.notes += umount(mnt, m.daemon)


@contextlib.contextmanager
def _mounted_n(impl: Implementation | None, lower: Path, cell: Path, n: int,
               out: list[Mounted]) -> Iterator[None]:
    """``n`` fresh mounts, appended to ``out`` as they come up; all unmounted on exit."""
    with contextlib.ExitStack() as stack:
        for i in range(n):
            out.append(stack.enter_context(_mounted(impl, lower, cell / f"m{i}")))
        yield


def sample(impl: Implementation | None, lower: Path, cell: Path, n: int, measure: Measure
           ) -> dict[str, Any]:
    """``measure`` on ``n`` fresh mounts; ``ok`` False with ``error`` if anything failed."""
    rec: dict[str, Any] = {"impl": impl.name if impl else PLAIN}
    mounts: list[Mounted] = []
    try:
        with _mounted_n(impl, lower, cell, n, mounts):
            rec.update(measure(mounts))
        rec["ok"] = True
    except (OSError, RuntimeError, MountFailed, subprocess.SubprocessError) as e:
        rec.update(ok=False, error=_why(e))
    finally:
        notes = list(dict.fromkeys(note for m in mounts for note in m.notes))
        counts = [read_stats(m) for m in mounts if m.stats_file is not None]
        if counts and all(c is not None for c in counts):
            rec["daemon_reads"] = sum(c.get("read", 0) for c in counts if c)
        problem = cleanup_cell(cell)
        rec["notes"] = notes + ([problem] if problem else [])
    return rec


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/meminfo")


def _cached_growth(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Drop caches, ``run()``, and add the growth of ``Cached:`` (MiB) to what it returns."""
    drop_caches()
    before = meminfo_kib("Cached")
    rec = run()
    rec["growth_mib"] = (meminfo_kib("Cached") - before) / 1024
    return rec


def readers_measure(name: str, timeout: float) -> Measure:
    def measure(mounts: list[Mounted]) -> dict[str, Any]:
        def cat_all() -> dict[str, Any]:
            t0 = time.perf_counter()
            for m in mounts:
                subprocess.run(["cat", str(m.path / name)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, check=True, timeout=timeout)
            return {"read_s": time.perf_counter() - t0}
        return _cached_growth(cat_all)
    return measure


def python_measure(timeout: float) -> Measure:
    def measure(mounts: list[Mounted]) -> dict[str, Any]:
        def start_all() -> dict[str, Any]:
            starts = []
            for m in mounts:
                t0 = time.perf_counter()
                subprocess.run(["chroot", str(m.path), "python3", "-c", "pass"],
                               env=apt.CHROOT_ENV, capture_output=True, check=True,
                               timeout=timeout)
                starts.append(time.perf_counter() - t0)
            return {"wall_s": sum(starts), "starts_s": starts}
        return _cached_growth(start_all)
    return measure


def worker_measure(kind: str, name: str, timeout: float) -> Measure:
    """Drop caches, then a worker process: cold and warm pass over ``name`` in the mount."""
    def measure(mounts: list[Mounted]) -> dict[str, Any]:
        drop_caches()
        cold, warm = run_worker([kind, str(mounts[0].path / name)], timeout)
        return {"cold_s": cold, "warm_s": warm}
    return measure


def run_worker(args: list[str], timeout: float) -> list[float]:
    cmd = [sys.executable, "-m", "bench.pagecache", "worker", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # timed out or interrupted: don't leave it reading in the mount
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"worker exit status {proc.returncode}")
    result: list[float] = json.loads(out.decode().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------
# the worker (a separate process: killed with its group on timeout)


def seqread(path: str) -> float:
    buf = bytearray(MIB)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def mmap_random(path: str) -> float:
    """One byte of each of MMAP_PAGES random pages (same pages every call), a new mapping."""
    size = os.stat(path).st_size
    pages = random.Random(SEED).sample(range(size // PAGE), min(MMAP_PAGES, size // PAGE))
    t0 = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
        total = 0
        for p in pages:
            total += mm[p * PAGE]
    return time.perf_counter() - t0


def worker(argv: list[str]) -> int:
    """``worker seqread|mmap FILE``: prints ``[cold seconds, warm seconds]``."""
    kind, path = argv
    fn = {"seqread": seqread, "mmap": mmap_random}[kind]
    print(json.dumps([fn(path), fn(path)]))
    return 0


# ---------------------------------------------------------------------------------------------
# the rows


def _rotated(items: list[Any], rep: int) -> list[Any]:
    shift = rep % max(1, len(items))
    return items[shift:] + items[:shift]


def _describe(rec: dict[str, Any]) -> str:
    if not rec["ok"]:
        return f"FAILED: {rec['error']}"
    keys = ("growth_mib", "read_s", "wall_s", "cold_s", "warm_s", "daemon_reads")
    text = "  ".join(f"{k} {rec[k]:.2f}" if isinstance(rec[k], float) else f"{k} {rec[k]}"
                     for k in keys if k in rec)
    return text + ("  [" + "; ".join(rec["notes"]) + "]" if rec.get("notes") else "")


def readers_fit(scale: Scale) -> tuple[list[int], list[str]]:
    """The N whose N + 1 copies of the base file (plus a margin) fit in MemAvailable."""
    drop_caches()
    available = meminfo_kib("MemAvailable") * 1024
    fit = [n for n in scale.readers if (n + 1) * scale.base_bytes + MEM_MARGIN <= available]
    notes = [f"N={n} skipped: {(n + 1) * scale.base_bytes // MIB} MiB + 1 GiB margin > "
             f"MemAvailable {available // MIB} MiB" for n in scale.readers if n not in fit]
    return fit, notes


def readers_row(args: argparse.Namespace, impls: list[Implementation], lower: Path,
                run_dir: Path, log: Log) -> dict[str, Any]:
    scale = QUICK if args.quick else FULL
    ns, notes = readers_fit(scale)
    samples = []
    for rep in range(args.reps):
        for n in ns:
            for impl in _rotated(impls, rep):
                rec = sample(impl, lower, run_dir / "pagecache-readers", n,
                             readers_measure("base.bin", args.timeout))
                rec.update(rep=rep, n=n)
                samples.append(rec)
                log(f"{READERS} rep {rep + 1}/{args.reps} N={n:<2d} {impl.name:14s} "
                    f"{_describe(rec)}")
    return {"ok": True, "file_mib": scale.base_bytes // MIB, "ns": ns, "notes": notes,
            "samples": samples, "summary": summarize(samples, "n")}


def python_row(args: argparse.Namespace, impls: list[Implementation], run_dir: Path,
               log: Log) -> dict[str, Any]:
    rootfs, meta = ensure_python_rootfs(args.cache_dir, log)
    if rootfs is None:
        return {"ok": False, "error": meta["error"]}
    samples = []
    for rep in range(args.reps):
        for impl in _rotated(impls, rep):
            rec = sample(impl, rootfs, run_dir / "pagecache-python", CONTAINERS,
                         python_measure(args.timeout))
            rec["rep"] = rep
            samples.append(rec)
            log(f"{PYTHON} rep {rep + 1}/{args.reps} {impl.name:14s} {_describe(rec)}")
    return {"ok": True, "meta": meta, "containers": CONTAINERS, "samples": samples,
            "summary": summarize(samples)}


def worker_row(row: str, kind: str, args: argparse.Namespace,
               impls: list[Implementation | None], lower: Path, run_dir: Path, log: Log
               ) -> dict[str, Any]:
    scale = QUICK if args.quick else FULL
    samples = []
    for rep in range(args.reps):
        for impl in _rotated(impls, rep):
            rec = sample(impl, lower, run_dir / f"pagecache-{kind}", 1,
                         worker_measure(kind, "big.bin", args.timeout))
            rec["rep"] = rep
            samples.append(rec)
            log(f"{row} rep {rep + 1}/{args.reps} {rec['impl']:14s} {_describe(rec)}")
    return {"ok": True, "file_mib": scale.big_bytes // MIB, "samples": samples,
            "summary": summarize(samples)}


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    """The rows in ``names``; ``args``: quick, reps, timeout, cache_dir."""
    scale = QUICK if args.quick else FULL
    impls: list[Implementation] = []
    out: dict[str, Any] = {"scale": scale.name, "reps": args.reps, "unavailable": {},
                           "notes": []}
    for impl in implementations():
        why = impl.available()
        if why:
            out["unavailable"][impl.name] = why
        else:
            impls.append(impl)
    out["implementations"] = [i.name for i in impls]
    lower = ensure_files(args.cache_dir, scale, log)
    if READERS in names:
        out[READERS] = readers_row(args, impls, lower, run_dir, log)
    if PYTHON in names:
        out[PYTHON] = python_row(args, impls, run_dir, log)
    with_plain: list[Implementation | None] = [None, *impls]
    if SEQREAD in names:
        out[SEQREAD] = worker_row(SEQREAD, "seqread", args, with_plain, lower, run_dir, log)
    if MMAP in names:
        out[MMAP] = worker_row(MMAP, "mmap", args, with_plain, lower, run_dir, log)
    return out


# ---------------------------------------------------------------------------------------------
# summaries and the report


def summarize(samples: list[dict[str, Any]], group: str | None = None) -> dict[str, Any]:
    """Per implementation (and per ``group`` value, e.g. N, as "impl N=4"): the median of
    each measured number over the repetitions, n, failures, and ratios to kernel's medians."""
    numbers = ("growth_mib", "read_s", "wall_s", "cold_s", "warm_s", "daemon_reads")
    summary: dict[str, Any] = {}
    for key in dict.fromkeys(_key(s, group) for s in samples):
        mine = [s for s in samples if _key(s, group) == key]
        ok = [s for s in mine if s["ok"]]
        row: dict[str, Any] = {"n": len(ok), "failed": [s["error"] for s in mine
                                                        if not s["ok"]]}
        for k in numbers:  # the ones this row measures
            if any(k in s for s in mine):
                values = [s[k] for s in ok if k in s]
                row[k] = statistics.median(values) if values else None
        starts = [s["starts_s"] for s in ok if "starts_s" in s]
        if starts:
            row["first_start_s"] = statistics.median(x[0] for x in starts)
            row["other_starts_s"] = statistics.median(t for x in starts for t in x[1:])
        summary[key] = row
    for s in samples:
        ref = summary.get(_key({**s, "impl": REFERENCE}, group), {})
        row = summary[_key(s, group)]
        row["ratio_to_" + REFERENCE] = {k: _ratio(row[k], ref.get(k))
                                        for k in numbers[:5] if k in row}
    return summary


def _key(s: dict[str, Any], group: str | None) -> str:
    """The summary key: ``impl``, or ``impl N=4`` when grouped by N."""
    return s["impl"] + (f" N={s[group]}" if group else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _reads(v: dict[str, Any]) -> str:
    return f"{v['daemon_reads']:,.0f}" if v.get("daemon_reads") is not None else "-"


def _failures(summary: dict[str, Any]) -> list[str]:
    return [f"  {key} FAILED: {e}" for key, v in summary.items() for e in v["failed"]]


def render_readers(res: dict[str, Any]) -> list[str]:
    row = res[READERS]
    out = ["", f"page-cache growth, N readers of one {row['file_mib']} MiB base file (N "
           "mounts over one lower, cat through each; Cached: growth in MiB, median of "
           f"{res['reps']}):"]
    ns, summary = row["ns"], row["summary"]
    rows = []
    for impl in res["implementations"]:
        cells = [summary.get(f"{impl} N={n}", {}) for n in ns]
        rows.append([impl] + [_fmt(c.get("growth_mib"), ".0f") for c in cells]
                    + [_fmt(c.get("ratio_to_kernel", {}).get("growth_mib"), ".2f")
                       for c in cells]
                    + [_fmt(cells[-1].get("read_s"), ".2f") if cells else "",
                       _reads(cells[-1]) if cells else ""])
    last = f"N={ns[-1]}" if ns else ""
    out.append(_table(["impl"] + [f"N={n} MiB" for n in ns] + [f"N={n} /kernel" for n in ns]
                      + [f"read s {last}", f"daemon reads {last}"], rows))
    return out + [f"  {note}" for note in row["notes"]] + _failures(summary)


def render_python(res: dict[str, Any]) -> list[str]:
    row = res[PYTHON]
    out = ["", f"{CONTAINERS} mounts of one Debian bookworm rootfs with python3, `chroot MNT "
           "python3 -c pass` in each, one after the other, caches dropped first (median of "
           f"{res['reps']}):"]
    if not row["ok"]:
        return out + [f"  SKIPPED: the rootfs could not be built here: {row['error']}"]
    summary = row["summary"]
    rows = []
    for impl in res["implementations"]:
        v = summary.get(impl, {})
        ratio = v.get("ratio_to_kernel", {})
        rows.append([impl, _fmt(v.get("growth_mib"), ".1f"), _fmt(ratio.get("growth_mib"), ".2f"),
                     _fmt(v.get("wall_s"), ".2f"), _fmt(ratio.get("wall_s"), ".2f"),
                     _fmt(v.get("first_start_s"), ".3f"), _fmt(v.get("other_starts_s"), ".3f"),
                     _reads(v)])
    out.append(_table(["impl", "cache MiB", "/kernel", f"{CONTAINERS} starts s", "/kernel",
                       "first s", "others s (median)", "daemon reads"], rows))
    return out + _failures(summary)


def render_worker(res: dict[str, Any], name: str) -> list[str]:
    row = res[name]
    mib, summary = row["file_mib"], row["summary"]
    seq = name == SEQREAD
    what = (f"sequential read of a {mib} MiB file in 1 MiB reads through one mount (MB/s)"
            if seq else f"mmap of a {mib} MiB file through one mount, 1 byte from each of "
            f"{MMAP_PAGES:,} random 4 KiB pages (seconds)")
    out = ["", f"{what}, cold after a cache drop, then warm; median of {res['reps']}; "
           "/kernel = time relative to kernel overlayfs:"]
    rows = []
    for impl in [PLAIN, *res["implementations"]]:
        v = summary.get(impl, {})
        ratio = v.get("ratio_to_kernel", {})
        shown = [_mbps(mib, v.get(k)) if seq else _fmt(v.get(k), ".3f")
                 for k in ("cold_s", "warm_s")]
        rows.append([impl, *shown, _fmt(ratio.get("cold_s"), ".2f"),
                     _fmt(ratio.get("warm_s"), ".2f"), _reads(v)])
    unit = "MB/s" if seq else "s"
    out.append(_table(["impl", f"cold {unit}", f"warm {unit}", "cold /kernel", "warm /kernel",
                       "daemon reads"], rows))
    return out + _failures(summary)


def _mbps(mib: int, seconds: float | None) -> str:
    return _fmt(mib * MIB / seconds / 1e6 if seconds else None, ".0f")


def render(res: dict[str, Any]) -> list[str]:
    out = ["", "page-cache rows (FUSE passthrough, issue 17; bench/pagecache.py): "
           f"{', '.join(res['implementations'])}; scale {res['scale']}"]
    out += [f"  note: {n}" for n in res["notes"]]
    out += [f"  {name}: not run: {why}" for name, why in res["unavailable"].items()]
    for name, fn in ((READERS, render_readers), (PYTHON, render_python)):
        if name in res:
            out += fn(res)
    for name in (SEQREAD, MMAP):
        if name in res:
            out += render_worker(res, name)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    args = standalone.parse_args("pagecache", __doc__, NAMES, argv,
                                 quick_help="smaller files, one repetition (under 1.5 min)",
                                 reps_help="default 3 (quick 1)",
                                 root_because="it mounts filesystems and drops caches")
    res = standalone.run_in_fresh_dir(args, run)
    return standalone.report(args, "page-cache rows", "pagecache", res, render)


if __name__ == "__main__":
    raise SystemExit(main())
