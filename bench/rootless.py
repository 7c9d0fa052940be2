"""Rootless rows: pyunion as an ordinary user against rootless podman (fuse-overlayfs storage).

The user: ``pyunion-bench``, a system user without a home or login shell, reused if it exists,
else created (``useradd --system``); its subordinate ids (``/etc/subuid``, ``/etc/subgid``) are
reused if it has a range, else a free range of 65,536 ids is added (``usermod --add-subuids``,
``--add-subgids``, starting after every range already there, at least 100000). The report
says what was created or reused. Nothing else on the machine is changed.

Every command runs as that user (``setpriv``, the user's groups) in one private mount namespace
(``unshare -m --propagation private``, held by a ``sleep`` that this module starts and kills;
each command joins it with ``nsenter -m``), in which:

- ``/dev`` is a tmpfs with 0666 nodes (null, zero, full, random, urandom, tty, fuse) and a
  ``/dev/shm``: a machine whose ``/dev/fuse`` is root's 0600 (this one) lets no user mount a
  FUSE filesystem; udev normally makes it 0666;
- ``/etc/fuse.conf`` is a copy of the machine's with ``user_allow_other`` (bind-mounted over
  it): pyunion maps the container's ids 1-65535 onto the subordinate ids only with it (see
  unionfs/image/container/idmap.py); rootless podman does not need it;
- ``/`` is made shared (inside the namespace only), as rootless podman expects.

The user's home, ``XDG_RUNTIME_DIR`` and ``XDG_DATA_HOME`` (pyunion's store) are in a new
directory ``/var/tmp/pyub-XXXXXXXX`` (a short path: with a longer runtime dir rootless ``podman
run`` cannot attach to the container and waits 20 s for its exit), deleted at the end; its
``.config/containers/storage.conf`` is ``driver = "overlay"``, ``mount_program =
"/usr/bin/fuse-overlayfs"`` and a graphroot in that directory;
``containers.conf`` sets runtime runc, ``cgroup_manager = "cgroupfs"`` and ``events_logger =
"file"`` (also given on podman's command line: ``--runtime runc --cgroup-manager cgroupfs
--events-backend file``): crun refuses this machine's hybrid cgroups, and without a systemd
session there is neither a systemd cgroup manager nor a journal. No resource limits are asked
for (rootless podman gives the container the caller's). pyunion's bytecode is cached for the
user in ``<cache>/rootless-v<VERSION>/pycache``.

Timing: each sample is timed inside the namespace, as the user, by a small Python timer that
runs the command (``perf_counter`` around ``subprocess.run``, output to a file), so neither
side pays for ``nsenter``/``setpriv`` or, for podman, ``podman unshare``. Cold walks: the
cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, as root) after the mount and
before the walk.

Rows (tools alternated, order rotated per round):

- ``rootless-run``: ``pyunion run --rm --network host bench/busybox:latest true`` against
  ``podman --runtime runc ... run --rm --network host bench/busybox:latest true`` (the host's
  network for both: their default, slirp4netns, would add its start). The same
  busybox-static rootfs tar (``bench.images._busybox_rootfs``) is loaded into both: ``pyunion
  import`` and ``podman import``. One warm-up of each, then 5 rounds per repetition (--quick:
  3). Both map the container's ids 0-65535 (root = the user, the rest = its subordinate ids).
- ``rootless-walk``: the Debian bookworm minbase image of the image rows
  (``bench.images.ensure_image``: debootstrap, cached in ``<cache>/images-v1/``; a busybox
  rootfs if debootstrap fails, and the report says so) loaded into both (``pyunion load -i`` and
  ``podman load -i`` of the same OCI archive). Per sample: mount read-only (``pyunion
  mount-image IMAGE DIR`` vs ``podman unshare podman image mount IMAGE``, which rootless podman
  does with ``fuse-overlayfs -o lowerdir=DIFF:EMPTY``), drop caches, ``find MNT -printf '%y %U
  %G %m %s %P\\n'`` cold, the same warm, unmount. Rootless podman's mount exists only in its
  own user and mount namespaces, so its walk runs in ``podman unshare`` (as root of the user's
  namespace: the user's uid), pyunion's as the user; 2 samples per repetition. The first
  listings are compared (types and paths; owners and modes are counted separately): the
  user cannot enter the image's 0700 root-owned directories through pyunion's mount (find
  reports them and exits 1; that is counted, not a failure), and rootless podman's storage has
  no device nodes.

``--quick``: 1 repetition (3 run rounds, 2 walks per tool): about 1 minute with the images
cached. ``python -m bench.rootless [--quick]`` runs these rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import images, standalone
from bench.containers import _per_rep, _ratio, _row, _summary
from bench.images import _error, _rmtree, pyunion_cmd
from bench.implementations import drop_caches, mounts_below
from bench.report import _table

VERSION = 1
RUN, WALK = "rootless-run", "rootless-walk"
NAMES = [RUN, WALK]
TARGETS = {RUN: 1.0, WALK: 1.0}  # pyunion / rootless podman, at most
USER = "pyunion-bench"
SUB_COUNT = 65_536
RUN_ROUNDS = 5  # per repetition (--quick: 3)
WALK_ROUNDS = 2  # walks of each tool per repetition
BUSYBOX = "bench/busybox:latest"
FIND_FORMAT = "%y %U %G %m %s %P\\n"
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0), ("fuse", 10, 229))
PODMAN_GLOBAL = ["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
# Runs argv[3:] with stdout to argv[1], stderr to argv[2]; prints seconds and exit status.
TIMER = (
    "import json, subprocess, sys, time\n"
    "with open(sys.argv[1], 'wb') as out, open(sys.argv[2], 'wb') as err:\n"
    "    t0 = time.perf_counter()\n"
    "    rc = subprocess.run(sys.argv[3:], stdout=out, stderr=err,"
    " stdin=subprocess.DEVNULL).returncode\n"
    "    t = time.perf_counter() - t0\n"
    "print(json.dumps({'s': t, 'rc': rc}))\n"
)

Log = Callable[[str], None]


class Failed(Exception):
    """Setup failed."""


def _quick(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quick", False))


def _plain(cmd: list[str], timeout: float = 120.0) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise Failed(f"{' '.join(cmd[:3])}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout


# ---------------------------------------------------------------------------------------------
# the user


def _ranges(path: str) -> list[tuple[str, int, int]]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _own_range(path: str, pw: pwd.struct_passwd) -> tuple[int, int] | None:
    for owner, first, count in _ranges(path):
        if owner in (pw.pw_name, str(pw.pw_uid)) and count >= SUB_COUNT:
            return first, count
    return None


def ensure_user(log: Log) -> dict[str, Any]:
    """The bench user with subordinate ids: reused, or created (idempotent)."""
    done: list[str] = []
    try:
        pw = pwd.getpwnam(USER)
        done.append(f"user {USER} (uid {pw.pw_uid}) reused")
    except KeyError:
        _plain(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                "/nonexistent", "--shell", "/usr/sbin/nologin", USER])
        pw = pwd.getpwnam(USER)
        done.append(f"user {USER} (uid {pw.pw_uid}) created (useradd --system)")
    missing = [p for p in ("/etc/subuid", "/etc/subgid") if _own_range(p, pw) is None]
    if missing:
        start = max([100_000] + [first + count for p in ("/etc/subuid", "/etc/subgid")
                                 for _, first, count in _ranges(p)])
        span = f"{start}-{start + SUB_COUNT - 1}"
        cmd = ["usermod"]
        if "/etc/subuid" in missing:
            cmd += ["--add-subuids", span]
        if "/etc/subgid" in missing:
            cmd += ["--add-subgids", span]
        _plain([*cmd, USER])
        done.append(f"subordinate ids {span} added to {' and '.join(missing)}")
    uids, gids = _own_range("/etc/subuid", pw), _own_range("/etc/subgid", pw)
    if uids is None or gids is None:
        raise Failed(f"no subordinate ids for {USER} after usermod")
    if not missing:
        done.append(f"subordinate ids {uids[0]}-{sum(uids) - 1} reused")
    log("rootless: " + "; ".join(done))
    return {"name": USER, "uid": pw.pw_uid, "gid": pw.pw_gid, "subuid": list(uids),
            "subgid": list(gids), "setup": done}


# ---------------------------------------------------------------------------------------------
# the namespace and the user's environment


class Session:
    """A private mount namespace (held by a ``sleep`` we start) and the user's directories."""

    def __init__(self, cache: Path, user: dict[str, Any], timeout: float) -> None:
        self.user, self.timeout = user, timeout
        # a short path: with the user's runtime dir at /var/tmp/pyunion-bench/rootless-XXXXXXXX
        # /run (41 bytes), rootless `podman run` cannot attach to the container (a socket path
        # limit) and waits 20 s for its exit; /var/tmp/pyub-XXXXXXXX/run works
        self.base = Path(tempfile.mkdtemp(prefix="pyub-", dir="/var/tmp"))
        self.home = self.base / "home"
        self.runtime = self.base / "run"
        self.graph = self.base / "g"
        self.out = self.base / "out"
        self.holder: subprocess.Popen[bytes] | None = None
        self.pycache = cache / f"rootless-v{VERSION}" / "pycache"
        uid, gid = user["uid"], user["gid"]
        for d in (self.pycache, self.home / ".config/containers", self.runtime, self.out):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.base, self.home, self.home / ".config",
                  self.home / ".config/containers", self.runtime, self.out, self.pycache):
            os.chown(d, uid, gid)
        self.base.chmod(0o755)
        self.runtime.chmod(0o700)
        conf = self.home / ".config/containers"
        (conf / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{self.graph}"\n'
            '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n')
        (conf / "containers.conf").write_text(
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n')
        for f in ("storage.conf", "containers.conf"):
            os.chown(conf / f, uid, gid)
        try:
            fuse_conf = Path("/etc/fuse.conf").read_text()
        except OSError:
            fuse_conf = ""
        (self.base / "fuse.conf").write_text(fuse_conf.rstrip("\n") + "\nuser_allow_other\n")
        (self.base / "timer.py").write_text(TIMER)
        self.env = {
            "HOME": str(self.home), "USER": USER, "LOGNAME": USER,
            "XDG_RUNTIME_DIR": str(self.runtime), "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONPYCACHEPREFIX": str(self.pycache), "LANG": "C.UTF-8",
        }

    def start(self) -> None:
        mk = " && ".join(f"mknod -m 666 /dev/{n} c {a} {b}" for n, a, b in DEVICES)
        setup = ("mount -t tmpfs -o mode=755 pyunion-bench-dev /dev && " + mk
                 + " && mkdir /dev/shm && mount -t tmpfs -o mode=1777 pyunion-bench-shm /dev/shm"
                 f" && mount --bind {self.base}/fuse.conf /etc/fuse.conf"
                 " && mount --make-rshared / && echo ready && exec sleep infinity")
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", setup],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().decode().strip()
        if line != "ready":
            err = self.holder.stderr.read().decode() if self.holder.stderr else ""
            self.holder.kill()
            self.holder.wait()
            self.holder = None
            raise Failed(f"private namespace: {err.strip()[-300:] or 'no ready line'}")

    def as_user(self, cmd: list[str]) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--",
                "setpriv", f"--reuid={self.user['uid']}", f"--regid={self.user['gid']}",
                "--init-groups", "env", "-i", *(f"{k}={v}" for k, v in self.env.items()), *cmd]

    def run(self, cmd: list[str], timeout: float | None = None, check: bool = True
            ) -> tuple[int, str, str]:
        """``cmd`` as the user in the namespace; output through files (a daemon it starts
        may keep them open)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.as_user(cmd), stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, cwd="/", start_new_session=True)
            try:
                proc.wait(timeout=timeout or self.timeout)
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if check and proc.returncode != 0:
            raise Failed(f"{' '.join(cmd[:4])}: exit {proc.returncode}: {e.strip()[-300:]}")
        return proc.returncode, o, e

    def timed(self, cmd: list[str], name: str = "last", wrap: list[str] | None = None,
              ok_codes: tuple[int, ...] = (0,)) -> tuple[float, Path, str]:
        """Seconds of ``cmd`` timed inside the namespace (by the timer, itself run after
        ``wrap``, e.g. ``podman unshare``); its stdout file and its stderr."""
        out, err = self.out / f"{name}.out", self.out / f"{name}.err"
        timer = [sys.executable, str(self.base / "timer.py"), str(out), str(err), *cmd]
        _, stdout, stderr = self.run([*(wrap or []), *timer])
        try:
            res = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise Failed(f"timer: {stderr.strip()[-300:]}") from None
        err_text = err.read_text(errors="replace") if err.exists() else ""
        if res["rc"] not in ok_codes:
            raise Failed(f"{' '.join(cmd[:4])}: exit {res['rc']}: {err_text.strip()[-300:]}")
        return float(res["s"]), out, err_text

    def namespace_mounts(self) -> list[str]:
        """Mount points below our directory in the namespace (pyunion's mounts)."""
        if self.holder is None:
            return []
        prefix = str(self.base) + "/"
        points = []
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.holder.pid}/mountinfo").read_text().splitlines():
                point = line.split()[4].encode().decode("unicode_escape")
                if point.startswith(prefix):
                    points.append(point)
        return points

    def close(self) -> list[str]:
        """Stops what podman and pyunion left running, the namespace; deletes the directory.
        Returns problems."""
        problems: list[str] = []
        if self.holder is not None:
            if self.graph.exists():
                for cmd in (["podman", *PODMAN_GLOBAL, "rm", "-a", "-f", "-t", "0"],
                            ["podman", *PODMAN_GLOBAL, "image", "umount", "-a", "-f"]):
                    with contextlib.suppress(OSError, subprocess.SubprocessError, Failed):
                        self.run(cmd, 60, check=False)
            for point in sorted(self.namespace_mounts(), key=len, reverse=True):
                with contextlib.suppress(OSError, subprocess.SubprocessError, Failed):
                    self.run(["fusermount3", "-u", point], 30, check=False)
            for point in sorted(self.namespace_mounts(), key=len, reverse=True):
                subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--",
                                "umount", "-l", point], capture_output=True)
                problems.append(f"lazy unmount in the namespace: {point}")
        pause = self.runtime / "libpod/tmp/pause.pid"  # rootless podman's pause process
        with contextlib.suppress(OSError, ValueError):
            pid = int(pause.read_text().strip())
            if Path(f"/proc/{pid}").stat().st_uid == self.user["uid"]:
                os.kill(pid, signal.SIGKILL)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None
        # daemons still running for our directory (fuse-overlayfs, conmon: ours, by its path)
        time.sleep(0.2)
        for pid in _pids_mentioning(str(self.base)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            problems.append(f"killed a leftover process {pid}")
        if mounts_below(self.base):
            problems.append(f"left {self.base}: mounted {mounts_below(self.base)}")
        else:
            _rmtree(self.base)
        return problems


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


# ---------------------------------------------------------------------------------------------
# images in both


def _busybox_tar(path: Path) -> None:
    rootfs = path.with_suffix(".rootfs")
    images._busybox_rootfs(rootfs)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(p), str(p.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    _rmtree(rootfs)


class Podman:
    def __init__(self, s: Session) -> None:
        self.s = s

    def cmd(self, *args: str) -> list[str]:
        return ["podman", *PODMAN_GLOBAL, *args]

    def check(self) -> dict[str, Any]:
        """podman's view of its setup (driver, mount program, cgroups, runtime); raises if
        rootless podman does not work here."""
        fmt = ("{{.Store.GraphDriverName}}|{{json .Store.GraphOptions}}|"
               "{{.Host.CgroupManager}}|{{.Host.CgroupsVersion}}|{{.Host.OCIRuntime.Name}}|"
               "{{.Host.Security.Rootless}}|{{.Version.Version}}")
        _, out, _ = self.s.run(self.cmd("info", "--format", fmt))
        driver, options, cgm, cgv, runtime, rootless, version = out.strip().split("|")
        if driver != "overlay" or "fuse-overlayfs" not in options:
            raise Failed(f"podman's storage is {driver} {options}, not overlay + fuse-overlayfs")
        return {"version": version, "driver": driver, "graph_options": json.loads(options),
                "cgroup_manager": cgm, "cgroups": cgv, "runtime": runtime,
                "rootless": rootless}


def _describe_failure(e: BaseException) -> str:
    text = _error(e) if not isinstance(e, Failed) else str(e)
    return " ".join(text.split())[:300]


# ---------------------------------------------------------------------------------------------
# rows


def run_latency(args: argparse.Namespace, s: Session, podman_ok: bool, log: Log
                ) -> dict[str, Any]:
    pm = Podman(s)
    tar = s.base / "busybox.tar"
    _busybox_tar(tar)
    os.chown(tar, s.user["uid"], s.user["gid"])
    py = pyunion_cmd()
    s.run([*py, "import", "-q", "-c", 'CMD ["/bin/sh"]', str(tar), BUSYBOX])
    cmds = {"pyunion": [*py, "run", "--rm", "--network", "host", BUSYBOX, "true"]}
    errors: dict[str, list[str]] = {"pyunion": [], "podman": []}
    if podman_ok:
        try:
            s.run(pm.cmd("import", "-q", "--change", 'CMD ["/bin/sh"]', str(tar), BUSYBOX))
            cmds["podman"] = pm.cmd("run", "--rm", "--network", "host", "--pull", "never",
                                    f"localhost/{BUSYBOX}", "true")
        except (OSError, subprocess.SubprocessError, Failed) as e:
            errors["podman"].append(f"podman import: {_describe_failure(e)}")
    else:
        errors["podman"].append("rootless podman does not work here (see above)")
    # what each side maps: the uid_map inside a container (untimed)
    maps = {}
    show = ["cat", "/proc/self/uid_map"]
    with contextlib.suppress(OSError, subprocess.SubprocessError, Failed):
        maps["pyunion"] = " ".join(s.run([*py, "run", "--rm", "--network", "host", BUSYBOX,
                                          *show])[1].split())
    if "podman" in cmds:
        with contextlib.suppress(OSError, subprocess.SubprocessError, Failed):
            maps["podman"] = " ".join(s.run(cmds["podman"][:-1] + show)[1].split())
    samples: dict[str, list[float]] = {k: [] for k in ("pyunion", "podman")}
    names = list(cmds)
    for name in names:  # warm-up: page cache, bytecode, podman's first-run state
        try:
            s.timed(cmds[name], f"run-{name}")
        except (OSError, subprocess.SubprocessError, Failed) as e:
            errors[name].append(f"warm-up: {_describe_failure(e)}")
    rounds = 3 if _quick(args) else RUN_ROUNDS
    for rep in range(args.reps):
        for k in range(rounds):
            shift = (rep * rounds + k) % len(names)
            for name in names[shift:] + names[:shift]:
                if errors[name]:
                    continue
                try:
                    samples[name].append(s.timed(cmds[name], f"run-{name}")[0])
                except (OSError, subprocess.SubprocessError, Failed) as e:
                    errors[name].append(_describe_failure(e))
        log(f"rep {rep + 1}/{args.reps} rootless-run " + "  ".join(
            f"{n} {statistics.median(samples[n][-rounds:]):.3f}s" if samples[n]
            and not errors[n] else f"{n} FAILED" for n in samples))
    tools = {n: _summary(samples[n], errors[n]) for n in samples}
    paired = _per_rep({(k, n): x for n in ("pyunion", "podman")
                       for k, x in enumerate(samples[n])}, "pyunion", "podman") \
        if len(samples["podman"]) == len(samples["pyunion"]) else None
    left = s.run([*py, "ps", "-a", "-q"], check=False)[1].split()
    return {"ok": bool(samples["pyunion"]), "tools": tools,
            "ratio": _ratio(tools["pyunion"]["median_s"], tools["podman"]["median_s"]),
            "per_round": paired, "rounds_per_rep": rounds, "uid_maps": maps,
            "commands": {n: " ".join(c) for n, c in cmds.items()},
            "containers_left": len(left)}


def _listing(path: Path) -> dict[str, str]:
    """path -> 'type uid gid mode size' from a find -printf listing."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 5)
        if len(parts) == 6:
            out[parts[5]] = " ".join(parts[:5])
    return out


def _compare(py: dict[str, str], pm: dict[str, str]) -> dict[str, Any]:
    only_py, only_pm = sorted(set(py) - set(pm)), sorted(set(pm) - set(py))
    both = set(py) & set(pm)
    kind = [p for p in both if py[p].split()[0] != pm[p].split()[0]]
    owner = [p for p in both if py[p].split()[1:3] != pm[p].split()[1:3]]
    mode = [p for p in both if py[p].split()[3] != pm[p].split()[3]]
    py_owner_kinds: dict[str, int] = {}
    for p in owner:
        k = py[p].split()[0]
        py_owner_kinds[k] = py_owner_kinds.get(k, 0) + 1
    return {"pyunion_entries": len(py), "podman_entries": len(pm),
            "only_pyunion": len(only_py), "only_pyunion_sample": only_py[:10],
            "only_podman": len(only_pm), "only_podman_sample": only_pm[:10],
            "type_differs": len(kind), "owner_differs": len(owner),
            "owner_differs_by_type": py_owner_kinds, "owner_differs_sample": sorted(owner)[:5],
            "mode_differs": len(mode)}


def run_walk(args: argparse.Namespace, s: Session, podman_ok: bool, log: Log
             ) -> dict[str, Any]:
    image_dir, meta = images.ensure_image(args.cache_dir, log)
    archive = image_dir / "image.oci.tar"  # world-readable: both load it as the user
    py = pyunion_cmd()
    pm = Podman(s)
    mnt = s.base / "mnt"
    mnt.mkdir()
    os.chown(mnt, s.user["uid"], s.user["gid"])
    loads: dict[str, float] = {}
    errors: dict[str, list[str]] = {"pyunion": [], "podman": []}
    loads["pyunion"] = s.timed([*py, "load", "-q", "-i", str(archive)], "load-pyunion")[0]
    py_ref = images.ARCHIVE_REF
    pm_ref = ""
    if podman_ok:
        try:
            loads["podman"], out, _ = s.timed(pm.cmd("load", "-q", "-i", str(archive)),
                                              "load-podman")
            loaded = [ln.split(":", 1)[1].strip() for ln in out.read_text().splitlines()
                      if ln.startswith("Loaded image")]
            if not loaded:
                raise Failed(f"podman load printed no image name: {out.read_text()[-200:]}")
            pm_ref = loaded[0].split(",")[0].strip()
        except (OSError, subprocess.SubprocessError, Failed) as e:
            errors["podman"].append(f"podman load: {_describe_failure(e)}")
    else:
        errors["podman"].append("rootless podman does not work here (see above)")
    log(f"rootless-walk: {meta['what']} loaded as the user: " + ", ".join(
        f"{k} {v:.1f}s" for k, v in loads.items()))
    unshare = pm.cmd("unshare")
    find_args = ["-printf", FIND_FORMAT.replace("\\n", "\n")]
    tools = ["pyunion"] + (["podman"] if not errors["podman"] else [])
    samples: list[dict[str, Any]] = []
    listings: dict[str, Path] = {}
    fstype: dict[str, str] = {}
    denied: dict[str, list[str]] = {}
    rounds = WALK_ROUNDS
    for rep in range(args.reps):
        for k in range(rounds):
            shift = (rep * rounds + k) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                rec: dict[str, Any] = {"tool": tool, "rep": rep, "round": k}
                mounted = False
                try:
                    if tool == "pyunion":
                        rec["mount_s"] = s.timed([*py, "mount-image", py_ref, str(mnt)],
                                                 "mount-pyunion")[0]
                        where, wrap = str(mnt), None
                    else:
                        rec["mount_s"], out, _ = s.timed(pm.cmd("image", "mount", pm_ref),
                                                         "mount-podman", wrap=unshare)
                        where, wrap = out.read_text().strip(), unshare
                    mounted = True
                    if tool not in fstype:
                        _, o, _ = s.run([*(wrap or []), "findmnt", "-n", "-o", "FSTYPE,OPTIONS",
                                         "-T", where], check=False)
                        fstype[tool] = o.strip()
                    find = ["find", where, *find_args]
                    drop_caches()
                    rec["cold_s"], out, err = s.timed(find, f"walk-{tool}", wrap=wrap,
                                                      ok_codes=(0, 1))
                    denied[tool] = [ln for ln in err.splitlines() if ln.strip()]
                    if tool not in listings:
                        listings[tool] = out.rename(s.out / f"listing-{tool}")
                    rec["warm_s"] = s.timed(find, f"walk-{tool}", wrap=wrap,
                                            ok_codes=(0, 1))[0]
                    if tool == "pyunion":
                        rec["umount_s"] = s.timed([*py, "umount-image", str(mnt)],
                                                  "umount-pyunion")[0]
                    else:
                        rec["umount_s"] = s.timed(pm.cmd("image", "umount", pm_ref),
                                                  "umount-podman", wrap=unshare)[0]
                    mounted = False
                    rec["ok"] = True
                except (OSError, subprocess.SubprocessError, Failed) as e:
                    rec.update(ok=False, error=_describe_failure(e))
                    errors[tool].append(rec["error"])
                finally:
                    if mounted and tool == "pyunion":
                        s.run([*py, "umount-image", str(mnt)], 60, check=False)
                    elif mounted:
                        s.run([*unshare, *pm.cmd("image", "umount", "-f", pm_ref)], 60,
                              check=False)
                samples.append(rec)
        log(f"rep {rep + 1}/{args.reps} rootless-walk " + "  ".join(
            f"{r['tool']}: cold {r['cold_s']:.2f}s warm {r['warm_s']:.2f}s"
            if r["ok"] else f"{r['tool']} FAILED" for r in samples if r["rep"] == rep))
    per: dict[str, Any] = {}
    for tool in ("pyunion", "podman"):
        ok = [r for r in samples if r["tool"] == tool and r["ok"]]
        per[tool] = {p: _summary([r[f"{p}_s"] for r in ok], errors[tool])
                     for p in ("cold", "warm", "mount", "umount")}
    ratios = {p: _ratio(per["pyunion"][p]["median_s"], per["podman"][p]["median_s"])
              for p in ("cold", "warm", "mount")}
    paired = {p: _per_rep({((r["rep"], r["round"]), r["tool"]): r[f"{p}_s"]
                           for r in samples if r["ok"]}, "pyunion", "podman")
              for p in ("cold", "warm", "mount")}
    compared = _compare(_listing(listings["pyunion"]), _listing(listings["podman"])) \
        if len(listings) == 2 else None
    return {"ok": any(r["ok"] for r in samples if r["tool"] == "pyunion"),
            "image": meta["what"], "image_fallback": meta.get("fallback_because"),
            "image_entries": meta["layer"]["entries"], "load_s": loads,
            "refs": {"pyunion": py_ref, "podman": pm_ref}, "fstype": fstype,
            "tools": per, "ratios": ratios, "per_round": paired, "compared": compared,
            "find_stderr": {k: v[:5] for k, v in denied.items()},
            "find_stderr_lines": {k: len(v) for k, v in denied.items()},
            "walks_per_rep": rounds, "samples": samples}


def run(args: argparse.Namespace, names: list[str], run_dir: Path, log: Log) -> dict[str, Any]:
    """The selected rows; ``args``: reps, timeout, cache_dir. Cleans up what it started.
    ``run_dir`` is not used: the user's directory must have a short path (podman)."""
    out: dict[str, Any] = {"pyunion": " ".join(pyunion_cmd()), "loadavg": [images._loadavg()],
                           "reps": args.reps, "names": names}
    s: Session | None = None
    problems: list[str] = []
    try:
        out["user"] = ensure_user(log)
        s = Session(args.cache_dir, out["user"], args.timeout)
        s.start()
        out["podman"] = {"ok": False}
        why = next((f"{t} is not installed" for t in ("podman", "runc", "fuse-overlayfs",
                                                      "newuidmap", "newgidmap")
                    if not _which(t)), None)
        if why is None:
            try:
                conf = s.home / ".config/containers"
                out["podman"] = {"ok": True, **Podman(s).check(),
                                 "config": {f: (conf / f).read_text()
                                            for f in ("storage.conf", "containers.conf")},
                                 "global_options": PODMAN_GLOBAL}
            except (OSError, subprocess.SubprocessError, Failed, ValueError) as e:
                why = _describe_failure(e)
        if why:
            out["podman"]["error"] = why
            log(f"rootless podman does not work here: {why}")
        else:
            p = out["podman"]
            program = p["graph_options"].get("overlay.mount_program", {}).get("Executable")
            log(f"rootless podman {p['version']}: {p['driver']} with mount_program {program}, "
                f"{p['runtime']}, cgroups {p['cgroups']} ({p['cgroup_manager']})")
        _, info, _ = s.run([*pyunion_cmd(), "info"], check=False)
        out["pyunion_info"] = [ln for ln in info.splitlines()
                               if ln.startswith(("mode:", "container ids:", "dev fuse:"))]
        for name in names:
            log(f"{name}:")
            try:
                row = run_latency if name == RUN else run_walk
                out[name] = row(args, s, out["podman"]["ok"], log)
            except (OSError, RuntimeError, ValueError, LookupError, Failed,
                    subprocess.SubprocessError) as e:
                out[name] = {"ok": False, "error": _describe_failure(e)}
                log(f"  FAILED: {out[name]['error']}")
    except (OSError, Failed, subprocess.SubprocessError) as e:
        out["error"] = _describe_failure(e)
        log(f"rootless rows FAILED: {out['error']}")
    finally:
        if s is not None:
            problems += s.close()
    out["cleanup"] = problems
    out["loadavg"].append(images._loadavg())
    return out


def _which(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK)
               for d in "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".split(":"))


# ---------------------------------------------------------------------------------------------
# tables


HEADER = ["command", "median", "min", "n", "ratio", "per round", "target", "", "what"]


def render(res: dict[str, Any]) -> list[str]:
    out = ["", f"rootless rows (as user {USER}, in a private mount namespace with a 0666 "
           f"/dev/fuse): load average {res['loadavg'][0]} before, {res['loadavg'][-1]} after; "
           "seconds timed inside the namespace; ratio = pyunion / rootless podman (of the "
           "medians; per round: median of the ratios of samples run back to back)"]
    if res.get("error"):
        out.append(f"  FAILED: {res['error']}")
        return out
    u = res["user"]
    out.append(f"user: {'; '.join(u['setup'])}")
    p = res.get("podman", {})
    if p.get("ok"):
        out.append(f"rootless podman {p['version']}: {p['driver']} storage, mount_program "
                   "fuse-overlayfs, runtime runc, cgroups "
                   f"{p['cgroups']} ({p['cgroup_manager']}), events to a file")
    else:
        out.append(f"rootless podman: NOT MEASURED: {p.get('error')}")
    if res.get("pyunion_info"):
        out.append("pyunion: " + "; ".join(res["pyunion_info"]))
    r = res.get(RUN)
    if r:
        out += ["", "rootless-run: start a container running `true`, wait, remove it "
                "(busybox-static image, imported into both from the same tar)"]
        if not r.get("tools"):
            out.append(f"  FAILED: {r.get('error')}")
        else:
            t = r["tools"]
            out.append(_table(HEADER, [
                _row("pyunion run --rm IMG true", t["pyunion"], None, None,
                     "CLI + mount daemon + runc (user namespace) + umount"),
                _row("podman run --rm IMG true", t["podman"], r["ratio"], TARGETS[RUN],
                     "rootless: fuse-overlayfs, runc, host net", r["per_round"]),
            ]))
            out.append(f"  {r['rounds_per_rep']} rounds per repetition after one warm-up each; "
                       f"uid_map inside: {r['uid_maps']}; pyunion containers left: "
                       f"{r['containers_left']}")
            for tool, v in t.items():
                if v["error"]:
                    out.append(f"  {tool}: FAILED: {v['error']}")
    w = res.get(WALK)
    if w:
        out += ["", "rootless-walk: `find MNT -printf '%y %U %G %m %s %P'` of a read-only mount "
                "of the image, as the user, caches dropped after the mount"]
        if not w.get("tools"):
            out.append(f"  FAILED: {w.get('error')}")
        else:
            if w.get("image_fallback"):
                out.append(f"NOTE: not Debian: debootstrap failed ({w['image_fallback']}), so "
                           "this is a busybox-static rootfs")
            out.append(f"{w['image']}, {w['image_entries']} entries; loaded as the user: "
                       + ", ".join(f"{k} {v:.1f} s" for k, v in w["load_s"].items())
                       + f"; mounts: {w['fstype']}")
            t, ra, pa = w["tools"], w["ratios"], w["per_round"]
            what = {"cold": "after drop_caches", "warm": "the same walk again",
                    "mount": "mount until it returns"}
            rows = []
            for phase in ("cold", "warm", "mount"):
                rows.append(_row(f"pyunion mount-image: {phase}", t["pyunion"][phase],
                                 None, None, what[phase]))
                rows.append(_row(f"podman image mount: {phase}", t["podman"][phase], ra[phase],
                                 TARGETS[WALK] if phase == "cold" else None,
                                 "walk in `podman unshare`" if phase != "mount" else
                                 "in `podman unshare`", pa[phase]))
            out.append(_table(HEADER, rows))
            out.append(f"  {w['walks_per_rep']} walks of each per repetition")
            c = w.get("compared")
            if c:
                out.append(
                    f"  listings: pyunion {c['pyunion_entries']} entries, podman "
                    f"{c['podman_entries']}; only in pyunion's {c['only_pyunion']} "
                    f"{c['only_pyunion_sample'][:3]}, only in podman's {c['only_podman']} "
                    f"{c['only_podman_sample'][:3]}; type differs {c['type_differs']}, mode "
                    f"{c['mode_differs']}, owner {c['owner_differs']} "
                    f"(by type in pyunion's: {c['owner_differs_by_type']})")
            for tool, n in w["find_stderr_lines"].items():
                if n:
                    out.append(f"  find through {tool}: {n} error line(s), e.g. "
                               f"{w['find_stderr'][tool][:2]}")
            for tool, v in t.items():
                if v["cold"]["error"]:
                    out.append(f"  {tool}: FAILED: {v['cold']['error']}")
    if res.get("cleanup"):
        out.append(f"  cleanup: {res['cleanup']}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = standalone.parse_args(
        "rootless", __doc__, NAMES, argv, quick_help="1 repetition, 3 run rounds",
        reps_help="repetitions (default 3; --quick: 1)",
        root_because="it creates the user, namespaces, drops caches")
    signal.signal(signal.SIGTERM, lambda sig, f: sys.exit(128 + sig))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    res = run(args, args.names, args.cache_dir, lambda m: print(m, flush=True))
    return standalone.report(args, "rootless benchmark", "rootless", res, render)

if __name__ == "__main__":
    sys.exit(main())
