"""What one FUSE request costs pyunion's daemon in user CPU: a quick, repeatable measure for
work on the handlers (the mix and apt rows give the same figure, but take minutes).

pyunion is mounted (foreground, ``-o stats=``) over two layers of the quick dataset (``l2``
over ``l3``: about 3,400 entries, with whiteouts, an opaque directory and overrides; made by
``bench.dataset`` if missing), and ``sh`` runs SCRIPT on it: ``find -ls`` twice, ``ls -lR``
(a ``getxattr`` per entry), CREATED files made with ``echo``, the docs read with ``cat``, a
``cp -r`` into the mount, ``chmod -R`` (a copy-up per file), ``rm -rf``. The daemon's user
CPU over the script (``/proc/PID/stat``) divided by its request count; median of ``--runs``.
Caches are not dropped (the figure is the daemon's, not the disk's).

    python -m bench.request_cost [--runs 5] [--passthrough off] [--profile FILE]
                                 [--against DIR]

``--against DIR`` also measures the pyunion source tree at DIR (a checkout of another commit),
runs of the two interleaved, so that both see the same machine (it is shared).

``--profile FILE`` runs one mount with the daemon under cProfile and writes its stats to
FILE (read them with ``python -m pstats FILE``; CPU time, user and system, not wall time); its
CPU figures are cProfile's, not pyunion's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.dataset import QUICK, ensure
from bench.implementations import (
    REPO,
    Mounted,
    cpu_seconds,
    read_stats,
    umount,
    wait_mounted,
)

CREATED = 400

SCRIPT = f"""
set -e
cd "$1"
find . -ls > /dev/null
find . -ls > /dev/null
ls -lR > /dev/null
mkdir made
i=0
while [ $i -lt {CREATED} ]; do
  echo "file $i" > made/f$i
  i=$((i + 1))
done
cat usr/share/doc/*/* > /dev/null 2>&1 || true
cp -r usr/include made/include
chmod -R u+w usr/lib/python3
ls -lR made usr/lib/python3 > /dev/null
rm -rf made usr/share/man
"""

PROFILED = """
import cProfile, time
from mount_helper.__main__ import main
profiler = cProfile.Profile(time.process_time)
profiler.runcall(main)
profiler.dump_stats({out!r})
"""


def one_run(lowers: list[Path], cell: Path, passthrough: str, profile: Path | None,
            source: Path = REPO) -> dict[str, float | int]:
    """Mounts (the daemon run from the pyunion tree at ``source``), runs the script,
    unmounts: the daemon's user CPU over the script and its request count."""
    mnt, upper, work = cell / "mnt", cell / "upper", cell / "work"
    for d in (mnt, upper, work):
        d.mkdir(parents=True)
    stats = cell / "stats.json"
    python = [sys.executable, "-m", "mount_helper"]
    if profile is not None:  # (mount_helper's own exit skips the interpreter's teardown)
        python = [sys.executable, "-c", PROFILED.format(out=str(profile))]
    cmd = [*python, ":".join(map(str, lowers)), str(upper), str(mnt),
           "-f", "-o", f"workdir={work},stats={stats},passthrough={passthrough}"]
    log = cell / "daemon.log"
    with open(log, "wb") as logf:
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                  cwd=source, start_new_session=True)
    wait_mounted(mnt, daemon, log)
    m = Mounted(mnt, daemon, stats)
    try:
        before = cpu_seconds(daemon.pid)
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", SCRIPT, "sh", str(mnt)], check=True, timeout=600)
        wall = time.perf_counter() - t0
        after = cpu_seconds(daemon.pid)
    finally:
        problems = umount(mnt, daemon)
    if problems:
        raise RuntimeError("; ".join(problems))
    counts = read_stats(m) or {}
    requests = sum(v for k, v in counts.items() if not k.startswith("copy_up"))
    assert before is not None and after is not None
    return {"user_s": after[0] - before[0], "sys_s": after[1] - before[1], "wall_s": wall,
            "requests": requests, **{f"n_{k}": v for k, v in counts.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.request_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--passthrough", default="auto", choices=("auto", "off"))
    ap.add_argument("--profile", type=Path, help="one run under cProfile, stats to this file")
    ap.add_argument("--cache-dir", type=Path, default=Path("/var/tmp/pyunion-bench"))
    ap.add_argument("--counts", action="store_true", help="print the request counts")
    ap.add_argument("--against", type=Path, help="another pyunion tree, measured interleaved")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run it as root (it mounts filesystems)")
    ds = ensure(args.cache_dir, QUICK, log=lambda msg: None)
    lowers = [ds.root / "l2", ds.root / "l3"]
    runs = 1 if args.profile else args.runs
    sources = {"this tree": REPO}
    if args.against:
        sources[str(args.against)] = args.against.resolve()
    results: dict[str, list[dict[str, float | int]]] = {name: [] for name in sources}
    with tempfile.TemporaryDirectory(prefix="pyunion-cost-", dir="/var/tmp") as tmp:
        for i in range(runs):
            order = list(sources.items())
            if i % 2:
                order.reverse()
            for name, source in order:
                cell = Path(tmp) / f"run{i}"
                res = one_run(lowers, cell, args.passthrough,
                              args.profile.resolve() if args.profile else None, source)
                shutil.rmtree(cell)
                per = res["user_s"] / res["requests"] * 1e6
                print(f"{name} run {i + 1}: {res['requests']:,} requests, daemon user "
                      f"{res['user_s']:.2f} s sys {res['sys_s']:.2f} s, {per:.1f} µs/request, "
                      f"wall {res['wall_s']:.2f} s", flush=True)
                results[name].append(res)
    load = os.getloadavg()
    for name, mine in results.items():
        per_request = [r["user_s"] / r["requests"] * 1e6 for r in mine]
        print(f"{name}: median {statistics.median(per_request):.1f} µs/request user CPU "
              f"(min {min(per_request):.1f}, max {max(per_request):.1f})")
        if args.counts:
            counts = {k[2:]: v for k, v in mine[-1].items() if k.startswith("n_")}
            print("  " + ", ".join(f"{k} {v:,}" for k, v in
                                   sorted(counts.items(), key=lambda kv: -kv[1])))
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
