"""What the row modules (images, containers, rootless) share when run alone
(``python -m bench.<module>``): their options, and writing their report and results JSON."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.implementations import REPO, cleanup_cell

Rows = Callable[[argparse.Namespace, list[str], Path, Callable[[str], None]], dict[str, Any]]


def parse_args(module: str, doc: str | None, names: list[str], argv: list[str] | None, *,
               quick_help: str, reps_help: str, root_because: str) -> argparse.Namespace:
    """The options every row module takes; the rows asked for are ``args.names``."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--reps", type=int, help=reps_help)
    ap.add_argument("--workloads", default=",".join(names), help=",".join(names))
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per command")
    ap.add_argument("--cache-dir", type=Path, default=Path("/var/tmp/pyunion-bench"))
    ap.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    args.names = [n for n in names if n in args.workloads.split(",")]
    if os.geteuid() != 0:
        raise SystemExit(f"run it as root ({root_because})")
    args.started = time.strftime("%Y%m%d-%H%M%S")
    return args


def report(args: argparse.Namespace, title: str, suffix: str, res: dict[str, Any],
           render: Callable[[dict[str, Any]], list[str]]) -> int:
    """Prints the rows' report and writes ``<results-dir>/<started>-<suffix>.json``."""
    print(f"\npyunion {title} {args.started}: {os.cpu_count()} CPUs")
    print("\n".join(render(res)[1:]))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{args.started}-{suffix}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")
    return 0


def run_in_fresh_dir(args: argparse.Namespace, run: Rows,
                     cleanup: Callable[[Path], object] = cleanup_cell) -> dict[str, Any]:
    """``run(args, names, run_dir, log)`` in a new ``<cache>/run-<pid>`` directory, which
    ``cleanup`` removes afterwards, whatever happened."""
    run_dir = args.cache_dir / f"run-{os.getpid()}"
    run_dir.mkdir(parents=True)
    try:
        return run(args, args.names, run_dir, lambda msg: print(msg, flush=True))
    finally:
        cleanup(run_dir)
