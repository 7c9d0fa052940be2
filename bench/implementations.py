"""The implementations under test, and how each is mounted fresh and torn down.

Every mount gets a new cell directory with an empty upper (and workdir); teardown unmounts
(retry, then lazy; a hung FUSE connection is aborted), waits for the daemon we started and
only then deletes the cell directory. Only processes started here are ever signalled, by pid.

``plain`` is the limit: the merged tree as an ordinary directory. Read workloads use the
cached copy directly. Workloads that only add new names (create, untar) get a fresh empty
directory on the same filesystem; workloads that modify existing files (append, chmod, rm -rf)
get a fresh ``cp -a --parents`` copy of exactly the paths they touch, at the same relative
paths (made before the cache drop, not timed). A hard-link copy would let chmod/append change
the cached tree (and share its inodes), so it would not be a fair baseline; a full copy of the
tree per cell would cost the same per-file work and only make the run longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.dataset import Dataset
from bench.workloads import Workload

REPO = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0


class MountFailed(Exception):
    """Mounting (or cleanly unmounting) an implementation failed."""


@dataclass
class Mounted:
    path: Path  # where the workload runs
    daemon: subprocess.Popen[bytes] | None = None
    stats_file: Path | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# mount table helpers


def mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f]


def _unescape(field_: str) -> str:
    return field_.encode().decode("unicode_escape")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(_unescape(f[4]) == target for f in mountinfo())


def mounts_below(path: Path) -> list[str]:
    prefix = os.path.realpath(path) + "/"
    return [p for p in (_unescape(f[4]) for f in mountinfo()) if (p + "/").startswith(prefix)]


def fuse_abort(mnt: Path) -> None:
    """Abort the FUSE connection of ``mnt`` (unblocks everything waiting on a hung daemon)."""
    target = os.path.realpath(mnt)
    for f in mountinfo():
        if _unescape(f[4]) == target and f[f.index("-") + 1].startswith("fuse"):
            minor = f[2].split(":")[1]
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")


def umount(mnt: Path, daemon: subprocess.Popen[bytes] | None = None) -> list[str]:
    """Unmount ``mnt`` and wait for ``daemon``; returns problems seen (empty = clean)."""
    problems: list[str] = []
    for _ in range(50):
        if not is_mounted(mnt):
            break
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(0.1)
    else:
        problems.append(f"umount {mnt} kept failing: {r.stderr.strip()}; aborted + lazy umount")
        fuse_abort(mnt)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    if daemon is not None:
        try:
            daemon.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"daemon {daemon.pid} did not exit after umount; killed")
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=EXIT_TIMEOUT)
        if daemon.returncode not in (0, None):
            problems.append(f"daemon exited with status {daemon.returncode}")
    return problems


def wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(mnt):
        if proc.poll() is not None:
            raise MountFailed(f"exited with {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise MountFailed(f"not mounted after {MOUNT_TIMEOUT} s: {tail(log)}")
        time.sleep(0.005)


def tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace").strip()
    except OSError:
        return ""


def start_daemon(cmd: list[str], mnt: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=REPO,
            start_new_session=True,
        )
    wait_mounted(mnt, proc, log)
    return proc


def drop_caches() -> None:
    """Writes back, then empties the page cache, dentries and inodes: a cold start."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of ``pid`` so far; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of ``pid`` (the daemon's peak resident set), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# implementations


class Implementation:
    """Base: ``session()`` yields a fresh mount for one workload."""

    name = "?"
    fuse = True

    def available(self) -> str | None:
        """None if usable here, else why not."""
        return None

    @contextlib.contextmanager
    def session(self, ds: Dataset, cell: Path, wl: Workload) -> Iterator[Mounted]:
        cell.mkdir(parents=True)
        mnt, upper, work = cell / "mnt", cell / "upper", cell / "work"
        for d in (mnt, upper, work):
            d.mkdir()
        m = self.mount(ds, cell, mnt, upper, work)
        try:
            yield m
        finally:
            m.notes += umount(mnt, m.daemon)
            self.after_umount(m)

    def mount(self, ds: Dataset, cell: Path, mnt: Path, upper: Path, work: Path) -> Mounted:
        raise NotImplementedError

    def after_umount(self, m: Mounted) -> None:
        """Hook run after the unmount (and daemon exit)."""

    def background_mount(self, ds: Dataset, mnt: Path, upper: Path, work: Path) -> list[str]:
        """Command that mounts and returns once mounted (for the latency measurement)."""
        raise NotImplementedError


class Plain(Implementation):
    name = "plain"
    fuse = False

    @contextlib.contextmanager
    def session(self, ds: Dataset, cell: Path, wl: Workload) -> Iterator[Mounted]:
        cell.mkdir(parents=True)
        if wl.mode == "read":
            yield Mounted(ds.merged)
            return
        fresh = cell / "fresh"
        fresh.mkdir()
        if wl.mode == "modify":
            paths: list[str] = []
            for key in wl.touches:
                value = ds.manifest[key]
                paths += value if isinstance(value, list) else [value]
            subprocess.run(["cp", "-a", "--parents", "--", *paths, str(fresh)], cwd=ds.merged,
                           check=True)
        yield Mounted(fresh)


class Kernel(Implementation):
    name = "kernel"
    fuse = False
    OPTIONS = "redirect_dir=on,index=on"

    def _opts(self, ds: Dataset, upper: Path, work: Path) -> str:
        lowers = ":".join(str(p) for p in ds.lowers)
        return f"lowerdir={lowers},upperdir={upper},workdir={work},{self.OPTIONS}"

    def mount(self, ds: Dataset, cell: Path, mnt: Path, upper: Path, work: Path) -> Mounted:
        cmd = self.background_mount(ds, mnt, upper, work)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise MountFailed(r.stderr.strip())
        return Mounted(mnt)

    def background_mount(self, ds: Dataset, mnt: Path, upper: Path, work: Path) -> list[str]:
        return ["mount", "-t", "overlay", "overlay", "-o", self._opts(ds, upper, work), str(mnt)]


class FuseOverlayfs(Implementation):
    name = "fuse-overlayfs"

    def available(self) -> str | None:
        return None if shutil.which("fuse-overlayfs") else "fuse-overlayfs is not installed"

    def _cmd(self, ds: Dataset, mnt: Path, upper: Path, work: Path) -> list[str]:
        lowers = ":".join(str(p) for p in ds.lowers)
        opts = f"lowerdir={lowers},upperdir={upper},workdir={work}"
        return ["fuse-overlayfs", "-o", opts, str(mnt)]

    def mount(self, ds: Dataset, cell: Path, mnt: Path, upper: Path, work: Path) -> Mounted:
        cmd = self._cmd(ds, mnt, upper, work)
        return Mounted(mnt, start_daemon([*cmd, "-f"], mnt, cell / "daemon.log"))

    def background_mount(self, ds: Dataset, mnt: Path, upper: Path, work: Path) -> list[str]:
        return self._cmd(ds, mnt, upper, work)


class UnionfsFuse(Implementation):
    """unionfs-fuse 1.0 with copy-on-write; the middle layer in its own whiteout format.

    ``hide_meta_files`` keeps the ``.unionfs-fuse`` whiteout directory out of listings, so the
    visible tree is the same as everybody else's.
    """

    name = "unionfs-fuse"
    OPTIONS = "cow,allow_other,use_ino,hide_meta_files"

    def available(self) -> str | None:
        return None if shutil.which("unionfs") else "unionfs (unionfs-fuse) is not installed"

    def _cmd(self, ds: Dataset, mnt: Path, upper: Path) -> list[str]:
        branches = ":".join([f"{upper}=RW"] + [f"{p}=RO" for p in ds.unionfs_lowers])
        return ["unionfs", "-o", self.OPTIONS, branches, str(mnt)]

    def mount(self, ds: Dataset, cell: Path, mnt: Path, upper: Path, work: Path) -> Mounted:
        # the Debian build prints a debug line per directory entry to stdout in -f mode: the
        # log goes to a file (in background mode it would go to /dev/null)
        return Mounted(mnt, start_daemon([*self._cmd(ds, mnt, upper), "-f"], mnt,
                                         cell / "daemon.log"))

    def background_mount(self, ds: Dataset, mnt: Path, upper: Path, work: Path) -> list[str]:
        return self._cmd(ds, mnt, upper)


class Pyunion(Implementation):
    """pyunion in foreground mode (we own the daemon pid: peak RSS, clean exit status).

    Asks for ``-o stats=FILE`` (FUSE request counts written at unmount); if the option is
    rejected, mounts without it from then on and reports the counts as unavailable.
    """

    name = "pyunion"

    def __init__(self) -> None:
        self.stats_supported: bool | None = None  # None: not tried yet

    def _cmd(self, ds: Dataset, mnt: Path, upper: Path, options: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "mount_helper", ":".join(str(p) for p in ds.lowers),
               str(upper), str(mnt)]
        return cmd + (["-o", ",".join(options)] if options else [])

    def mount(self, ds: Dataset, cell: Path, mnt: Path, upper: Path, work: Path) -> Mounted:
        # default workdir: <cell>/.upper.work, inside the cell directory
        log = cell / "daemon.log"
        stats = cell / "stats.json"
        if self.stats_supported is not False:
            try:
                proc = start_daemon([*self._cmd(ds, mnt, upper, [f"stats={stats}"]), "-f"],
                                    mnt, log)
                self.stats_supported = True
                return Mounted(mnt, proc, stats)
            except MountFailed as e:
                if self.stats_supported:
                    raise
                first_error = str(e)
            # rejected: try without; if that works, the option is not implemented yet
            proc = start_daemon([*self._cmd(ds, mnt, upper, []), "-f"], mnt, log)
            self.stats_supported = False
            m = Mounted(mnt, proc)
            m.notes.append(f"-o stats= rejected ({first_error}); request counts unavailable")
            return m
        return Mounted(mnt, start_daemon([*self._cmd(ds, mnt, upper, []), "-f"], mnt, log))

    def background_mount(self, ds: Dataset, mnt: Path, upper: Path, work: Path) -> list[str]:
        return self._cmd(ds, mnt, upper, [])


class PyunionNoPassthrough(Pyunion):
    """pyunion with FUSE passthrough off (``-o passthrough=off``): every read and write goes
    through the daemon, as where the kernel refuses passthrough (an ordinary user)."""

    name = "pyunion-nopt"

    def _cmd(self, ds: Dataset, mnt: Path, upper: Path, options: list[str]) -> list[str]:
        return super()._cmd(ds, mnt, upper, [*options, "passthrough=off"])


def read_stats(m: Mounted) -> dict[str, int] | None:
    if m.stats_file is None:
        return None
    try:
        data = json.loads(m.stats_file.read_text())
    except (OSError, ValueError):
        return None
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int | float)}


ALL: dict[str, type[Implementation]] = {
    cls.name: cls for cls in (Plain, Kernel, FuseOverlayfs, UnionfsFuse, Pyunion,
                              PyunionNoPassthrough)
}


def cleanup_cell(cell: Path) -> str | None:
    """Delete a cell directory unless something is still mounted in it."""
    busy = mounts_below(cell)
    if busy:
        return f"left {cell} in place: still mounted: {busy}"
    if cell.exists():
        shutil.rmtree(cell)
    return None
