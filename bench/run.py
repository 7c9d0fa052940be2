"""The benchmark run: dataset, tree check, interleaved repetitions, mount latency, report."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    apt,
    build,
    containers,
    dataset,
    engines,
    images,
    lazy,
    mix,
    nullfs,
    pagecache,
    report,
    rootless,
)
from bench.implementations import (
    ALL,
    REPO,
    Implementation,
    Mounted,
    MountFailed,
    cleanup_cell,
    drop_caches,
    is_mounted,
    peak_rss_kib,
    read_stats,
    umount,
)
from bench.workloads import BY_NAME, WORKLOADS, Workload

LATENCY = "latency"  # pseudo-workload: mount/unmount latency
# The row modules run after the filesystem workloads, in this order (nullfs last, on its own:
# it needs no run directory). Each has NAMES, run(args, names, run_dir, log) -> rows and
# render(rows) -> lines; its rows go into the results JSON under its module's name.
ROW_MODULES = (images, containers, rootless, pagecache, apt, mix, lazy, engines, build)
ROW_NAMES = [name for module in (*ROW_MODULES, nullfs) for name in module.NAMES]


class WorkerFailed(Exception):
    """The workload process failed or timed out."""


def log(msg: str) -> None:
    print(msg, flush=True)


def run_worker(name: str, mnt: Path, ds: dataset.Dataset, passes: int, timeout: float
               ) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "bench.workloads", name, str(mnt), str(ds.root),
           "--passes", str(passes)]
    # own session: on timeout the whole group (worker, forked readers, tar, rm) is killed
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise WorkerFailed(f"timed out after {timeout:.1f} s") from None
    except BaseException:  # interrupted: don't leave the worker busy in the mount
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise WorkerFailed(lines[-1] if lines else f"exit status {proc.returncode}")
    result: list[dict[str, Any]] = json.loads(out.decode().splitlines()[-1])
    return result


def run_cell(impl: Implementation, wl: Workload, ds: dataset.Dataset, cell: Path,
             timeout: float, drop: bool = True) -> dict[str, Any]:
    """One fresh mount, one cold (+ warm) pass, teardown. Never raises for a failing impl."""
    rec: dict[str, Any] = {"workload": wl.name, "impl": impl.name, "ok": False}
    m: Mounted | None = None
    t = {"start": time.monotonic()}
    try:
        with impl.session(ds, cell, wl) as m:
            t["setup"] = time.monotonic()
            if drop:
                drop_caches()
            t["drop"] = time.monotonic()
            results = run_worker(wl.name, m.path, ds, len(wl.passes), timeout)
            t["worker"] = time.monotonic()
            if m.daemon is not None:
                rec["peak_rss_kib"] = peak_rss_kib(m.daemon.pid)
        rec["passes"] = dict(zip(wl.passes, results, strict=True))
        rec["ok"] = True
    except (MountFailed, WorkerFailed, subprocess.CalledProcessError, OSError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        if m is not None:
            rec["notes"] = list(m.notes)
            if m.stats_file is not None:
                rec["requests"] = read_stats(m)
        problem = cleanup_cell(cell)
        if problem:
            rec.setdefault("notes", []).append(problem)
        t["teardown"] = time.monotonic()
    # where the wall time went: mount (and plain's copy), cache drop, worker, teardown
    rec["wall_s"] = {k: round(b - a, 3) for (_, a), (k, b) in pairwise(t.items())}
    return rec


def describe(rec: dict[str, Any]) -> str:
    if not rec["ok"]:
        return "FAILED " + rec.get("error", "")
    parts = [f"{p} {r['seconds']:.3f}s" for p, r in rec["passes"].items()]
    if rec.get("peak_rss_kib"):
        parts.append(f"rss {rec['peak_rss_kib'] / 1024:.0f}MiB")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# mount/unmount latency (background mode, as a user would run it)


def pids_with_arg(arg: str) -> list[int]:
    """Processes whose command line has ``arg`` (a unique mount point path) as an argument."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if arg.encode() in args:
                pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.002)
    return False


def latency_sample(impl: Implementation, ds: dataset.Dataset, cell: Path) -> dict[str, float]:
    mnt, upper, work = cell / "mnt", cell / "upper", cell / "work"
    for d in (mnt, upper, work):
        d.mkdir(parents=True)
    cmd = impl.background_mount(ds, mnt, upper, work)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not is_mounted(mnt):
        umount(mnt)
        raise MountFailed(f"exit {r.returncode}: {r.stderr.strip()[-300:]}")
    os.stat(mnt)  # answered by the filesystem: it is ready
    t1 = time.perf_counter()
    pids = pids_with_arg(str(mnt)) if impl.fuse else []
    problems = umount(mnt)
    t2 = time.perf_counter()
    if not wait_gone(pids, 20):
        for pid in pids:  # daemons of this mount point (unique path): ours
            os.kill(pid, signal.SIGKILL)
        problems.append("daemon did not exit after umount")
    t3 = time.perf_counter()
    if problems:
        raise MountFailed("; ".join(problems))
    sample = {"mount": t1 - t0, "umount": t2 - t1, "total": t2 - t0}
    if pids:
        sample["daemon_exit_after_umount"] = t3 - t2
    return sample


def measure_latency(impl: Implementation, ds: dataset.Dataset, run_dir: Path, n: int
                    ) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    try:
        for i in range(n):
            cell = run_dir / f"latency-{impl.name}-{i}"
            try:
                samples.append(latency_sample(impl, ds, cell))
            finally:
                cleanup_cell(cell)
    except (MountFailed, OSError, subprocess.SubprocessError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "samples": samples}
    return {"ok": True, "samples": samples}


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="small dataset and 1 repetition (1-2 minutes)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--only", help="implementations, comma-separated: " + ",".join(ALL))
    ap.add_argument("--workloads", help="comma-separated: "
                    + ",".join([w.name for w in WORKLOADS] + [LATENCY] + ROW_NAMES))
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per workload process (default 300)")
    ap.add_argument("--latency-reps", type=int, default=10)
    ap.add_argument("--cache-dir", type=Path, default=Path("/var/tmp/pyunion-bench"))
    ap.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the check that every implementation shows the merged tree")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    return args


def select(spec: str | None, known: list[str], what: str) -> list[str]:
    if not spec:
        return known
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [n for n in known if n in names]


def check_trees(impls: list[Implementation], ds: dataset.Dataset, run_dir: Path,
                timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Mount each implementation once and compare its tree with the merged tree.

    Returns the checks and the implementations that could not even mount or list the tree:
    their cells are reported as failed without trying (a mount timeout per cell would eat
    the time budget). A wrong tree is reported, not excluded.
    """
    checks: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for impl in impls:
        if impl.name == "plain":
            continue  # it *is* the merged tree
        rec = run_cell(impl, BY_NAME_CHECK, ds, run_dir / f"check-{impl.name}", timeout,
                       drop=False)
        if rec["ok"]:
            res = rec["passes"]["cold"]
            checks[impl.name] = {k: res[k] for k in
                                 ("ok", "count", "n_missing", "n_extra", "missing", "extra")}
            state = "same tree" if res["ok"] else (
                f"DIFFERENT TREE: {res['n_missing']} missing {res['missing'][:2]}, "
                f"{res['n_extra']} extra {res['extra'][:2]}")
        else:
            checks[impl.name] = {"ok": False, "error": rec.get("error")}
            broken[impl.name] = f"skipped: failed the tree check: {rec.get('error')}"
            state = f"FAILED ({rec.get('error')}): its workloads are skipped"
        if rec.get("notes"):
            state += "  notes: " + "; ".join(rec["notes"])
        log(f"  check {impl.name:15s} {state}")
    return checks, broken


BY_NAME_CHECK = Workload("check", "read", "tree check", single_pass=True)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: everything unmounted


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the benchmark mounts filesystems and drops caches: run it as root")
    scale = dataset.QUICK if args.quick else dataset.FULL
    impl_names = select(args.only, list(ALL), "implementations")
    wl_names = select(args.workloads, [w.name for w in WORKLOADS] + [LATENCY] + ROW_NAMES,
                      "workloads")
    workloads = [BY_NAME[n] for n in wl_names if n in BY_NAME]
    started = time.strftime("%Y%m%d-%H%M%S")
    t_start = time.monotonic()

    ds = dataset.ensure(args.cache_dir, scale, log)
    machine = report.machine_info(ds.root)
    impls: list[Implementation] = []
    unavailable: dict[str, str] = {}
    for name in impl_names:
        impl = ALL[name]()
        why = impl.available()
        if why:
            unavailable[name] = why
            log(f"{name}: not available: {why}")
        else:
            impls.append(impl)

    run_dir = args.cache_dir / f"run-{os.getpid()}"
    run_dir.mkdir(parents=True)
    try:
        checks: dict[str, Any] = {}
        broken: dict[str, str] = {}
        if not args.no_check:
            log("checking that every implementation shows the merged tree:")
            checks, broken = check_trees(impls, ds, run_dir, args.timeout)
        cells = run_reps(args, ds, impls, workloads, run_dir, broken)
        latency: dict[str, Any] = {}
        if LATENCY in wl_names:
            for impl in impls:
                if impl.name != "plain" and impl.name not in broken:
                    log(f"mount/unmount latency: {impl.name} x{args.latency_reps}")
                    latency[impl.name] = measure_latency(impl, ds, run_dir, args.latency_reps)
        rows: dict[str, dict[str, Any]] = {}
        for module in ROW_MODULES:
            names = [n for n in wl_names if n in module.NAMES]
            rows[_row_key(module)] = module.run(args, names, run_dir, log) \
                if names and "pyunion" in impl_names else {}
        rows["nullfs"] = nullfs.run(args) if nullfs.NULLFS in wl_names else {}
    finally:
        cleanup_cell(run_dir)

    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    data = report.build(
        started=started,
        args={k: str(v) for k, v in vars(args).items()},
        machine=machine,
        dataset={"root": str(ds.root), "scale": ds.manifest["scale"],
                 "counts": ds.manifest["counts"],
                 "rm_subtree_entries": ds.manifest["rm_subtree_entries"],
                 "tree_digest": ds.manifest["tree_digest"]},
        impls=[i.name for i in impls],
        unavailable=unavailable,
        workloads=workloads,
        checks=checks,
        cells=cells,
        latency=latency,
        duration=time.monotonic() - t_start,
    )
    data.update(rows)
    print(report.render(data))
    for module in (*ROW_MODULES, nullfs):
        if rows[_row_key(module)]:
            print("\n".join(module.render(rows[_row_key(module)])))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{started}.json"
    json_path.write_text(json.dumps(data, indent=1))
    png_path = report.chart(data, args.results_dir / f"{started}.png")
    log(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


def _row_key(module: ModuleType) -> str:
    """Where a row module's rows go in the results JSON: its own name (``apt``, ``build``)."""
    return module.__name__.rpartition(".")[2]


def run_reps(args: argparse.Namespace, ds: dataset.Dataset, impls: list[Implementation],
             workloads: list[Workload], run_dir: Path, broken: dict[str, str]
             ) -> list[dict[str, Any]]:
    """Repetitions; in each, every workload on every implementation (order rotated per rep).

    ``broken``: implementations not to run (name -> reason), reported as failed cells.
    """
    cells: list[dict[str, Any]] = []
    skip: dict[tuple[str, str], str] = {(i, w.name): why for i, why in broken.items()
                                        for w in workloads}
    for rep in range(args.reps):
        shift = rep % max(1, len(impls))
        order = impls[shift:] + impls[:shift]
        for wl in workloads:
            for impl in order:
                key = (impl.name, wl.name)
                if key in skip:
                    rec = {"workload": wl.name, "impl": impl.name, "ok": False,
                           "error": skip[key]}
                else:
                    cell = run_dir / f"r{rep}-{wl.name}-{impl.name}"
                    rec = run_cell(impl, wl, ds, cell, args.timeout)
                    if "timed out" in rec.get("error", ""):
                        skip[key] = "skipped: timed out in an earlier repetition"
                rec["rep"] = rep
                cells.append(rec)
                notes = "  [" + "; ".join(rec["notes"]) + "]" if rec.get("notes") else ""
                log(f"rep {rep + 1}/{args.reps} {wl.name:10s} {impl.name:15s} "
                    f"{describe(rec)}{notes}")
    return cells
