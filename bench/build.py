"""Build rows: ``pyunion build`` against ``podman build --layers`` (buildah inside).

- ``build-gcc``: a multi-stage build (tests/build's gcc one): the Debian bookworm minbase image
  (``bench.images.ensure_image``, loaded into both stores first, untimed) runs ``apt-get update
  && apt-get install gcc libc6-dev`` (from deb.debian.org: the network's time is in both), a C
  file is copied in and compiled statically, and the binary is copied into a busybox stage.
- ``build-copy``: ``COPY`` of 10,000 small files (100 directories of 100, 1 KiB) onto busybox.
- ``build-cached``: the gcc build again, every step from the cache (pyunion's target: 0.5 s).

Both tools build with ``--no-cache`` for the first two rows (every step runs), from the same
context, each with its own Containerfile naming the base images as that tool's store has them.
podman is the container rows' (``bench.containers.Podman``: its own storage on fuse-overlayfs,
runc, host network). Each repetition runs both, order rotated; ``sync`` before each sample.

``python -m bench.build [--quick] [--workloads build-gcc,build-copy,build-cached]`` runs these
rows alone (as root).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import containers, images, standalone
from bench.containers import Busybox, Failed, Podman, _summary, pyunion_env
from bench.images import _error, _run, pyunion_missing, timed
from bench.implementations import cleanup_cell
from bench.report import _fmt, _table

GCC, COPY, CACHED = "build-gcc", "build-copy", "build-cached"
NAMES = [GCC, COPY, CACHED]
TARGETS = {GCC: 1.0, COPY: 1.0}  # pyunion/podman at most
CACHED_TARGET_S = 0.5
TOOLS = ("pyunion", "podman")
HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
GCC_FILE = """FROM {debian} AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY hello.c .
RUN gcc -static -O2 -o hello hello.c

FROM {busybox}
COPY --from=build /src/hello /usr/local/bin/hello
CMD ["/usr/local/bin/hello"]
"""
COPY_FILE = "FROM {busybox}\nCOPY files /data/\n"

Log = Any


class Setup:
    """Both stores with the busybox and (for the gcc rows) Debian images; the contexts."""

    def __init__(self, args: argparse.Namespace, root: Path, log: Log) -> None:
        self.args, self.root = args, root
        self.env = pyunion_env(args.cache_dir)
        self.bb = Busybox(root / "busybox", self.env, args.timeout, args.cache_dir)
        self.podman: Podman = self.bb.with_podman()
        self.debian: dict[str, str] | None = None
        self.log = log

    def with_debian(self) -> dict[str, str]:
        if self.debian is None:
            image_root, meta = images.ensure_image(self.args.cache_dir, self.log)
            if meta["source"] != "debootstrap":
                raise Failed(f"no Debian image: {meta.get('fallback_because')}")
            archive = str(image_root / "image.oci.tar")
            self.bb.py(["load", "-q", "-i", archive], 600)
            _run(self.podman.cmd("load", "-i", archive), 600, env=self.podman.env)
            self.debian = {"pyunion": images.ARCHIVE_REF, "podman": "localhost/debian:bookworm"}
        return self.debian

    def context(self, name: str, template: str, files: dict[str, str]) -> Path:
        """A context with one Containerfile per tool (``Containerfile.<tool>``)."""
        directory = self.root / name
        if directory.exists():
            return directory
        directory.mkdir()
        for rel, text in files.items():
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            (directory / rel).write_text(text)
        debian = self.debian or {"pyunion": "", "podman": ""}
        busybox = {"pyunion": containers.BUSYBOX, "podman": self.bb.podman_image}
        for tool in TOOLS:
            (directory / f"Containerfile.{tool}").write_text(
                template.format(debian=debian[tool], busybox=busybox[tool]))
        return directory

    def build_cmd(self, tool: str, context: Path, *options: str) -> tuple[list[str], dict]:
        file = str(context / f"Containerfile.{tool}")
        if tool == "pyunion":
            return self.bb.py_cmd("build", "-q", "-f", file, *options, str(context)), self.env
        return self.podman.cmd("build", "--layers", "-q", "-f", file, *options,
                               str(context)), self.podman.env

    def close(self) -> list[str]:
        return self.bb.close()


def _copy_files() -> dict[str, str]:
    block = ("pyunion build bench " * 64)[:1024]
    return {f"files/d{d:02d}/f{f:02d}.txt": block for d in range(100) for f in range(100)}


def _samples(setup: Setup, context: Path, reps: int, options: tuple[str, ...],
             log: Log) -> dict[str, Any]:
    times: dict[str, list[float]] = {t: [] for t in TOOLS}
    errors: dict[str, list[str]] = {t: [] for t in TOOLS}
    per_rep: dict[tuple[int, str], float] = {}
    for rep in range(reps):
        order = TOOLS if rep % 2 == 0 else tuple(reversed(TOOLS))
        for tool in order:
            cmd, env = setup.build_cmd(tool, context, *options)
            os.sync()
            try:
                wall, _cpu, _out = timed(cmd, setup.args.timeout, env=env)
            except (OSError, subprocess.SubprocessError) as e:
                errors[tool].append(_error(e))
                log(f"  {tool} FAILED: {_error(e)}")
                continue
            times[tool].append(wall)
            per_rep[rep, tool] = wall
            log(f"  rep {rep + 1}/{reps} {tool}: {wall:.2f} s")
    tools = {t: _summary(times[t], errors[t]) for t in TOOLS}
    return {"ok": True, "tools": tools,
            "ratio": containers._ratio(tools["pyunion"]["median_s"],
                                       tools["podman"]["median_s"]),
            "per_rep": containers._per_rep(per_rep, "pyunion", "podman")}


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": args.reps, "names": names}
    missing = pyunion_missing() or Podman.missing()
    root = run_dir / "build"
    root.mkdir(parents=True, exist_ok=True)
    setup: Setup | None = None
    try:
        for name in names:
            if missing:
                out[name] = {"ok": False, "error": missing}
                continue
            log(f"{name}:")
            try:
                if setup is None:
                    setup = Setup(args, root, log)
                if name == COPY:
                    context = setup.context("copy", COPY_FILE, _copy_files())
                    out[name] = _samples(setup, context, args.reps, ("--no-cache",), log)
                    continue
                setup.with_debian()
                context = setup.context("gcc", GCC_FILE, {"hello.c": HELLO_C})
                if name == GCC:
                    out[name] = _samples(setup, context, args.reps, ("--no-cache",), log)
                else:
                    for tool in TOOLS:  # fill the caches (untimed, if GCC has not)
                        cmd, env = setup.build_cmd(tool, context)
                        _run(cmd, args.timeout, env=env)
                    out[name] = _samples(setup, context, max(args.reps, 3), (), log)
            except (OSError, RuntimeError, ValueError, LookupError, Failed,
                    subprocess.SubprocessError) as e:
                out[name] = {"ok": False, "error": _error(e)}
                log(f"  FAILED: {_error(e)}")
    finally:
        problems = setup.close() if setup is not None else []
        problems += containers.unmount_below(root)
        note = cleanup_cell(root)
        if note:
            problems.append(note)
        out["cleanup_lazy_unmounts"] = problems
    return out


def render(res: dict[str, Any]) -> list[str]:
    out = ["", "build rows: pyunion build vs podman build --layers (buildah; fuse-overlayfs "
           f"storage, runc); seconds end to end, median of {res['reps']} repetition(s) "
           "(cached: at least 3)"]
    header = ["build", "pyunion", "podman", "ratio", "per rep", "target", ""]
    rows = []
    labels = {GCC: "gcc multi-stage (--no-cache)", COPY: "COPY 10,000 files (--no-cache)",
              CACHED: "gcc multi-stage, all cached"}
    failed = []
    for name in res.get("names", []):
        r = res.get(name)
        if not r:
            continue
        if not r["ok"]:
            failed.append(f"  {name} FAILED: {r['error']}")
            continue
        mine, theirs = r["tools"]["pyunion"], r["tools"]["podman"]
        if name == CACHED:
            target = f"<= {CACHED_TARGET_S} s"
            value = mine["median_s"]
            verdict = "" if value is None else "ok" if value <= CACHED_TARGET_S else "MISSED"
        else:
            target = f"<= {TARGETS[name]}"
            value = r["ratio"]
            verdict = "" if value is None else "ok" if value <= TARGETS[name] else "MISSED"
        rows.append([labels[name], _fmt(mine["median_s"], ".2f"), _fmt(theirs["median_s"], ".2f"),
                     _fmt(r["ratio"], ".2f"), _fmt(r["per_rep"], ".2f"), target, verdict])
        for tool in ("pyunion", "podman"):
            if r["tools"][tool]["error"]:
                failed.append(f"  {name} {tool} failed: {r['tools'][tool]['error']}")
    if rows:
        out.append(_table(header, rows))
    if res.get("cleanup_lazy_unmounts"):
        out.append(f"  cleanup needed lazy unmounts: {res['cleanup_lazy_unmounts']}")
    return out + failed


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args("build", __doc__, NAMES, argv, quick_help="1 repetition",
                                 reps_help="repetitions (default 3; --quick: 1)",
                                 root_because="builds run containers and mount filesystems")
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))

    def unmount_and_remove(run_dir: Path) -> None:
        containers.unmount_below(run_dir)
        cleanup_cell(run_dir)

    res = standalone.run_in_fresh_dir(args, run, unmount_and_remove)
    return standalone.report(args, "build rows", "build", res, render)


if __name__ == "__main__":
    sys.exit(main())
