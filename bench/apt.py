"""The apt row: a user's real workload, an offline ``apt-get install`` in a chroot of a Debian
minbase rootfs used as the only lower layer.

Cached under ``<cache>/apt-v<VERSION>/`` (built on first use): ``rootfs/``, made by
``debootstrap --variant=minbase bookworm``, then ``apt-get update`` and ``apt-get install
--download-only --no-install-recommends`` of PACKAGES in a chroot of it, so that its apt lists
and ``.deb`` cache hold everything the install needs (``meta.json`` says what). Needs the
Debian mirror once; if it cannot be built, the row says why and is skipped (tried again a day
later).

Each repetition runs every implementation (order rotated), each on a fresh tree: ``plain``
(a ``cp -a`` of the rootfs, untimed: the floor), ``kernel`` (overlayfs, ``redirect_dir=on,
index=on``), ``fuse-overlayfs``, ``pyunion`` (this venv's pyfuse3, the extended one after
``make setup``) and ``pyunion-plain-pyfuse3`` (``.venv-plain``, PyPI's pyfuse3, where ``make
test-plain-pyfuse3`` made it). ``/proc`` and ``/dev`` are mounted into the tree, caches are
dropped, and ``chroot TREE apt-get install -y --no-download --no-install-recommends
PACKAGES`` is timed. Then ``dpkg --verify`` of the packages must be clean, or the sample fails.
pyunion's FUSE requests are counted (``-o stats=``).

``python -m bench.apt [--quick]`` runs this row alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import standalone
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
    cpu_seconds,
    drop_caches,
    mounts_below,
    read_stats,
    umount,
)
from bench.report import _fmt, _table

Log = Callable[[str], None]

APT = "apt"
NAMES = [APT]
VERSION = 1
PACKAGES = ("cowsay", "python3", "perl")
BUILD_TIMEOUT = 1800.0
RETRY_S = 86_400.0
PLAIN_VENV_PYTHON = REPO / ".venv-plain" / "bin" / "python"
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
              "LC_ALL": "C", "HOME": "/root"}
TOP_REQUESTS = 12


# ---------------------------------------------------------------------------------------------
# the cached rootfs


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True,
                          env=CHROOT_ENV)


@contextlib.contextmanager
def _chroot_mounts(tree: Path) -> Iterator[None]:
    """``/proc`` and ``/dev`` inside ``tree`` (what apt and dpkg's maintainer scripts use)."""
    done: list[Path] = []
    try:
        for src, kind in (("/proc", "proc"), ("/dev", "dev")):
            target = tree / src.lstrip("/")
            cmd = ["mount", "-t", "proc", "proc", str(target)] if kind == "proc" else \
                ["mount", "--bind", src, str(target)]
            subprocess.run(cmd, check=True, capture_output=True)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _build_rootfs(base: Path, log: Log) -> dict[str, Any]:
    tmp = base / "rootfs.building"
    if tmp.exists():
        _remove_tree(tmp)
    tmp.mkdir(parents=True)
    log(f"debootstrap --variant=minbase bookworm {tmp} (needs the Debian mirror) ...")
    try:
        _run(["debootstrap", "--variant=minbase", "bookworm", str(tmp)], BUILD_TIMEOUT)
    finally:  # a failed debootstrap can leave proc/sys mounted in the target
        for point in sorted(mounts_below(tmp), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
    log(f"apt-get update; apt-get install --download-only {' '.join(PACKAGES)} ...")
    archives = tmp / "var/cache/apt/archives"
    base_debs = set(archives.glob("*.deb"))  # debootstrap's own, which the install does not use
    with _chroot_mounts(tmp):
        _run(["chroot", str(tmp), "apt-get", "update", "-q"], BUILD_TIMEOUT)
        _run(["chroot", str(tmp), "apt-get", "install", "-y", "-q", "--download-only",
              "--no-install-recommends", *PACKAGES], BUILD_TIMEOUT)
    debs = set(archives.glob("*.deb")) - base_debs
    meta = {"version": VERSION, "packages": list(PACKAGES), "debs": len(debs),
            "deb_bytes": sum(p.stat().st_size for p in debs),
            "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    if (base / "rootfs").exists():
        _remove_tree(base / "rootfs")
    tmp.rename(base / "rootfs")
    (base / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _remove_tree(path: Path) -> None:
    if mounts_below(path):
        raise RuntimeError(f"{path} has mounts below it: {mounts_below(path)}")
    shutil.rmtree(path)


def ensure_rootfs(cache: Path, log: Log) -> tuple[Path | None, dict[str, Any]]:
    """The cached rootfs and its meta, or (None, {"error": why}) if it cannot be built here."""
    base = cache / f"apt-v{VERSION}"
    base.mkdir(parents=True, exist_ok=True)
    failed = base / "build-failed.json"
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((base / "meta.json").read_text())
        if (base / "rootfs").is_dir():
            return base / "rootfs", meta
    if shutil.which("debootstrap") is None:
        return None, {"error": "debootstrap is not installed (make bench installs it)"}
    if failed.exists() and time.time() - failed.stat().st_mtime < RETRY_S:
        return None, {"error": json.loads(failed.read_text())["error"]}
    try:
        meta = _build_rootfs(base, log)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        stderr = getattr(e, "stderr", None) or ""
        why = f"{type(e).__name__}: {e}" + (f": {stderr.strip().splitlines()[-1]}" if stderr
                                            else "")
        failed.write_text(json.dumps({"error": why, "time": time.time()}))
        return None, {"error": why}
    failed.unlink(missing_ok=True)
    return base / "rootfs", meta


# ---------------------------------------------------------------------------------------------
# the trees


@dataclass
class OneLayer:
    """What the implementations' ``mount`` reads of a dataset: the lowers."""

    rootfs: Path

    @property
    def lowers(self) -> list[Path]:
        return [self.rootfs]


class PyunionPlainPyfuse3(Pyunion):
    """pyunion on PyPI's pyfuse3 (``.venv-plain``): no cached listings or symlinks."""

    name = "pyunion-plain-pyfuse3"

    def available(self) -> str | None:
        return None if PLAIN_VENV_PYTHON.exists() else \
            ".venv-plain is missing (make test-plain-pyfuse3 makes it)"

    def _cmd(self, ds: Any, mnt: Path, upper: Path, options: list[str]) -> list[str]:
        return [str(PLAIN_VENV_PYTHON), *super()._cmd(ds, mnt, upper, options)[1:]]


IMPLEMENTATIONS: list[Implementation] = [Kernel(), FuseOverlayfs(), Pyunion(),
                                         PyunionNoPassthrough(), PyunionPlainPyfuse3()]


@contextlib.contextmanager
def _tree(impl: Implementation | None, rootfs: Path, cell: Path, timeout: float
          ) -> Iterator[Mounted]:
    """A fresh tree: a copy of the rootfs (``impl`` None: plain) or a mount over it."""
    cell.mkdir(parents=True)
    if impl is None:
        copy = cell / "tree"
        subprocess.run(["cp", "-a", str(rootfs), str(copy)], check=True, timeout=timeout)
        yield Mounted(copy)
        return
    mnt, upper, work = cell / "mnt", cell / "upper", cell / "work"
    for d in (mnt, upper, work):
        d.mkdir()
    m = impl.mount(OneLayer(rootfs), cell, mnt, upper, work)
    try:
        yield m
    finally:
        m.notes += umount(mnt, m.daemon)


def _daemon_cpu(m: Mounted) -> float | None:
    """User CPU seconds of the mount's daemon so far (None: no daemon of ours)."""
    cpu = cpu_seconds(m.daemon.pid) if m.daemon is not None else None
    return cpu[0] if cpu is not None else None


@dataclass
class TreeWorkload:
    """What one row does on a fresh tree: ``prepared(tree)`` (a context, untimed), ``run(tree,
    timeout)`` (timed, the daemon's CPU measured around it), ``verify(tree, timeout)``
    (untimed; raises RuntimeError if the result is wrong)."""

    prepared: Callable[[Path], contextlib.AbstractContextManager]
    run: Callable[[Path, float], None]
    verify: Callable[[Path, float], None]


def _install(tree: Path, timeout: float) -> None:
    _run(["chroot", str(tree), "apt-get", "install", "-y", "-q", "--no-download",
          "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *PACKAGES], timeout)


def _verify_install(tree: Path, timeout: float) -> None:
    bad = _run(["chroot", str(tree), "dpkg", "--verify", *PACKAGES], timeout)
    if bad.stdout.strip():
        raise RuntimeError(f"dpkg --verify: {bad.stdout.strip().splitlines()[0]}")


APT_INSTALL = TreeWorkload(_chroot_mounts, _install, _verify_install)


def sample(impl: Implementation | None, rootfs: Path, cell: Path, timeout: float,
           workload: TreeWorkload = APT_INSTALL) -> dict[str, Any]:
    """One timed run on a fresh tree; ``ok`` False with ``error`` if anything failed."""
    rec: dict[str, Any] = {"impl": impl.name if impl else "plain"}
    try:
        with _tree(impl, rootfs, cell, timeout) as m:
            with workload.prepared(m.path):
                drop_caches()
                cpu0 = _daemon_cpu(m)
                t0 = time.perf_counter()
                workload.run(m.path, timeout)
                rec["s"] = time.perf_counter() - t0
                cpu1 = _daemon_cpu(m)
                if cpu0 is not None and cpu1 is not None:
                    rec["daemon_user_s"] = cpu1 - cpu0
                workload.verify(m.path, timeout)
        rec["notes"] = m.notes
        stats = read_stats(m)
        if stats is not None:
            rec["requests"] = stats
        rec["ok"] = True
    except (OSError, RuntimeError, MountFailed, subprocess.SubprocessError) as e:
        stderr = getattr(e, "stderr", None) or ""
        rec.update(ok=False, error=f"{type(e).__name__}: {e}"
                   + (f": {stderr.strip().splitlines()[-1]}" if stderr.strip() else ""))
    finally:
        problem = cleanup_cell(cell)
        if problem:
            rec.setdefault("notes", []).append(problem)
    return rec


def available_implementations() -> tuple[list[Implementation | None], dict[str, str]]:
    """``None`` (plain: a copy of the tree) and the implementations that can run here, and
    why the others cannot."""
    impls: list[Implementation | None] = [None]
    unavailable: dict[str, str] = {}
    for impl in IMPLEMENTATIONS:
        why = impl.available()
        if why:
            unavailable[impl.name] = why
        else:
            impls.append(impl)
    return impls, unavailable


def rotated_samples(impls: list[Implementation | None], rootfs: Path, cell_name: str,
                    args: argparse.Namespace, run_dir: Path, log: Log,
                    workload: TreeWorkload = APT_INSTALL) -> list[dict[str, Any]]:
    """``args.reps`` repetitions of every implementation, the order rotated each time."""
    samples: list[dict[str, Any]] = []
    for rep in range(args.reps):
        shift = rep % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            rec = sample(impl, rootfs, run_dir / f"{cell_name}-r{rep}", args.timeout, workload)
            rec["rep"] = rep
            samples.append(rec)
            took = f"{rec['s']:.1f} s" if rec["ok"] else f"FAILED: {rec['error']}"
            log(f"{cell_name} rep {rep + 1}/{args.reps} {rec['impl']:22s} {took}")
    return samples


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    """The apt row; ``args``: reps, timeout, cache_dir."""
    rootfs, meta = ensure_rootfs(args.cache_dir, log)
    out: dict[str, Any] = {"meta": meta, "reps": args.reps}
    if rootfs is None:
        out[APT] = {"ok": False, "error": meta["error"]}
        return out
    impls, unavailable = available_implementations()
    samples = rotated_samples(impls, rootfs, "apt", args, run_dir, log)
    out[APT] = {"ok": True, "samples": samples, "unavailable": unavailable,
                "summary": summarize(samples)}
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per implementation: median and min seconds, failures, and median request counts."""
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(s["impl"] for s in samples):
        mine = [s for s in samples if s["impl"] == name]
        times = [s["s"] for s in mine if s["ok"]]
        row: dict[str, Any] = {"n": len(times), "failed": [s["error"] for s in mine
                                                            if not s["ok"]],
                               "median_s": statistics.median(times) if times else None,
                               "min_s": min(times) if times else None}
        cpu = [s["daemon_user_s"] for s in mine if s["ok"] and "daemon_user_s" in s]
        row["daemon_user_s"] = statistics.median(cpu) if cpu else None
        counted = [s["requests"] for s in mine if s.get("requests")]
        if counted:
            kinds = {k for c in counted for k in c}
            row["requests"] = {k: int(statistics.median(c.get(k, 0) for c in counted))
                               for k in kinds}
        summary[name] = row
    return summary


def render(res: dict[str, Any]) -> list[str]:
    out = ["", f"apt-get install --no-download {' '.join(PACKAGES)} in a chroot of a Debian "
           "bookworm minbase rootfs (one lower layer; seconds, caches dropped first):"]
    row = res.get(APT)
    if not row:
        return out
    if not row["ok"]:
        return out + [f"  SKIPPED: the rootfs could not be built here: {row['error']}"]
    meta = res["meta"]
    out.append(f"  {meta['debs']} cached .debs ({meta['deb_bytes'] / 2**20:.0f} MiB), "
               f"{res['reps']} repetitions, order rotated; dpkg --verify clean after each")
    out += render_summary(row, "fuse-overlayfs sends about 120,000, counted with -d")
    return out


def render_summary(row: dict[str, Any], about_requests: str) -> list[str]:
    """The table of a tree row's summary: times, ratio, requests, the daemon's CPU per
    request; then what could not run, failures and the most frequent requests."""
    out = []
    summary = row["summary"]
    ref = (summary.get("fuse-overlayfs") or {}).get("median_s")
    rows = []
    for name, v in summary.items():
        ratio = v["median_s"] / ref if v["median_s"] is not None and ref else None
        requests = sum(v["requests"].values()) if v.get("requests") else None
        cpu = v.get("daemon_user_s")
        per_request = cpu / requests * 1e6 if cpu is not None and requests else None
        rows.append([name, _fmt(v["median_s"], ".1f"), _fmt(v["min_s"], ".1f"), str(v["n"]),
                     _fmt(ratio, ".2f"), f"{requests:,}" if requests is not None else "",
                     _fmt(cpu, ".2f") if cpu is not None else "",
                     _fmt(per_request, ".1f") if per_request is not None else ""])
    out.append(_table(["tree", "median", "min", "n", "/fuse-overlayfs", "requests",
                       "daemon user s", "user µs/request"], rows))
    out.append("  daemon user s: the FUSE daemon's user CPU over the timed part; per request: "
               f"over pyunion's request count ({about_requests})")
    for name, why in row["unavailable"].items():
        out.append(f"  {name}: not run: {why}")
    for name, v in summary.items():
        for error in v["failed"]:
            out.append(f"  {name} FAILED: {error}")
        if v.get("requests"):
            top = sorted(v["requests"].items(), key=lambda kv: -kv[1])[:TOP_REQUESTS]
            out.append(f"  {name} requests: " + ", ".join(f"{k} {n:,}" for k, n in top))
    return out


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args("apt", __doc__, NAMES, argv,
                                 quick_help="one repetition", reps_help="default 3 (quick 1)",
                                 root_because="it mounts filesystems and chroots")
    res = standalone.run_in_fresh_dir(args, run)
    return standalone.report(args, "apt row", "apt", res, render)


if __name__ == "__main__":
    raise SystemExit(main())
