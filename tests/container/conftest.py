"""Fixtures and helpers for the container tests: real FUSE mounts, real runc, real tarballs.

* ``base_tar`` (session): a busybox rootfs (``/bin/busybox`` and applet links, ``/etc/passwd``
  with ``root`` and ``app`` (1000:1000), ``/work``, some files under ``/srv`` for the commit
  tests) imported once as ``busybox:test`` (``CMD ["/bin/sh"]``, ``ENV FOO=bar``,
  ``WORKDIR /work``) and saved once to a docker-archive tar.
* ``px`` (per test): a fresh store with that tar loaded; ``px(*args)`` runs one
  ``pyunion --root STORE`` command, ``px.popen(*args)`` starts one in the background. Teardown
  (always): kill what the test started, ``rm -f`` every container, ``umount-image`` every image
  mount, then lazy-unmount / delete / kill whatever is still there and fail the test if there
  was anything (pyunion's own cleanup should have left nothing).
* ``snapshot`` / ``differences`` / ``docker_changes``: tree comparisons for diff/commit/export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import TEST_NETWORK, run_through_files
from tests.treesnap import assert_same_tree, differences, file_digest  # noqa: F401 (for the tests)

REPO_ROOT = Path(__file__).resolve().parents[2]
PYUNION = [sys.executable, "-m", "unionfs.image.cli"]
IMAGE = "busybox:test"
BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh ls cat echo id uname true false sleep env pwd hostname mkdir rm mv ln touch stat chmod "
    "chown head tail wc grep printf test [ tr cut od dd sync readlink kill ps cp sed find xargs "
    "basename dirname seq date tee mkfifo rmdir"
).split()
RUNC = "runc"


# --------------------------------------------------------------------------- running pyunion


@dataclasses.dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"pyunion {' '.join(self.args)} -> {self.returncode}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYUNION_")}
    env.update(TEST_NETWORK)
    env.update(extra or {})
    return env


class Background:
    """A ``pyunion`` command started in the background, its output going to files."""

    def __init__(self, proc: subprocess.Popen, out: Path, err: Path) -> None:
        self.proc = proc
        self.out_path, self.err_path = out, err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)


class Pyunion:
    """One test's store and the pyunion commands run against it."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []
        self._count = 0
        self.extra_env: dict[str, str] = {}   # every command's, before the call's own ``env``

    def command(self, *args: Any) -> list[str]:
        return [*PYUNION, "--root", str(self.root), *(str(a) for a in args)]

    def __call__(self, *args: Any, check: bool = True, timeout: float = 60,
                 input: str | bytes | None = None, env: dict[str, str] | None = None,
                 binary: bool = False) -> Result:
        """Runs ``pyunion --root STORE ARGS`` to its end (stdin /dev/null unless ``input``).

        Output goes through files: a daemon that inherited a pipe cannot hang the test."""
        status, raw, err = run_through_files(
            self.command(*args), timeout=timeout, input=input, on_start=self.started.append,
            env=clean_env({**self.extra_env, **(env or {})}), cwd=REPO_ROOT,
            start_new_session=True)
        result = Result([str(a) for a in args], status,
                        raw if binary else raw.decode(errors="replace"),  # type: ignore
                        err.decode(errors="replace"))
        if check:
            assert result.returncode == 0, str(result)
        return result

    def popen(self, *args: Any, env: dict[str, str] | None = None, stdin: Any = None,
              **kwargs: Any) -> Background:
        """Starts ``pyunion ARGS`` in its own session; killed (by pid) at teardown if alive."""
        self._count += 1
        out = self.tmp / f"bg{self._count}.out"
        err = self.tmp / f"bg{self._count}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(self.command(*args), stdout=o, stderr=e,
                                    stdin=subprocess.DEVNULL if stdin is None else stdin,
                                    env=clean_env({**self.extra_env, **(env or {})}),
                                    cwd=REPO_ROOT, start_new_session=True,
                                    **kwargs)
        self.started.append(proc)
        return Background(proc, out, err)

    def track(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.started.append(proc)
        return proc

    # ---- views

    def containers(self) -> dict[str, dict[str, Any]]:
        """``ps -a --no-trunc --format json``, by name."""
        lines = self("ps", "-a", "--no-trunc", "--format", "json").stdout.splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        return {row["Names"]: row for row in rows}

    def container(self, name: str) -> dict[str, Any]:
        rows = self.containers()
        assert name in rows, f"no container {name} in ps -a: {sorted(rows)}"
        return rows[name]

    def container_dir(self, name: str) -> Path:
        return self.root / "containers" / self.container(name)["ID"]

    def runc_containers(self) -> list[str]:
        state_root = self.root / "runtime"
        if not state_root.exists():
            return []
        result = subprocess.run([RUNC, "--root", str(state_root), "list", "-q"],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.split()

    def runc_state(self, container_id: str) -> dict[str, Any] | None:
        result = subprocess.run([RUNC, "--root", str(self.root / "runtime"), "state",
                                 container_id], capture_output=True, text=True, timeout=30)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def image_id(self, name: str) -> str:
        return json.loads(self("inspect", name).stdout)[0]["Id"]


def wait_for(predicate, timeout: float = 20, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- mounts, processes


def mounts_under(root: os.PathLike | str) -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, source) of every mount at or below ``root``, deepest first."""
    prefix = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append((point, fields[sep + 1], fields[sep + 2]))
    return sorted(found, key=lambda m: len(m[0]), reverse=True)


def pids_with_cmdline(*fragments: str) -> list[int]:
    """Processes whose command line contains every fragment (not zombies)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and all(frag.encode() in cmdline for frag in fragments):
            pids.append(int(entry))
    return pids


def _teardown(px: Pyunion) -> list[str]:
    """Everything the test may have left; returns what pyunion's own cleanup did not remove."""
    leftovers: list[str] = []
    for proc in px.started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    problems: list[str] = []
    try:
        # (a container always has a directory under containers/: none there, no containers)
        made = px.root / "containers"
        listed = made.is_dir() and any(made.iterdir())
        ids = px("ps", "-aq", "--no-trunc", check=False, timeout=60).stdout.split() \
            if listed else []
        if ids:
            result = px("rm", "-f", *ids, check=False, timeout=100)
            if result.returncode != 0:
                problems.append(f"pyunion rm -f failed: {result.stderr}")
    except Exception as e:  # noqa: BLE001 - teardown goes on whatever happened
        problems.append(f"container cleanup raised {e!r}")
    for point, _fstype, source in mounts_under(px.tmp):
        if source.startswith("pyunion-image:"):
            with contextlib.suppress(Exception):
                px("umount-image", point, check=False, timeout=60)
    for point, fstype, source in mounts_under(px.tmp):
        leftovers.append(f"still mounted: {point} ({fstype} {source})")
        subprocess.run(["umount", "-l", point], capture_output=True)
    for container_id in px.runc_containers():
        leftovers.append(f"runc container left: {container_id}")
        subprocess.run([RUNC, "--root", str(px.root / "runtime"), "delete", "--force",
                        container_id], capture_output=True, timeout=30)
    # daemons, monitors and runtimes pyunion started for this store (its path is unique to
    # the test), given a moment to finish exiting
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not pids_with_cmdline(str(px.root)), timeout=5, what="exits")
    for pid in pids_with_cmdline(str(px.root)):
        leftovers.append(f"process left: {pid} {_cmdline(pid)}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return problems + leftovers


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


# --------------------------------------------------------------------------- the base image


def build_rootfs(root: Path) -> None:
    """The busybox rootfs of ``busybox:test``."""
    for d in ("bin", "etc", "work", "root", "home/app", "srv/lower", "srv/tree/y", "srv/opq",
              "srv/doomed/sub", "srv/links"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    with open(BUSYBOX, "rb") as src, open(root / "bin/busybox", "wb") as dst:
        dst.write(src.read())
    os.chmod(root / "bin/busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "app:x:1000:1000:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    os.chown(root / "home/app", 1000, 1000)
    files = {
        "srv/lower/a.txt": "alpha\n", "srv/lower/b.txt": "bravo\n", "srv/lower/c.txt": "charlie\n",
        "srv/lower/mode.txt": "mode\n", "srv/tree/x": "x\n", "srv/tree/y/z": "zulu\n",
        "srv/opq/old1": "old1\n", "srv/opq/old2": "old2\n", "srv/doomed/d1": "d1\n",
        "srv/doomed/sub/d2": "d2\n", "srv/links/target": "target\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    os.link(root / "srv/links/target", root / "srv/links/hard")
    os.symlink("target", root / "srv/links/soft")


@pytest.fixture(scope="session")
def base_tar(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("container-base")
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    session = Pyunion(base / "store", base)
    session.root.mkdir()
    try:
        session("import", "-q", "-c", 'CMD ["/bin/sh"]', "-c", "ENV FOO=bar", "-c",
                "WORKDIR /work", "-m", "busybox test base", rootfs, IMAGE)
        tar = base / "busybox.tar"
        session("save", "-o", tar, IMAGE)
    finally:
        _teardown(session)
    return tar


@pytest.fixture
def px(base_tar, tmp_path) -> Iterator[Pyunion]:
    store = Pyunion(tmp_path / "store", tmp_path)
    store.root.mkdir()
    failed_teardown: list[str] = []
    try:
        store("load", "-q", "-i", base_tar)
        yield store
    finally:
        failed_teardown = _teardown(store)
    if failed_teardown:
        pytest.fail("left behind after the test (pyunion rm -f / umount-image did not clean "
                    "up):\n  " + "\n  ".join(failed_teardown), pytrace=False)


@pytest.fixture
def workdir(tmp_path) -> Path:
    path = tmp_path / "w"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- tree comparisons

IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(IGNORED_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            out[name] = f"<error {e.errno}>".encode()
    return out



def describe(path: str, st: os.stat_result) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                             "uid": st.st_uid, "gid": st.st_gid, "xattrs": _xattrs(path)}
    if stat.S_ISREG(st.st_mode):
        entry.update(size=st.st_size, sha256=file_digest(path), nlink=st.st_nlink)
    elif stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return entry


def snapshot(root: os.PathLike | str, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything visible below root (no inode numbers, no times) plus, separately, the mtimes:
    {"entries": {rel: entry}, "links": [[rel, ...]], "mtimes": {rel: ns}, "dir_nlink": {}}."""
    root = os.fspath(root)
    entries: dict[str, dict[str, Any]] = {}
    mtimes: dict[str, int] = {}
    dir_nlink: dict[str, int] = {}
    by_inode: dict[tuple[int, int], list[str]] = defaultdict(list)
    pending = [""]
    while pending:
        rel = pending.pop()
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            child_rel = f"{rel}/{name}" if rel else name
            if child_rel in skip:
                continue
            child = os.path.join(full, name)
            st = os.lstat(child)
            entries[child_rel] = describe(child, st)
            mtimes[child_rel] = st.st_mtime_ns
            if stat.S_ISDIR(st.st_mode):
                dir_nlink[child_rel] = st.st_nlink
                pending.append(child_rel)
            else:
                by_inode[(st.st_dev, st.st_ino)].append(child_rel)
    links = sorted(sorted(group) for group in by_inode.values() if len(group) > 1)
    return {"entries": entries, "links": links, "mtimes": mtimes, "dir_nlink": dir_nlink}


def docker_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The ``docker diff`` lines (sorted by path) that turn tree ``before`` into ``after``.

    A: every path only in ``after`` (with everything below it); D: the top-most paths only in
    ``before``; C: paths in both whose entry differs (type, mode, owner, xattrs, content, link
    count or target, the mtime of a non-directory) and every directory above an A, C or D path.
    """
    eb, ea = before["entries"], after["entries"]
    kinds: dict[str, str] = {}
    for path in ea:
        if path not in eb:
            kinds[path] = "A"
        elif ea[path] != eb[path] or (not stat.S_ISDIR(ea[path]["type"])
                                      and after["mtimes"][path] != before["mtimes"][path]):
            kinds[path] = "C"
    for path in eb:
        if path not in ea and (os.path.dirname(path) in ea or "/" not in path):
            kinds[path] = "D"
    for path in list(kinds):
        parent = os.path.dirname(path)
        while parent:
            kinds.setdefault(parent, "C")
            parent = os.path.dirname(parent)
    return [f"{kinds[p]} /{p}" for p in sorted(kinds)]
