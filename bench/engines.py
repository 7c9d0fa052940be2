"""Engine rows: pyunion under podman (``pyunion-overlayfs`` as containers/storage's
``mount_program``) and under containerd (the ``pyunion snapshotter`` proxy plugin).

- ``engine-podman-run``: ``podman --runtime runc run --rm --network host IMG true`` with
  ``mount_program = pyunion-overlayfs`` against the same with ``mount_program =
  /usr/bin/fuse-overlayfs``: two private podman stores (``bench.containers.Podman``: its own
  ``storage.conf``/``containers.conf`` below a short directory), the same busybox-static image
  loaded into both (``podman load`` of a ``pyunion save`` docker-archive).
- ``engine-ctr-run``: ``ctr run --rm --snapshotter S IMG ID true`` with S = pyunion (the
  snapshotter serving a fresh store) against S = overlayfs (containerd's own), the busybox
  image imported for both (``ctr images import --snapshotter S``). One private containerd
  (Debian's 1.6; config, root, state and sockets below the run directory, the CRI plugin
  disabled, the snapshotter as ``[proxy_plugins.pyunion]``). The snapshotter mounts the
  container's snapshot itself at ``Prepare`` (a daemon started ahead) and containerd's two
  mounts of the rootfs are bind mounts of it.
- ``engine-ctr-pull``: ``ctr images pull --plain-http --snapshotter S`` of the image rows'
  Debian bookworm minbase image (``bench.images.ensure_image``; pushed by skopeo to a loopback
  ``docker-registry``) into S = pyunion and S = overlayfs; before each sample the image is
  removed with a synchronous garbage collection (``ctr images rm --sync``), which deletes its
  content and snapshots, so that every pull downloads and unpacks the whole image.

Each command is run once as a warm-up, then 5 rounds per repetition (``--quick``: 3; the pull:
2 and 1), the two alternated with the order rotated per round. Targets (issue 20):
``ctr run`` pyunion/overlayfs <= 1.5, pull pyunion/overlayfs <= 1.2; ``podman run`` is shown
against fuse-overlayfs without a target.

``python -m bench.engines [--quick] [--workloads engine-podman-run,...]`` runs these rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import containerd, images, standalone
from bench.containers import (
    Busybox,
    Failed,
    Podman,
    Registry,
    _row,
    _skopeo_push,
    _summary,
    podman_base,
    pyunion_env,
    unmount_below,
)
from bench.images import _error, _run, pyunion_cmd, timed
from bench.implementations import REPO, cleanup_cell
from bench.report import _table

PODMAN_RUN, CTR_RUN, CTR_PULL = "engine-podman-run", "engine-ctr-run", "engine-ctr-pull"
NAMES = [PODMAN_RUN, CTR_RUN, CTR_PULL]
TARGETS = {CTR_RUN: 1.5, CTR_PULL: 1.2}
ROUNDS = {PODMAN_RUN: 5, CTR_RUN: 5, CTR_PULL: 2}
VENV_BIN = Path(sys.executable).parent
PYUNION_OVERLAYFS = VENV_BIN / "pyunion-overlayfs"
NAMESPACE = "pyunion-bench"

Log = Callable[[str], None]
Command = Callable[[], list[str]]


def _quick(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quick", False))


def _rounds(args: argparse.Namespace, name: str) -> int:
    return max(1, ROUNDS[name] - (2 if _quick(args) else 0))


def _alternate(args: argparse.Namespace, name: str, cmds: dict[str, Command],
               env: dict[str, str], log: Log, before: Callable[[str], None] | None = None
               ) -> dict[str, Any]:
    """Warm-up, then rounds of every command (order rotated); ``before(tool)`` runs untimed
    before each sample."""
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    errors: dict[str, list[str]] = {k: [] for k in cmds}
    names = list(cmds)
    for tool in names:
        try:
            if before:
                before(tool)
            _run(cmds[tool](), args.timeout, env=env, cwd=REPO)
        except (OSError, subprocess.SubprocessError, Failed) as e:
            errors[tool].append(f"warm-up: {_error(e)}")
    rounds = _rounds(args, name)
    for rep in range(args.reps):
        for k in range(rounds):
            shift = (rep * rounds + k) % len(names)
            for tool in names[shift:] + names[:shift]:
                if errors[tool]:
                    continue
                try:
                    if before:
                        before(tool)
                    samples[tool].append(timed(cmds[tool](), args.timeout, env=env,
                                               cwd=REPO)[0])
                except (OSError, subprocess.SubprocessError, Failed) as e:
                    errors[tool].append(_error(e))
        log(f"rep {rep + 1}/{args.reps} {name} " + "  ".join(
            f"{t} {statistics.median(samples[t][-rounds:]):.3f}s" if samples[t]
            and not errors[t] else f"{t} FAILED" for t in names))
    tools = {t: _summary(samples[t], errors[t]) for t in names}
    a, b = names
    ma, mb = tools[a]["median_s"], tools[b]["median_s"]
    pairs = [x / y for x, y in zip(samples[a], samples[b], strict=False) if y]
    return {"ok": True, "tools": tools, "ratio": ma / mb if ma and mb else None,
            "per_round": statistics.median(pairs) if pairs else None,
            "rounds_per_rep": rounds, "order": names}


# ---------------------------------------------------------------------------------------------
# podman


def run_podman(args: argparse.Namespace, bb: Busybox, made: list[Podman], log: Log
               ) -> dict[str, Any]:
    theirs = bb.with_podman()  # fuse-overlayfs
    ours = Podman(podman_base(bb.cache))
    made.append(ours)
    conf = ours.base / "storage.conf"
    conf.write_text(conf.read_text().replace('"/usr/bin/fuse-overlayfs"',
                                             f'"{PYUNION_OVERLAYFS}"'))
    archive = bb.root / "busybox.docker.tar"
    _run(ours.cmd("load", "-i", str(archive)), args.timeout, env=ours.env)

    def run_cmd(podman: Podman) -> Command:
        return lambda: podman.cmd("run", "--rm", "--network", "host", "--pull", "never",
                                  bb.podman_image, "true")

    # both Podmans' environments differ only in their config paths: each command gets its own
    cmds = {"pyunion-overlayfs": lambda: ["env", *_env_args(ours.env), *run_cmd(ours)()],
            "fuse-overlayfs": lambda: ["env", *_env_args(theirs.env), *run_cmd(theirs)()]}
    return _alternate(args, PODMAN_RUN, cmds, dict(os.environ), log)


def _env_args(env: dict[str, str]) -> list[str]:
    return [f"{k}={env[k]}" for k in ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF")]


# ---------------------------------------------------------------------------------------------
# containerd


class Containerd:
    """A private containerd and a pyunion snapshotter, below ``base`` (a short path)."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        base.mkdir(parents=True)
        self.address = base / "c.sock"
        self.snap_address = base / "s.sock"
        self.env = {**env, "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"}
        (base / "config.toml").write_text(
            containerd.config_toml(base, self.address, self.snap_address))
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, cmd: list[str], log_name: str, address: Path) -> None:
        with open(self.base / log_name, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=self.env, start_new_session=True)
        self.procs.append(proc)
        if not containerd.wait_for_socket(address, proc, timeout=60):
            tail = (self.base / log_name).read_text(errors="replace")[-300:]
            raise Failed(f"{Path(cmd[0]).name} did not start: {tail}")

    def start(self) -> None:
        self._start([*pyunion_cmd(), "--root", str(self.base / "store"), "snapshotter",
                     "--address", str(self.snap_address)], "snapshotter.log",
                    self.snap_address)
        self._start(["containerd", "--config", str(self.base / "config.toml")],
                    "containerd.log", self.address)

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.address), "--namespace", NAMESPACE, *args]

    def close(self) -> list[str]:
        for proc in reversed(self.procs):  # containerd first, then the snapshotter
            containerd.stop(proc, timeout=30)
        return unmount_below(self.base)


def _short_base(cache: Path, prefix: str) -> Path:
    """A new, not yet existing directory with a short path (unix sockets: 108 bytes)."""
    base = podman_base(cache)
    base.rmdir()
    return base.with_name(prefix + base.name)


def run_ctr(args: argparse.Namespace, bb: Busybox, engine: Containerd, log: Log
            ) -> dict[str, Any]:
    archive = bb.root / "busybox.oci.tar"
    if not archive.exists():
        bb.py(["save", "--format", "oci-archive", "-o", str(archive), "bench/busybox:latest"])
    ref = ""
    for snapshotter in ("pyunion", "overlayfs"):
        out = _run(engine.ctr("images", "import", "--snapshotter", snapshotter,
                              str(archive)), args.timeout, env=engine.env).stdout.decode()
        ref = out.split()[1] if out.startswith("unpacking") else "bench/busybox:latest"
    ids = iter(range(1_000_000))
    cmds = {s: (lambda s=s: engine.ctr("run", "--rm", "--snapshotter", s, ref,
                                       f"bench-{s}-{next(ids)}", "true"))
            for s in ("pyunion", "overlayfs")}
    return _alternate(args, CTR_RUN, cmds, engine.env, log)


def run_pull(args: argparse.Namespace, engine: Containerd, registry: Registry, log: Log
             ) -> dict[str, Any]:
    layout, meta = images.ensure_image(args.cache_dir, log)
    ref = f"{registry.host}/bench/debian:bookworm"
    _skopeo_push(layout / "oci", images.OCI_TAG, ref, args.timeout)

    def clear(_tool: str) -> None:
        subprocess.run(engine.ctr("images", "rm", "--sync", ref), env=engine.env,
                       capture_output=True, timeout=args.timeout)

    cmds = {s: (lambda s=s: engine.ctr("images", "pull", "--plain-http", "--snapshotter", s,
                                       ref)) for s in ("pyunion", "overlayfs")}
    res = _alternate(args, CTR_PULL, cmds, engine.env, log, before=clear)
    clear("")
    res["image"] = {k: meta.get(k) for k in ("kind", "entries", "layer_bytes") if k in meta}
    return res


# ---------------------------------------------------------------------------------------------
# the rows


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg": [images._loadavg()], "reps": args.reps, "names": names}
    env = pyunion_env(args.cache_dir)
    root = run_dir / "engines"
    root.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    bb: Busybox | None = None
    podmans: list[Podman] = []
    engine: Containerd | None = None
    registry: Registry | None = None
    try:
        for name in names:
            log(f"{name}:")
            try:
                missing = [t for t in ("podman", "containerd", "ctr", "runc", "fuse-overlayfs")
                           if shutil.which(t) is None]
                if missing:
                    raise Failed(f"not installed: {' '.join(missing)} (make bench installs "
                                 "them)")
                if bb is None:
                    bb = Busybox(root / "busybox", env, args.timeout, args.cache_dir)
                if name == PODMAN_RUN:
                    out[name] = run_podman(args, bb, podmans, log)
                    continue
                if engine is None:
                    engine = Containerd(_short_base(args.cache_dir, "ce"), env)
                    engine.start()
                if name == CTR_RUN:
                    out[name] = run_ctr(args, bb, engine, log)
                else:
                    registry = Registry(root / "registry")
                    registry.start()
                    out[name] = run_pull(args, engine, registry, log)
            except (OSError, RuntimeError, ValueError, LookupError, Failed,
                    subprocess.SubprocessError) as e:
                out[name] = {"ok": False, "error": _error(e)}
                log(f"  FAILED: {_error(e)}")
    finally:
        if registry is not None:
            registry.stop()
        if engine is not None:
            problems += engine.close()
            note = cleanup_cell(engine.base)
            if note:
                problems.append(note)
        for podman in podmans:
            problems += podman.close()
        if bb is not None:
            problems += bb.close()
        problems += unmount_below(root)
    out["cleanup_lazy_unmounts"] = problems
    out["loadavg"].append(images._loadavg())
    return out


HEADER = ["command", "median", "min", "n", "ratio", "per rep", "target", "", "what"]
LABELS = {
    PODMAN_RUN: ("podman run --rm busybox true: mount_program", "pyunion-overlayfs",
                 "fuse-overlayfs"),
    CTR_RUN: ("ctr run --rm busybox true: snapshotter", "pyunion", "overlayfs"),
    CTR_PULL: ("ctr images pull (Debian bookworm minbase, loopback registry): snapshotter",
               "pyunion", "overlayfs"),
}


def render(res: dict[str, Any]) -> list[str]:
    out = ["", f"engine rows: load average {res['loadavg'][0]} before, {res['loadavg'][-1]} "
           f"after; seconds end to end, median of {res['reps']} repetition(s); ratio: "
           "pyunion's median / the other's; per rep: median of the ratios within a round"]
    for name in res.get("names", []):
        r = res.get(name)
        if not r:
            continue
        title, ours, theirs = LABELS[name]
        out += ["", f"{name}: {title}"]
        if not r["ok"]:
            out.append(f"  FAILED: {r['error']}")
            continue
        if name == CTR_RUN:
            out.append("  pyunion: one mount per run, made by the snapshotter at Prepare; "
                       "containerd's two mounts of the rootfs are bind mounts of it")
        tools = r["tools"]
        out.append(_table(HEADER, [
            _row(ours, tools[ours]),
            _row(theirs, tools[theirs], r["ratio"], TARGETS.get(name),
                 f"ratio = {ours}/{theirs}", r["per_round"]),
        ]))
        for tool, v in tools.items():
            if v["error"]:
                out.append(f"  {tool} FAILED: {v['error']}")
    if res.get("cleanup_lazy_unmounts"):
        out.append(f"  cleanup: {res['cleanup_lazy_unmounts']}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args("engines", __doc__, NAMES, argv, quick_help="1 repetition, "
                                 "fewer rounds", reps_help="repetitions (default 3; --quick: 1)",
                                 root_because="containerd, podman, mounts")
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))

    def unmount_and_remove(run_dir: Path) -> None:
        with contextlib.suppress(OSError):
            unmount_below(run_dir)
        cleanup_cell(run_dir)

    res = standalone.run_in_fresh_dir(args, run, unmount_and_remove)
    return standalone.report(args, "engine benchmark", "engines", res, render)


if __name__ == "__main__":
    sys.exit(main())
