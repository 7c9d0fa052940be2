"""Container and registry rows: ``pyunion run`` against podman and runc, ``pyunion commit``
against tar, a 128-layer image against a 2-layer one, and ``pyunion pull`` from a local registry
against podman and skopeo + umoci.

Cached under ``<cache>/containers-v<VERSION>/`` (built on first use): ``deep-128/`` and
``deep-2/``, OCI layouts (written here in Python) of two images with the same final tree of
3,000 entries (300 directories, 2,700 files of 64 B-4 KiB) spread over 128 and 2 gzip layers:
file k is in layer k*37 mod L, and every layer holds the parent directories of its files (so the
top directories are in every layer); ``pycache/``: the bytecode of pyunion's processes (see
below). The Debian minbase image is the image rows' (``images-v1/debian-bookworm/``,
``bench.images.ensure_image``: debootstrap, busybox-static if that fails).

Everything else is made in the run directory and deleted at the end: a store with a
busybox-static rootfs imported (``pyunion import``), a runc bundle, a local registry
(``docker-registry serve`` on 127.0.0.1, a free port, storage and log in the run directory) with
the Debian image pushed to it by ``skopeo copy`` as ``bench/debian:bookworm`` and, as
``bench/debian:plus``, the same image with one more small layer (an OCI layout written here, the
Debian blobs hard-linked). podman's storage is ``<cache>/podman-XXXXXXXX/`` (a short path: with a
longer graphroot, ``podman run`` cannot attach and waits 20 s for the exit; ``pull``: a new one
for each repetition), deleted at the end. ``commit`` and ``pull`` delete what their repetitions
made only after the last row: for minutes after a large deletion, creating files costs up to 10x
the system time on an ext4 without a journal (see DEFERRED), which would land in the next
repetition. (Deletions made before these rows, e.g. by the image rows, still can.)

podman runs with its own configuration (``CONTAINERS_STORAGE_CONF``, ``CONTAINERS_CONF``):
driver overlay with ``mount_program = /usr/bin/fuse-overlayfs``; graphroot, runroot, tmp_dir,
events log and network config in its directory; runtime runc; host network (pyunion's default;
podman's bridge would also change the host's firewall); ``default_ulimits`` nofile = this
process's hard limit, nproc 4096 (podman's defaults, 1048576, need CAP_SYS_RESOURCE, which no
process has here). Its storage is emptied by unmounting everything below it and deleting it
(not ``podman system reset``, which would also touch the host's networks).

pyunion's processes (the CLI and the mount daemon it starts) run with their bytecode cached in
``pycache/`` (``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` removed), as an installed
pyunion has it; without, every start compiles pyunion's own modules (~0.1 s per process).

Rows (each ``--reps`` repetitions, tools rotated in each):

- ``run-latency``: ``pyunion run --rm IMAGE true``, ``podman --runtime runc run --rm IMAGE true``
  (the same image: ``podman load`` of a ``pyunion save`` docker-archive) and ``runc run`` of a
  bundle on a plain directory (the floor), 5 rounds per repetition (--quick: 3) after one
  warm-up of each; also Python importing pyunion's CLI ``run`` command and the mount daemon's
  modules (what ``pyunion run`` pays before the container starts).
- ``commit``: a fresh container per repetition whose upper holds 10,000 new files (100
  directories, 1-4 KiB of text each, 24 MiB, written through ``pyunion mount``, then
  ``pyunion umount`` and ``sync``): ``pyunion commit`` against ``tar -cf`` of the upper dir to a
  file (the floor; GNU tar does not read the files when the archive is /dev/null), ``tar -czf``
  (a gzip layer, as commit writes) and ``cp -a`` (the files created again: commit also unpacks
  the new layer into the store).
- ``deep-stack``: both images loaded into a store; each repetition mounts each with
  ``pyunion mount-image`` and times ``find MNT -printf '%y %s %P\\n'`` cold (caches dropped) and
  warm, then ``umount-image``; the same for the kernel overlay and fuse-overlayfs over the same
  layer dirs (context: what 128 layers cost any overlay). The listings are compared.
- ``pull`` / ``pull-second``: into an empty store (podman: an empty graphroot) ``pyunion pull
  --insecure``, ``podman pull --tls-verify=false`` and ``skopeo copy --src-tls-verify=false
  docker://... oci:DIR:tag`` + ``umoci unpack``; then ``pull-second``: the ``plus`` image into the
  same store (pyunion and podman). Bytes are counted from the registry's log (``response
  completed`` lines, ``http.response.written``); the second pull should fetch only the new
  layer, the config and the manifest.

``--quick``: 1 repetition, and without the context-only comparisons that take the longest
(``cp -a``, fuse-overlayfs in deep-stack, skopeo + umoci).

Before each timed pull, commit, tar and cp: ``sync`` (earlier writeback does not land in it);
right after, the time of a ``sync`` is recorded (not in the ratios).

``python -m bench.containers [--quick] [--workloads run-latency,...]`` runs these rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import images, standalone
from bench.images import _error, _rmtree, _run, pyunion_cmd, pyunion_missing, timed
from bench.implementations import REPO, cleanup_cell, drop_caches, fuse_abort, mounts_below
from bench.report import _fmt, _table

VERSION = 1
RUN, COMMIT, DEEP, PULL, PULL2 = "run-latency", "commit", "deep-stack", "pull", "pull-second"
NAMES = [RUN, COMMIT, DEEP, PULL, PULL2]
TARGETS = {RUN: 1.0, COMMIT: 2.0, DEEP: 1.5, PULL: 1.0, PULL2: 0.2}
RUN_ROUNDS = 5  # samples of each run-latency command per repetition (--quick: 3)
COMMIT_DIRS, COMMIT_FILES = 100, 100  # 10,000 files
DEEP_LAYERS = (128, 2)
DEEP_TOPS, DEEP_SUBS, DEEP_FILES = 20, 14, 2_700  # 20 + 280 directories + 2,700 files
BUSYBOX = "bench/busybox:latest"
PODMAN_NPROC = 4096
MTIME = 1_700_000_000
# DEFERRED: commit and pull delete what their repetitions made only after the last row. On an
# ext4 without a journal (this machine's), the inode allocator skips inodes freed in the last
# 60 s (360 s while their inode-table block is dirty), reading the inode table to tell
# (`recently_deleted`, 60% of a slow `cp -a` in perf): after a large deletion creating files
# costs up to 10x the system time, which would land in the next repetition's samples.

Log = Callable[[str], None]


class Failed(Exception):
    """A row's setup failed (the row is reported as failed)."""


def _base(cache: Path) -> Path:
    base = cache / f"containers-v{VERSION}"
    base.mkdir(parents=True, exist_ok=True)
    return base


def pyunion_env(cache: Path) -> dict[str, str]:
    """The environment of pyunion's processes: bytecode cached under the cache directory."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(_base(cache) / "pycache")
    return env


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def unmount_below(path: Path) -> list[str]:
    """Unmounts everything mounted below ``path``, deepest first; returns what needed a lazy
    unmount (after aborting a FUSE connection that would not let go)."""
    lazy: list[str] = []
    for _ in range(5):
        points = sorted(mounts_below(path), key=len, reverse=True)
        if not points:
            break
        for point in points:
            r = subprocess.run(["umount", point], capture_output=True)
            if r.returncode != 0 and point in mounts_below(path):
                fuse_abort(Path(point))
                subprocess.run(["umount", "-l", point], capture_output=True)
                lazy.append(point)
    return lazy


def _summary(times: list[float], errors: list[str], **extra: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"median_s": statistics.median(times) if times else None,
                           "min_s": min(times) if times else None, "n": len(times),
                           "samples_s": times, "error": errors[0] if errors else None}
    for k, v in extra.items():
        out[f"{k}_median_s"] = statistics.median(v) if v else None
    return out


def _quick(args: argparse.Namespace) -> bool:
    """--quick leaves out the context-only comparisons that cost the most time."""
    return bool(getattr(args, "quick", False))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _per_rep(seconds: dict[tuple[int, str], float], a: str, b: str) -> float | None:
    """The median over repetitions of a/b within each (its samples ran back to back: less
    sensitive to the machine's speed drifting during the run than the ratio of the medians)."""
    ratios = [seconds[r, a] / seconds[r, b] for r, t in seconds
              if t == a and (r, b) in seconds and seconds[r, b]]
    return statistics.median(ratios) if ratios else None


# ---------------------------------------------------------------------------------------------
# podman with its own storage and configuration


def podman_base(cache: Path) -> Path:
    """A new directory for podman's storage, with a short path: with a graphroot path longer
    than ~60 bytes ``podman run`` cannot attach to the container (a socket path limit) and
    waits 20 s for its exit. In the cache directory (the filesystem of the run directory)."""
    base = Path(tempfile.mkdtemp(prefix="podman-", dir=cache))
    if len(str(base)) > 44:  # graphroot: 50 bytes at most (51 worked, 63 did not)
        base.rmdir()
        base = Path(tempfile.mkdtemp(prefix="pyunion-bench-podman-", dir="/var/tmp"))
    return base


class Podman:
    """podman whose storage (overlay + fuse-overlayfs), state and config live below ``base``
    (from ``podman_base``; deleted by ``close``)."""

    RUN_DIRS = (Path("/run/containers/networks"), Path("/run/containers"))

    def __init__(self, base: Path) -> None:
        self.base = base
        self.graph, self.runroot, self.tmp = base / "graph", base / "run", base / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        # podman creates its network run dir there whatever the config says: removed at close
        # if it was not there before (and is empty)
        self._made = [d for d in self.RUN_DIRS if not d.exists()]
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(PODMAN_NPROC, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        (base / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{self.graph}"\nrunroot = "{self.runroot}"\n'
            '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n')
        (base / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            'netns = "host"\n'
            "[engine]\n"
            f'runtime = "runc"\ntmp_dir = "{self.tmp}"\nimage_copy_tmp_dir = "{self.tmp}"\n'
            f'events_logger = "file"\nevents_logfile_path = "{base}/events.log"\n'
            "[network]\n"
            f'network_config_dir = "{base}/networks"\n')
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
                    "CONTAINERS_CONF": str(base / "containers.conf")}

    @staticmethod
    def missing() -> str | None:
        for tool in ("podman", "runc", "fuse-overlayfs"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (make bench installs it)"
        return None

    def cmd(self, *args: str) -> list[str]:
        return ["podman", "--runtime", "runc", *args]

    def reset(self, containers: bool = False) -> list[str]:
        """Empties the storage; returns mounts that needed a lazy unmount."""
        if containers and self.graph.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _run(self.cmd("rm", "-a", "-f", "-t", "0"), 60, env=self.env)
        lazy = unmount_below(self.base)
        for d in (self.graph, self.runroot, self.tmp, self.base / "networks"):
            _rmtree(d)
        for f in self.base.glob("events.log*"):
            f.unlink()
        return lazy

    def close(self) -> list[str]:
        lazy = self.reset(containers=True)
        note = cleanup_cell(self.base)
        for d in self._made:
            with contextlib.suppress(OSError):
                d.rmdir()
        return lazy + ([note] if note else [])


# ---------------------------------------------------------------------------------------------
# a local registry


class Registry:
    """``docker-registry serve`` on 127.0.0.1 (a free port), storage and log below ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = base / "registry.log"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self, timeout: float = 30.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(3):  # the port may be taken between our probe and the registry's bind
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            config = self.base / "config.yml"
            config.write_text(
                "version: 0.1\nlog:\n  level: info\n  formatter: json\n"
                "  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.base / 'data'}\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: pyunion-bench\n")
            with open(self.log_path, "wb") as logf:
                self.proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                             stdout=logf, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            ready = f"listening on 127.0.0.1:{self.port}"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ready in self.log_path.read_text(errors="replace"):
                    self.get("/v2/")  # ours (the log says so) and answering
                    return
                time.sleep(0.05)
            problem = self.log_path.read_text(errors="replace").strip()[-300:]
            self.stop()
        raise Failed(f"docker-registry did not start: {problem}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str, accept: str = "") -> bytes:
        req = urllib.request.Request(f"http://{self.host}{path}")
        if accept:
            req.add_header("Accept", accept)
        with self.opener.open(req, timeout=30) as r:
            data: bytes = r.read()
            return data

    def manifest(self, repo: str, tag: str) -> tuple[dict[str, Any], int]:
        raw = self.get(f"/v2/{repo}/manifests/{tag}",
                       "application/vnd.oci.image.manifest.v1+json, "
                       "application/vnd.docker.distribution.manifest.v2+json")
        return json.loads(raw), len(raw)

    def mark(self) -> int:
        return self.log_path.stat().st_size

    def transfers(self, mark: int) -> dict[str, Any]:
        """Bytes the registry sent since ``mark``, by kind (blob, manifest, other)."""
        time.sleep(0.2)  # it logs a response after sending it
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            lines = f.read().splitlines()
        out: dict[str, Any] = {"bytes": 0, "requests": 0, "by_kind": {}}
        for line in lines:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("msg") != "response completed":
                continue
            uri = d.get("http.request.uri", "")
            kind = "blob" if "/blobs/" in uri else "manifest" if "/manifests/" in uri else "other"
            n = int(d.get("http.response.written", 0))
            k = out["by_kind"].setdefault(kind, {"bytes": 0, "requests": 0})
            k["bytes"] += n
            k["requests"] += 1
            out["bytes"] += n
            out["requests"] += 1
        return out


# ---------------------------------------------------------------------------------------------
# the busybox image: a pyunion store, the same image in podman, a runc bundle


class Busybox:
    """A busybox-static rootfs imported into a store (and, on demand, podman and runc)."""

    def __init__(self, root: Path, env: dict[str, str], timeout: float, cache: Path) -> None:
        self.root, self.env, self.timeout, self.cache = root, env, timeout, cache
        self.store = root / "store"
        self.rootfs = root / "rootfs"
        self.podman: Podman | None = None
        self.podman_image = ""
        self.bundle = root / "bundle"
        root.mkdir(parents=True)
        images._busybox_rootfs(self.rootfs)
        self.py(["import", "-q", "-c", 'CMD ["/bin/sh"]', str(self.rootfs), BUSYBOX])

    def py(self, args: list[str], timeout: float | None = None) -> bytes:
        cmd = [*pyunion_cmd(), "--root", str(self.store), *args]
        return _run(cmd, timeout or self.timeout, env=self.env, cwd=REPO).stdout

    def py_cmd(self, *args: str) -> list[str]:
        return [*pyunion_cmd(), "--root", str(self.store), *args]

    def with_podman(self) -> Podman:
        """The image in podman: ``podman load`` of a ``pyunion save`` docker-archive."""
        if self.podman is None:
            archive = self.root / "busybox.docker.tar"
            self.py(["save", "-o", str(archive), BUSYBOX])
            self.podman = Podman(podman_base(self.cache))
            out = _run(self.podman.cmd("load", "-i", str(archive)), self.timeout,
                       env=self.podman.env).stdout.decode()
            loaded = [ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Loaded image")]
            if not loaded:
                raise Failed(f"podman load printed no image name: {out.strip()[-200:]}")
            self.podman_image = loaded[0].split(",")[0].strip()
        return self.podman

    def with_bundle(self) -> Path:
        """A runc bundle on a plain copy of the rootfs: the default spec, ``true``, host
        network (as pyunion and podman here), no rlimits (as pyunion)."""
        if not (self.bundle / "config.json").exists():
            self.bundle.mkdir()
            _run(["cp", "-a", str(self.rootfs), str(self.bundle / "rootfs")], self.timeout)
            _run(["runc", "spec"], self.timeout, cwd=self.bundle)
            spec = json.loads((self.bundle / "config.json").read_text())
            spec["process"].update(terminal=False, args=["true"])
            spec["process"].pop("rlimits", None)
            spec["root"]["readonly"] = False
            spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                           if n["type"] != "network"]
            (self.bundle / "config.json").write_text(json.dumps(spec, indent=1))
        return self.bundle

    def close(self) -> list[str]:
        lazy = self.podman.close() if self.podman else []
        return lazy + unmount_below(self.root)


# ---------------------------------------------------------------------------------------------
# run-latency


class PrivateNetns:
    """A network namespace of the bench's own (``unshare --net``, loopback up, held by a
    ``sleep``): the bridge rows make their bridges, veths and NAT rules in it, never in the
    host's network. ``enter`` prefixes a command with ``nsenter`` into it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 86400"],
            start_new_session=True)
        self.enter = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            up = subprocess.run([*self.enter, "ip", "-br", "link", "show", "lo"],
                                capture_output=True, text=True)
            if "UNKNOWN" in up.stdout or "UP" in up.stdout:
                return
            time.sleep(0.05)
        self.close()
        raise Failed("the bench's network namespace did not come up")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=30)


def run_latency(args: argparse.Namespace, bb: Busybox, log: Log) -> dict[str, Any]:
    why = Podman.missing()
    podman = None
    if not why:
        try:
            podman = bb.with_podman()
        except (OSError, subprocess.SubprocessError, Failed) as e:
            why = f"podman setup: {_error(e)}"
    bundle = bb.with_bundle()
    py_env = bb.env
    floor_ids = iter(range(1_000_000))

    def runc_cmd() -> list[str]:
        return ["runc", "run", "--bundle", str(bundle), f"pyunion-bench-{os.getpid()}-"
                f"{next(floor_ids)}"]

    netns = PrivateNetns()   # the bridge rows: bridges, veths and NAT rules made in there
    cmds: dict[str, Callable[[], tuple[list[str], dict[str, str] | None]]] = {
        "pyunion": lambda: (bb.py_cmd("run", "--rm", "--network", "host", BUSYBOX, "true"),
                            py_env),
        # root's default network (no --network): the default bridge
        "pyunion-bridge": lambda: ([*netns.enter, *bb.py_cmd("run", "--rm", BUSYBOX, "true")],
                                   py_env),
        "runc": lambda: (runc_cmd(), None),
        "import-cli": lambda: ([sys.executable, "-c", "import unionfs.image.cli.run"], py_env),
        "import-daemon": lambda: ([sys.executable, "-c", "import unionfs.fs.daemon"], py_env),
    }
    if podman is not None:
        cmds["podman"] = lambda: (podman.cmd("run", "--rm", "--network", "host", "--pull",
                                             "never", bb.podman_image, "true"), podman.env)
        cmds["podman-bridge"] = lambda: ([*netns.enter, *podman.cmd(
            "run", "--rm", "--network", "bridge", "--pull", "never", bb.podman_image, "true")],
            podman.env)
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    errors: dict[str, list[str]] = {k: [] for k in cmds}
    if why:
        for name in ("podman", "podman-bridge"):
            errors[name] = [why]
            samples[name] = []
    names = list(cmds)
    rounds = 3 if _quick(args) else RUN_ROUNDS
    try:
        for name in names:  # warm-up: page cache, bytecode, podman's first-run state
            cmd, env = cmds[name]()
            try:
                _run(cmd, args.timeout, env=env, cwd=REPO)
            except (OSError, subprocess.SubprocessError) as e:
                errors[name].append(f"warm-up: {_error(e)}")
        for rep in range(args.reps):
            for k in range(rounds):
                shift = (rep * rounds + k) % len(names)
                for name in names[shift:] + names[:shift]:
                    if errors[name]:
                        continue
                    cmd, env = cmds[name]()
                    try:
                        samples[name].append(timed(cmd, args.timeout, env=env, cwd=REPO)[0])
                    except (OSError, subprocess.SubprocessError) as e:
                        errors[name].append(_error(e))
            log(f"rep {rep + 1}/{args.reps} run-latency " + "  ".join(
                f"{n} {statistics.median(samples[n][-rounds:]):.3f}s" if samples[n]
                and not errors[n] else f"{n} FAILED" for n in samples))
    finally:  # a runc container left by a killed `runc run` (ours: the id has our pid)
        listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True)
        for cid in listed.stdout.split():
            if cid.startswith(f"pyunion-bench-{os.getpid()}-"):
                subprocess.run(["runc", "delete", "--force", cid], capture_output=True)
        netns.close()
    left = bb.py(["ps", "-a", "-q"]).decode().split()
    tools = {n: _summary(samples[n], errors[n]) for n in samples}
    py = tools["pyunion"]["median_s"]
    ratios = {"pyunion/podman": _ratio(py, tools["podman"]["median_s"]),
              "pyunion/runc": _ratio(py, tools["runc"]["median_s"]),
              "pyunion-bridge/podman-bridge": _ratio(tools["pyunion-bridge"]["median_s"],
                                                     tools["podman-bridge"]["median_s"]),
              "pyunion-bridge/pyunion": _ratio(tools["pyunion-bridge"]["median_s"], py)}
    # the k-th samples of every command ran in the same round
    pairs = [("pyunion", "podman"), ("pyunion", "runc"), ("pyunion-bridge", "podman-bridge"),
             ("pyunion-bridge", "pyunion")]
    paired = {f"{a}/{b}": _per_rep({(k, n): x for n in (a, b)
                                    for k, x in enumerate(samples[n])}, a, b)
              if samples[a] and len(samples[a]) == len(samples[b]) else None
              for a, b in pairs}
    return {"ok": True, "tools": tools, "ratios": ratios, "per_round": paired,
            "containers_left": len(left),
            "podman_image": bb.podman_image, "rounds_per_rep": rounds}


# ---------------------------------------------------------------------------------------------
# commit


def _text_block(size: int = 1 << 16) -> bytes:
    rng = random.Random(20_240_601)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
             for _ in range(800)]
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _write_dirs(root: str, lo: int, hi: int) -> int:
    block, total = _text_block(), 0
    for d in range(lo, hi):
        directory = os.path.join(root, "srv", "bench", f"d{d:03d}")
        os.makedirs(directory)
        for f in range(COMMIT_FILES):
            i = d * COMMIT_FILES + f
            size = 1024 + (i * 7919) % 3072
            off = (i * 4099) % (len(block) - size)
            fd = os.open(os.path.join(directory, f"f{f:03d}.txt"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, block[off:off + size])
            finally:
                os.close(fd)
            total += size
    return total


def write_commit_files(root: Path) -> int:
    """10,000 files of 1-4 KiB of text in 100 new directories below ``root`` (2-4 processes
    writing at once: half the time of one on 2 cores); returns the bytes written."""
    n = max(2, min(4, os.cpu_count() or 2))
    bounds = [(str(root), k * COMMIT_DIRS // n, (k + 1) * COMMIT_DIRS // n) for k in range(n)]
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
        return sum(pool.map(_write_dirs, *zip(*bounds, strict=True)))


def _commit_cleanup(bb: Busybox, made: list[tuple[str, Path]]) -> list[str]:
    problems: list[str] = []
    for rep, (name, cell) in enumerate(made):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bb.py(["umount", name])
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bb.py(["rm", name])
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bb.py(["rmi", f"bench/commit:{rep}"])
        problems += unmount_below(cell)
        note = cleanup_cell(cell)
        if note:
            problems.append(note)
    return problems


def run_commit(args: argparse.Namespace, bb: Busybox, run_dir: Path, log: Log,
               deferred: list[Callable[[], list[str]]]) -> dict[str, Any]:
    """Its containers, images and outputs are deleted by ``deferred`` (see DEFERRED)."""
    tools = ("pyunion", "tar", "tar-gz") + (() if _quick(args) else ("cp",))
    samples: list[dict[str, Any]] = []
    written = 0
    made: list[tuple[str, Path]] = []
    deferred.append(lambda: _commit_cleanup(bb, made))
    for rep in range(args.reps):
        name = f"bench-commit-{rep}"
        cell = run_dir / f"commit-r{rep}"
        cell.mkdir()
        made.append((name, cell))
        cid = bb.py(["create", "--name", name, BUSYBOX, "true"]).decode().split()[-1]
        upper = bb.store / "containers" / cid / "upper"
        if not upper.is_dir():
            raise Failed(f"no upper dir at {upper}")
        t0 = time.perf_counter()
        mnt = Path(bb.py(["mount", name]).decode().split()[-1])
        t1 = time.perf_counter()
        written = write_commit_files(mnt)
        t2 = time.perf_counter()
        bb.py(["umount", name])  # flushes the mount (syncfs) first
        t3 = time.perf_counter()
        os.sync()
        setup = f"mount {t1 - t0:.1f}s, write {t2 - t1:.1f}s, umount {t3 - t2:.1f}s, " \
            f"sync {time.perf_counter() - t3:.1f}s"
        shift = rep % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            if tool == "pyunion":
                cmd = bb.py_cmd("commit", "-q", name, f"bench/commit:{rep}")
            elif tool == "tar":
                cmd = ["tar", "-C", str(upper), "-cf", str(cell / "upper.tar"), "."]
            elif tool == "tar-gz":
                cmd = ["tar", "-C", str(upper), "-czf", str(cell / "upper.tar.gz"), "."]
            else:
                cmd = ["cp", "-a", str(upper), str(cell / "copy")]
            os.sync()
            rec: dict[str, Any] = {"tool": tool, "rep": rep}
            try:
                wall, cpu, _ = timed(cmd, args.timeout, env=bb.env, cwd=REPO)
                rec.update(ok=True, seconds=wall, cpu_s=cpu, sync_after_s=timed_sync())
            except (OSError, subprocess.SubprocessError) as e:
                rec.update(ok=False, error=_error(e))
            samples.append(rec)
        log(f"rep {rep + 1}/{args.reps} commit  (untimed: {setup})  " + "  ".join(
            f"{s['tool']} {s['seconds']:.3f}s" if s["ok"] else f"{s['tool']} FAILED"
            for s in samples if s["rep"] == rep))
    out = {}
    secs = {(s["rep"], s["tool"]): s["seconds"] for s in samples if s["ok"]}
    for tool in tools:
        mine = [s for s in samples if s["tool"] == tool]
        out[tool] = _summary([s["seconds"] for s in mine if s["ok"]],
                             [s["error"] for s in mine if not s["ok"]],
                             cpu=[s["cpu_s"] for s in mine if s["ok"]],
                             sync_after=[s["sync_after_s"] for s in mine if s["ok"]])
    py = out["pyunion"]["median_s"]
    return {"ok": True, "files": COMMIT_DIRS * COMMIT_FILES, "bytes": written, "tools": out,
            "ratios": {f"pyunion/{t}": _ratio(py, out[t]["median_s"]) for t in tools[1:]},
            "per_rep": {f"pyunion/{t}": _per_rep(secs, "pyunion", t) for t in tools[1:]},
            "samples": samples}


# ---------------------------------------------------------------------------------------------
# deep-stack


def deep_tree() -> tuple[list[str], list[tuple[str, int]]]:
    """The final tree: directories (parents first) and files (path, size)."""
    dirs, subdirs = [], []
    for t in range(DEEP_TOPS):
        dirs.append(f"t{t:02d}")
        for s in range(DEEP_SUBS):
            subdirs.append(f"t{t:02d}/s{s:02d}")
    dirs += subdirs
    files = [(f"{subdirs[k % len(subdirs)]}/f{k:04d}.dat", 64 + (k * 7919) % 4033)
             for k in range(DEEP_FILES)]
    return dirs, files


def _tar_entry(tar: tarfile.TarFile, path: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(path)
    info.mtime, info.uid, info.gid = MTIME, 0, 0
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def _write_blob(layout: Path, data: bytes) -> dict[str, Any]:
    hexd = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hexd).write_bytes(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}


def _write_image(layout: Path, layers: list[bytes], ref: str, tag: str, base_config:
                 dict[str, Any] | None = None, base_layers: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """An OCI layout at ``layout`` (blobs dir made by the caller): ``layers`` (uncompressed
    tars) gzipped, on top of ``base_layers`` (descriptors already in the layout)."""
    config = base_config or {"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    config = json.loads(json.dumps(config))
    config["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MTIME))
    descs = list(base_layers or [])
    for i, raw in enumerate(layers):
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      **_write_blob(layout, gzip.compress(raw, compresslevel=6, mtime=0))})
        config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(raw).hexdigest())
        config["history"].append({"created": config["created"],
                                  "created_by": f"pyunion bench layer {i + 1}/{len(layers)}"})
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json",
           **_write_blob(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg, "layers": descs}
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **_write_blob(layout, json.dumps(manifest).encode()),
            "annotations": {"io.containerd.image.name": f"docker.io/{ref}:{tag}",
                            "org.opencontainers.image.ref.name": tag}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return {"manifest": desc, "config": cfg, "layers": descs}


def build_deep(layout: Path, n_layers: int) -> None:
    dirs, files = deep_tree()
    per_layer: list[list[tuple[str, int]]] = [[] for _ in range(n_layers)]
    for k, f in enumerate(files):
        per_layer[(k * 37) % n_layers].append(f)
    tmp = layout.with_name(layout.name + ".building")
    _rmtree(tmp)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    layers = []
    for mine in per_layer:
        needed = {p for path, _ in mine for p in _parents(path)}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for d in dirs:
                if d in needed:
                    _tar_entry(tar, d, None)
            for path, size in mine:
                seed = hashlib.sha256(path.encode()).digest()
                _tar_entry(tar, path, (seed * (size // 32 + 1))[:size])
        layers.append(buf.getvalue())
    _write_image(tmp, layers, "bench/deep", str(n_layers))
    (tmp / "meta.json").write_text(json.dumps({"version": VERSION, "layers": n_layers,
                                               "dirs": len(dirs), "files": len(files)}))
    _rmtree(layout)
    tmp.rename(layout)


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def ensure_deep(cache: Path, log: Log) -> dict[int, Path]:
    out = {}
    for n in DEEP_LAYERS:
        layout = _base(cache) / f"deep-{n}"
        try:
            ok = json.loads((layout / "meta.json").read_text()).get("version") == VERSION
        except (OSError, ValueError):
            ok = False
        if not ok:
            log(f"building {layout} ({n} layers) ...")
            build_deep(layout, n)
        out[n] = layout
    return out


DEEP_TOOLS = ("pyunion", "kernel", "fuse-overlayfs")


def _deep_mount(tool: str, n: int, mnt: Path, links: Path, py: list[str],
                env: dict[str, str], timeout: float) -> float:
    """Mounts image ``n`` (its layers: ``links/0`` base .. ``links/n-1`` top) read-only."""
    lower = ":".join(str(i) for i in reversed(range(n)))  # relative: 128 full paths are too
    if tool == "pyunion":                                  # long for one page of options
        cmd = [*py, "mount-image", f"bench/deep:{n}", str(mnt)]
    elif tool == "kernel":
        cmd = ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", str(mnt)]
    else:
        cmd = ["fuse-overlayfs", "-o", f"lowerdir={lower}", str(mnt)]
    return timed(cmd, timeout, env=env, cwd=links)[0]


def run_deep(args: argparse.Namespace, run_dir: Path, env: dict[str, str], log: Log
             ) -> dict[str, Any]:
    layouts = ensure_deep(args.cache_dir, log)
    store = run_dir / "deep-store"
    py = [*pyunion_cmd(), "--root", str(store)]
    loads, links = {}, {}
    for n, layout in layouts.items():
        loads[n] = timed([*py, "load", "-q", "-i", str(layout)], args.timeout, env=env,
                         cwd=REPO)[0]
        out = _run([*py, "inspect", f"bench/deep:{n}"], args.timeout, env=env).stdout
        links[n] = run_dir / f"deep-layers-{n}"
        links[n].mkdir()
        for i, d in enumerate(json.loads(out)[0]["LayerDirs"]):  # base first
            (links[n] / str(i)).symlink_to(d)
    log("deep-stack: loaded " + ", ".join(f"{n} layers in {s:.1f}s" for n, s in loads.items()))
    dirs, files = deep_tree()
    tools = [t for t in DEEP_TOOLS if t != "fuse-overlayfs" or shutil.which(t)
             and not _quick(args)]
    samples: list[dict[str, Any]] = []
    listings: dict[tuple[str, int], list[str]] = {}
    cells = [(t, n) for t in tools for n in DEEP_LAYERS]
    for rep in range(args.reps):
        shift = rep % len(cells)
        for tool, n in cells[shift:] + cells[:shift]:
            mnt = run_dir / f"deep-mnt-{tool}-{n}"
            mnt.mkdir()
            rec: dict[str, Any] = {"tool": tool, "layers": n, "rep": rep}
            try:
                rec["mount_s"] = _deep_mount(tool, n, mnt, links[n], py, env, args.timeout)
                find = ["find", str(mnt), "-printf", "%y %s %P\\n"]
                drop_caches()
                rec["cold_s"], _, out = timed(find, args.timeout)
                rec["warm_s"], _, _ = timed(find, args.timeout)
                if rep == 0:
                    listings[tool, n] = sorted(out.decode().splitlines())
                rec["entries"] = len(out.splitlines()) - 1  # not the root itself
                umount = [*py, "umount-image", str(mnt)] if tool == "pyunion" else \
                    ["umount", str(mnt)]
                rec["umount_s"] = timed(umount, args.timeout, env=env, cwd=REPO)[0]
                rec["ok"] = True
            except (OSError, subprocess.SubprocessError) as e:
                rec.update(ok=False, error=_error(e))
            finally:
                if mounts_below(mnt) and tool == "pyunion":
                    with contextlib.suppress(OSError, subprocess.SubprocessError):
                        _run([*py, "umount-image", str(mnt)], 60, env=env)
                unmount_below(mnt)
                if not mounts_below(mnt) and mnt.exists():
                    with contextlib.suppress(OSError):
                        mnt.rmdir()
            samples.append(rec)
        log(f"rep {rep + 1}/{args.reps} deep-stack " + "  ".join(
            f"{s['tool']} {s['layers']}: cold {s['cold_s']:.2f}s warm {s['warm_s']:.2f}s"
            if s["ok"] else f"{s['tool']} {s['layers']} FAILED"
            for s in samples if s["rep"] == rep))
    reference = listings.get(("pyunion", DEEP_LAYERS[-1]))
    same = {f"{t} {n}": listings[t, n] == reference for t, n in listings}
    hi, lo = DEEP_LAYERS
    per: dict[str, dict[str, Any]] = {}
    for tool in tools:
        per[tool] = {}
        for n in DEEP_LAYERS:
            mine = [s for s in samples if s["tool"] == tool and s["layers"] == n and s["ok"]]
            errors = [s["error"] for s in samples
                      if s["tool"] == tool and s["layers"] == n and not s["ok"]]
            per[tool][str(n)] = {p: _summary([s[f"{p}_s"] for s in mine], errors)
                                 for p in ("cold", "warm", "mount", "umount")}
            per[tool][str(n)]["entries"] = mine[0]["entries"] if mine else None
        per[tool]["ratios"] = {p: _ratio(per[tool][str(hi)][p]["median_s"],
                                         per[tool][str(lo)][p]["median_s"])
                               for p in ("cold", "warm", "mount")}
        per[tool]["per_rep"] = {p: _per_rep({(s["rep"], str(s["layers"])): s[f"{p}_s"]
                                             for s in samples if s["tool"] == tool and s["ok"]},
                                            str(hi), str(lo))
                                for p in ("cold", "warm", "mount")}
    return {"ok": True, "expected_entries": len(dirs) + len(files),
            "same_tree_as_pyunion_2": same, "load_s": {str(n): s for n, s in loads.items()},
            "tools": per, "samples": samples}


# ---------------------------------------------------------------------------------------------
# pull


def build_plus(debian_layout: Path, out: Path) -> None:
    """The Debian image with one more small layer, as an OCI layout (Debian blobs linked)."""
    index = json.loads((debian_layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                == images.OCI_TAG)
    manifest = json.loads(images._blob(debian_layout, desc["digest"]).read_text())
    config = json.loads(images._blob(debian_layout, manifest["config"]["digest"]).read_text())
    (out / "blobs" / "sha256").mkdir(parents=True)
    for layer in manifest["layers"]:
        src = images._blob(debian_layout, layer["digest"])
        dst = out / "blobs" / "sha256" / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("etc", "usr", "usr/local", "usr/local/share", "usr/local/share/bench"):
            _tar_entry(tar, d, None)
        _tar_entry(tar, "etc/bench-plus", b"the second image\n")
        _tar_entry(tar, "usr/local/share/bench/data.txt", _text_block(8192))
    _write_image(out, [buf.getvalue()], "bench/debian", "plus", base_config=config,
                 base_layers=manifest["layers"])


def _skopeo_push(layout: Path, tag: str, dest: str, timeout: float) -> None:
    _run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
          f"oci:{layout}:{tag}", f"docker://{dest}"], timeout)


def _pull_cleanup(podmans: list[Podman], cells: list[Path]) -> list[str]:
    problems: list[str] = []
    for pm in podmans:
        problems += pm.close()
    for cell in cells:
        problems += unmount_below(cell)
        note = cleanup_cell(cell)
        if note:
            problems.append(note)
    return problems


def run_pull(args: argparse.Namespace, run_dir: Path, env: dict[str, str], log: Log,
             deferred: list[Callable[[], list[str]]]) -> dict[str, Any]:
    """Its stores are deleted by ``deferred`` (see DEFERRED); the registry is stopped here."""
    debian, meta = images.ensure_image(args.cache_dir, log)
    registry = Registry(run_dir / "registry")
    podman_why = Podman.missing()
    podmans: list[Podman] = []  # a new, empty storage for each repetition
    cells: list[Path] = []
    deferred.append(lambda: _pull_cleanup(podmans, cells))
    try:
        registry.start()
        plus = run_dir / "plus-oci"
        build_plus(debian / "oci", plus)
        first = f"{registry.host}/bench/debian:bookworm"
        second = f"{registry.host}/bench/debian:plus"
        t0 = time.perf_counter()
        _skopeo_push(debian / "oci", images.OCI_TAG, first, args.timeout)
        _skopeo_push(plus, "plus", second, args.timeout)
        log(f"pull: registry at {registry.host}, {meta['what']} + the plus image pushed "
            f"(skopeo) in {time.perf_counter() - t0:.1f}s")
        m1, size1 = registry.manifest("bench/debian", "bookworm")
        m2, size2 = registry.manifest("bench/debian", "plus")
        have = {d["digest"] for d in m1["layers"]}
        new = [d for d in m2["layers"] if d["digest"] not in have]
        expected = {
            "first": size1 + m1["config"]["size"] + sum(d["size"] for d in m1["layers"]),
            "second": size2 + m2["config"]["size"] + sum(d["size"] for d in new),
            "second_new_layers": len(new), "second_new_layer_bytes": sum(d["size"] for d in new),
        }
        tools = ["pyunion", "podman"] + ([] if _quick(args) else ["skopeo+umoci"])
        skip: dict[str, str] = {}
        if podman_why:
            skip["podman"] = podman_why
        samples: list[dict[str, Any]] = []
        for rep in range(args.reps):
            shift = rep % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                if tool in skip:
                    samples.append({"tool": tool, "rep": rep, "ok": False, "error": skip[tool]})
                    continue
                cell = run_dir / f"pull-r{rep}-{tool.replace('+', '-')}"
                cell.mkdir()
                cells.append(cell)
                podman = None
                try:
                    if tool == "podman":
                        podman = Podman(podman_base(args.cache_dir))
                        podmans.append(podman)
                    recs = _pull_sample(tool, cell, registry, first, second, env, podman,
                                        args.timeout)
                except (OSError, subprocess.SubprocessError, Failed) as e:
                    recs = [{"image": "first", "ok": False, "error": _error(e)}]
                    skip[tool] = f"failed in an earlier repetition: {_error(e)}"
                for r in recs:
                    r.update(tool=tool, rep=rep)
                samples += recs
            log(f"rep {rep + 1}/{args.reps} pull " + "  ".join(
                f"{s['tool']} {s['image']} {s['seconds']:.2f}s ({s['bytes'] / 2**20:.2f} MiB)"
                if s["ok"] else f"{s['tool']} {s['image']} FAILED"
                for s in samples if s["rep"] == rep))
    finally:
        registry.stop()
    out: dict[str, Any] = {}
    for tool in tools:
        out[tool] = {}
        for image in ("first", "second"):
            mine = [s for s in samples if s["tool"] == tool and s.get("image") == image]
            if not mine and image == "second":
                continue
            ok = [s for s in mine if s["ok"]]
            out[tool][image] = _summary(
                [s["seconds"] for s in ok], [s["error"] for s in mine if not s["ok"]],
                cpu=[s["cpu_s"] for s in ok], sync_after=[s["sync_after_s"] for s in ok])
            out[tool][image]["bytes"] = [s["bytes"] for s in ok]
            out[tool][image]["blob_manifest_bytes"] = [s["blob_manifest_bytes"] for s in ok]
            if tool == "skopeo+umoci":
                for part in ("skopeo", "umoci"):
                    out[tool][image][f"{part}_median_s"] = \
                        statistics.median(s[f"{part}_s"] for s in ok) if ok else None
    py1 = out["pyunion"]["first"]["median_s"]
    ratios = {f"pyunion/{t}": _ratio(py1, out[t]["first"]["median_s"]) for t in tools[1:]}
    firsts = {(s["rep"], s["tool"]): s["seconds"] for s in samples
              if s["ok"] and s.get("image") == "first"}
    paired = {f"pyunion/{t}": _per_rep(firsts, "pyunion", t) for t in tools[1:]}
    for tool in ("pyunion", "podman"):
        if "second" in out[tool]:
            ratios[f"{tool} second/first"] = _ratio(out[tool]["second"]["median_s"],
                                                    out[tool]["first"]["median_s"])
            both = [s2["seconds"] / s1["seconds"] for s1 in samples for s2 in samples
                    if s1["tool"] == s2["tool"] == tool and s1["rep"] == s2["rep"]
                    and s1.get("image") == "first" and s2.get("image") == "second"
                    and s1["ok"] and s2["ok"]]
            out[tool]["second"]["second_over_first_per_rep"] = both
            paired[f"{tool} second/first"] = statistics.median(both) if both else None
    return {"ok": True, "image": meta["what"], "image_fallback": meta.get("fallback_because"),
            "registry": f"docker-registry on {registry.host}",
            "expected_bytes": expected, "tools": out, "ratios": ratios, "per_rep": paired,
            "samples": samples}


def _pull_sample(tool: str, cell: Path, registry: Registry, first: str, second: str,
                 env: dict[str, str], podman: Podman | None, timeout: float
                 ) -> list[dict[str, Any]]:
    recs = []
    for image, ref in (("first", first), ("second", second)):
        if tool == "skopeo+umoci" and image == "second":
            break
        os.sync()
        mark = registry.mark()
        rec: dict[str, Any] = {"image": image, "ok": True}
        if tool == "pyunion":
            cmd = [*pyunion_cmd(), "--root", str(cell / "store"), "pull", "-q", "--insecure", ref]
            rec["seconds"], rec["cpu_s"], _ = timed(cmd, timeout, env=env, cwd=REPO)
        elif tool == "podman":
            assert podman is not None
            cmd = podman.cmd("pull", "-q", "--tls-verify=false", ref)
            rec["seconds"], rec["cpu_s"], _ = timed(cmd, timeout, env=podman.env)
        else:
            s1, c1, _ = timed(["skopeo", "--insecure-policy", "copy", "-q",
                               "--src-tls-verify=false", f"docker://{ref}",
                               f"oci:{cell / 'oci'}:{image}"], timeout)
            s2, c2, _ = timed(["umoci", "unpack", "--image", f"{cell / 'oci'}:{image}",
                               str(cell / "bundle")], timeout)
            rec.update(seconds=s1 + s2, cpu_s=c1 + c2, skopeo_s=s1, umoci_s=s2)
        rec["sync_after_s"] = timed_sync()
        got = registry.transfers(mark)
        rec["bytes"], rec["transfers"] = got["bytes"], got
        rec["blob_manifest_bytes"] = sum(got["by_kind"].get(k, {}).get("bytes", 0)
                                         for k in ("blob", "manifest"))
        recs.append(rec)
    return recs


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    """The selected rows; ``args``: reps, timeout, cache_dir. Cleans up what it started."""
    out: dict[str, Any] = {"pyunion": " ".join(pyunion_cmd()), "loadavg": [images._loadavg()],
                           "reps": args.reps}
    env = pyunion_env(args.cache_dir)
    root = run_dir / "containers"
    root.mkdir(parents=True, exist_ok=True)
    missing = pyunion_missing()
    bb: Busybox | None = None
    problems: list[str] = []
    deferred: list[Callable[[], list[str]]] = []  # deletions, after every row (DEFERRED)
    try:
        for name in names:
            if name == PULL2 and PULL in names:
                continue  # measured with PULL
            if missing:
                out[name] = {"ok": False, "error": missing}
                continue
            log(f"{name}:")
            try:
                if name in (RUN, COMMIT) and bb is None:
                    bb = Busybox(root / "busybox", env, args.timeout, args.cache_dir)
                if name == RUN:
                    assert bb is not None
                    out[name] = run_latency(args, bb, log)
                elif name == COMMIT:
                    assert bb is not None
                    out[name] = run_commit(args, bb, root, log, deferred)
                elif name == DEEP:
                    out[name] = run_deep(args, root, env, log)
                else:
                    res = run_pull(args, root, env, log, deferred)
                    out[PULL] = res
                    if PULL2 in names:
                        out[PULL2] = {"ok": res["ok"], "see": PULL}
            except (OSError, RuntimeError, ValueError, LookupError, Failed,
                    subprocess.SubprocessError) as e:
                out[PULL if name == PULL2 else name] = {"ok": False, "error": _error(e)}
                log(f"  FAILED: {_error(e)}")
    finally:
        for cleanup in deferred:
            problems += cleanup()
        if bb is not None:
            problems += bb.close()
        problems += unmount_below(root)
        note = cleanup_cell(root)
        if note:
            problems.append(note)
    out["names"] = names
    out["cleanup_lazy_unmounts"] = problems
    out["loadavg"].append(images._loadavg())
    return out


# ---------------------------------------------------------------------------------------------
# tables


def _verdict(value: float | None, target: float) -> str:
    return "" if value is None else "ok" if value <= target else "MISSED"


def _row(label: str, v: dict[str, Any] | None, ratio: float | None = None,
         target: float | None = None, extra: str = "", paired: float | None = None
         ) -> list[str]:
    if v is None:
        return [label, "-", "-", "-", "", "", "", "", extra]
    shown = ratio is not None or target is not None
    return [label, _fmt(v["median_s"], ".3f"), _fmt(v["min_s"], ".3f"), str(v["n"]),
            _fmt(ratio, ".2f") if shown else "", _fmt(paired, ".2f") if shown else "",
            f"<= {target}" if target is not None else "",
            _verdict(ratio, target) if target is not None else "", extra]


def _failed_lines(tools: dict[str, Any]) -> list[str]:
    out = []
    for name, v in tools.items():
        for item in ([v] if "error" in v else v.values()):
            if isinstance(item, dict) and item.get("error"):
                out.append(f"  failed: {name}: {item['error']}")
                break
    return out


HEADER = ["command", "median", "min", "n", "ratio", "per rep", "target", "", "what"]


def render(res: dict[str, Any]) -> list[str]:
    out = ["", f"container and registry rows: load average {res['loadavg'][0]} before, "
           f"{res['loadavg'][-1]} after; seconds end to end (Python start included), "
           f"median of {res['reps']} repetition(s); ratio: of the medians (the verdict), per "
           "rep: median of the ratios within each repetition; pyunion's bytecode cached"]
    names = res.get("names", [])
    r = res.get(RUN)
    if r:
        out += ["", "run-latency: start a container running `true`, wait, remove it "
                "(busybox-static image)"]
        if not r["ok"]:
            out.append(f"  FAILED: {r['error']}")
        else:
            t, ra, pa = r["tools"], r["ratios"], r["per_round"]
            out.append(_table(HEADER, [
                _row("pyunion run --rm IMG true", t["pyunion"], None, None,
                     "--network host: pyunion mount (daemon) + runc + umount"),
                _row("podman --runtime runc run --rm", t["podman"], ra["pyunion/podman"],
                     TARGETS[RUN], "fuse-overlayfs storage, host net; ratio = pyunion/podman",
                     pa["pyunion/podman"]),
                _row("runc run BUNDLE (floor)", t["runc"], ra["pyunion/runc"], None,
                     "plain directory rootfs; ratio = pyunion/runc", pa["pyunion/runc"]),
                _row("pyunion run --rm IMG true: bridge", t.get("pyunion-bridge"),
                     ra.get("pyunion-bridge/pyunion"), None,
                     "root's default network, in a private netns; ratio = this/host net",
                     pa.get("pyunion-bridge/pyunion")),
                _row("podman run --rm --network bridge", t.get("podman-bridge"),
                     ra.get("pyunion-bridge/podman-bridge"), None,
                     "podman's default (netavark), same netns; ratio = pyunion/podman",
                     pa.get("pyunion-bridge/podman-bridge")),
                _row("  python: import cli.run", t["import-cli"], None, None,
                     "part of pyunion run: the CLI's imports"),
                _row("  python: import fs.daemon", t["import-daemon"], None, None,
                     "part of pyunion run: the mount daemon's imports (trio, pyfuse3)"),
            ]))
            out.append(f"  {r['rounds_per_rep']} rounds per repetition after one warm-up each; "
                       "per rep: median of the ratios within each round; containers left in "
                       f"the store: {r['containers_left']}")
            out += _failed_lines(t)
    c = res.get(COMMIT)
    if c:
        out += ["", "commit: a container's upper with 10,000 new files -> an image layer "
                "(fresh container each repetition)"]
        if not c["ok"]:
            out.append(f"  FAILED: {c['error']}")
        else:
            t, ra, pa = c["tools"], c["ratios"], c["per_rep"]
            out.append(f"{c['files']} files, {c['bytes'] / 2**20:.1f} MiB of text in 100 "
                       "directories, written through the mount, unmounted, synced")
            out.append(_table(HEADER, [
                _row("pyunion commit CTR IMG", t["pyunion"], None, None,
                     "gzip layer + unpacked layer in the store, synced"),
                _row("tar -cf FILE upper (floor)", t["tar"], ra["pyunion/tar"], TARGETS[COMMIT],
                     "ratio = pyunion/tar", pa["pyunion/tar"]),
                _row("tar -czf FILE upper", t["tar-gz"], ra["pyunion/tar-gz"], None,
                     "the gzip a layer needs; ratio = pyunion/this", pa["pyunion/tar-gz"]),
                _row("cp -a upper NEWDIR", t.get("cp"), ra.get("pyunion/cp"), None,
                     "creating the files again, as the store's unpacked layer; "
                     "ratio = pyunion/this" + ("" if "cp" in t else " (not in --quick)"),
                     pa.get("pyunion/cp")),
            ]))
            sync = ", ".join(f"{k} {_fmt(t[k]['sync_after_median_s'], '.2f')} s"
                             for k in ("tar", "tar-gz", "cp") if k in t)
            out.append(f"  a `sync` right after took {sync} (they leave their output in the "
                       "page cache, pyunion syncs; not in the ratios)")
            out += _failed_lines(t)
    d = res.get(DEEP)
    if d:
        out += ["", "deep-stack: `find -printf` walk of a read-only mount of an image, 128 layers "
                "vs 2, same tree"]
        if not d["ok"]:
            out.append(f"  FAILED: {d['error']}")
        else:
            hi, lo = (str(n) for n in DEEP_LAYERS)
            t = d["tools"]
            same = all(d["same_tree_as_pyunion_2"].values())
            out.append(f"{t['pyunion'][hi]['entries']} entries (expected "
                       f"{d['expected_entries']}); every listing the same as pyunion's 2-layer "
                       f"one: {'yes' if same else 'NO: ' + str(d['same_tree_as_pyunion_2'])}; "
                       f"`pyunion load` took {d['load_s'][hi]:.1f} s (128) and "
                       f"{d['load_s'][lo]:.1f} s (2), untimed")
            labels = {"pyunion": "pyunion mount-image", "kernel": "kernel overlay (context)",
                      "fuse-overlayfs": "fuse-overlayfs (context)"}
            what = {"cold": "after drop_caches", "warm": "the same walk again",
                    "mount": "mount until ready"}
            rows = []
            for tool, v in t.items():
                for p in ("cold", "warm", "mount"):
                    if p == "mount" and tool != "pyunion":
                        continue
                    target = TARGETS[DEEP] if tool == "pyunion" and p != "mount" else None
                    rows.append(_row(f"{labels[tool]}: {p}, 128 layers", v[hi][p],
                                     v["ratios"][p], target, what[p] + "; ratio = 128/2",
                                     v["per_rep"][p]))
                    rows.append(_row(f"{labels[tool]}: {p}, 2 layers", v[lo][p]))
            out.append(_table(HEADER, rows))
            out.append("  the kernel overlay and fuse-overlayfs mount the same layer dirs: what "
                       "128 layers cost any overlay on a cold cache (each layer's directories "
                       "are read from disk)"
                       + ("" if "fuse-overlayfs" in t else "; fuse-overlayfs: not in --quick"))
            out += _failed_lines({f"{tool} {n}": v[n] for tool, v in t.items()
                                  for n in (hi, lo)})
    p = res.get(PULL)
    if p:
        out += ["", "pull: from a local registry (loopback, plain HTTP) into an empty store"]
        if not p["ok"]:
            out.append(f"  FAILED: {p['error']}")
        else:
            t, ra, exp, pa = p["tools"], p["ratios"], p["expected_bytes"], p["per_rep"]
            out.append(f"{p['image']} ({exp['first'] / 2**20:.1f} MiB), {p['registry']}")
            if p.get("image_fallback"):
                out.append(f"NOTE: not Debian: debootstrap failed ({p['image_fallback']}), so "
                           "this is a busybox-static rootfs")
            if PULL in names:
                sk = t["skopeo+umoci"]["first"] if "skopeo+umoci" in t else None
                parts = "not in --quick" if sk is None else (
                    f"skopeo {_fmt(sk.get('skopeo_median_s'), '.2f')} s + umoci "
                    f"{_fmt(sk.get('umoci_median_s'), '.2f')} s")
                out.append(_table(HEADER, [
                    _row("pyunion pull", t["pyunion"]["first"], None, None,
                         "fetch, verify, unpack, sync"),
                    _row("podman pull", t["podman"]["first"], ra["pyunion/podman"],
                         TARGETS[PULL], "ratio = pyunion/podman", pa["pyunion/podman"]),
                    _row("skopeo copy + umoci unpack", sk, ra.get("pyunion/skopeo+umoci"),
                         None, parts + "; ratio = pyunion/this", pa.get("pyunion/skopeo+umoci")),
                ]))
                out += _failed_lines(t)
            if PULL2 in names:
                out += ["", "pull-second: the same image + one small layer, into the store "
                        "that has the first; bytes = sent by the registry"]
                rows = []
                want = exp["second"]
                for tool in ("pyunion", "podman"):
                    s = t[tool].get("second")
                    if s is None:
                        continue
                    ratio = ra.get(f"{tool} second/first")
                    got = max(s["blob_manifest_bytes"]) if s["blob_manifest_bytes"] else None
                    size = "-" if got is None else f"{got:,} B of blobs+manifests (" + (
                        "only the new ones" if got <= want else "MORE than the new ones") + ")"
                    rows.append(_row(f"{tool} pull (second)", s, ratio,
                                     TARGETS[PULL2] if tool == "pyunion" else None,
                                     f"ratio = second/first; {size}",
                                     pa.get(f"{tool} second/first")))
                out.append(_table(HEADER, rows))
                out.append(f"  new layer {exp['second_new_layer_bytes']:,} B + config + "
                           f"manifest = {want:,} B; first pull {exp['first']:,} B")
            sync = ", ".join(f"{k} {_fmt(t[k]['first']['sync_after_median_s'], '.2f')} s"
                             for k in t if t[k]["first"]["n"])
            out.append(f"  a `sync` right after a first pull took {sync} (not in the ratios)")
    if res.get("cleanup_lazy_unmounts"):
        out.append(f"  cleanup: {res['cleanup_lazy_unmounts']}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args("containers", __doc__, NAMES, argv, quick_help="1 repetition",
                                 reps_help="repetitions (default 3; --quick: 1)",
                                 root_because="containers, mounts, drop_caches")
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    def unmount_and_remove(run_dir: Path) -> None:
        unmount_below(run_dir)
        cleanup_cell(run_dir)

    res = standalone.run_in_fresh_dir(args, run, unmount_and_remove)
    return standalone.report(args, "container benchmark", "containers", res, render)

if __name__ == "__main__":
    sys.exit(main())
