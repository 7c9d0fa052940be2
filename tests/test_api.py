"""The library API: ``unionfs.mount()``, ``Mount``, ``mount_async`` and ``MountError``.

Every test points ``tempfile`` at a private directory (``private_tmp``), so "nothing left
behind" can be checked exactly: no temp dirs (the API's ``pyunion-*``), no mounts below it, no
daemon still running for one of its mountpoints. Other people's mounts and /tmp/pyunion-* dirs
on a shared machine don't disturb the checks.
"""

from __future__ import annotations

import concurrent.futures
import errno
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import xattr

import unionfs
from tests import mounts
from tests.treesnap import snapshot

CYCLES = 200
CHILD_TIMEOUT = 30.0


@dataclass
class Stack:
    """Two lowers (``l1`` top-most) with a shadowed file, a file, and a directory."""

    l1: Path
    l2: Path

    @property
    def lowers(self) -> list[Path]:
        return [self.l1, self.l2]


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    for path, text in [(l1 / "a.txt", "a1"), (l2 / "a.txt", "a2"), (l2 / "b.txt", "b"),
                       (l2 / "dir/c.txt", "c")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Stack(l1, l2)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tempfile``'s directory for this test (the API makes its temp dirs there)."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path


def mounts_below(path: Path) -> list[str]:
    base = os.path.realpath(path) + os.sep
    return sorted(p for p in mounts.mounted_paths() if p.startswith(base))


def daemons_for(path: Path) -> list[int]:
    """Pids of processes with an argument inside ``path`` (a daemon serving a mount there)."""
    base = os.fsencode(os.path.realpath(path))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(base) for arg in args[1:]):
            pids.append(int(entry))
    return pids


def assert_nothing_left(private: Path) -> None:
    assert mounts_below(private) == []
    assert sorted(os.listdir(private)) == []
    assert daemons_for(private) == []


def assert_gone(tree: Path) -> None:
    """``tree`` (a temporary mountpoint) is unmounted and its temp dir removed."""
    assert not mounts.is_mounted(tree)
    assert not tree.parent.exists(), f"temp dir {tree.parent} left behind"


def test_mount_mounts_merged_tree_and_unmounts(stack: Stack, private_tmp: Path) -> None:
    before = snapshot(stack.l1), snapshot(stack.l2)
    with unionfs.mount(stack.lowers) as tree:
        assert isinstance(tree, Path)
        assert mounts.mount_type(tree) == "fuse.pyunion"
        assert tree.parent.parent == private_tmp
        assert (tree / "a.txt").read_text() == "a1"
        assert sorted(os.listdir(tree)) == ["a.txt", "b.txt", "dir"]
        (tree / "new.txt").write_text("new")
        (tree / "b.txt").write_text("changed")
        (tree / "a.txt").unlink()
        shutil.rmtree(tree / "dir")
        assert sorted(os.listdir(tree)) == ["b.txt", "new.txt"]
        assert (tree / "b.txt").read_text() == "changed"
    assert_gone(tree)
    assert (snapshot(stack.l1), snapshot(stack.l2)) == before
    assert_nothing_left(private_tmp)


def test_cleanup_when_body_raises(stack: Stack, private_tmp: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), unionfs.mount(stack.lowers) as tree:
        (tree / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert_gone(tree)
    assert not (stack.l1 / "new.txt").exists()
    assert_nothing_left(private_tmp)


CHILD = """
import signal, sys, time
import unionfs
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
with unionfs.mount(sys.argv[1:]) as tree:
    (tree / "from-child.txt").write_text("x")
    print(tree, flush=True)
    time.sleep(60)
print("not reached", flush=True)
"""


@pytest.mark.parametrize("target", ["process", "process group"])
def test_cleanup_on_sigint(stack: Stack, private_tmp: Path, target: str) -> None:
    """Ctrl-C (SIGINT to the process, or to its whole group as a terminal does) inside ``with``.

    The daemon runs in its own session, so a group SIGINT reaches only the Python program,
    whose ``with`` must unmount and remove the temp dirs before it dies of the signal.
    """
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    cmd = [sys.executable, "-c", CHILD, *map(str, stack.lowers)]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as child:
        try:
            assert child.stdout is not None
            tree = Path(child.stdout.readline().strip())
            assert mounts.is_mounted(tree), f"child did not mount (said {tree!r})"
            assert (tree / "from-child.txt").read_text() == "x"
            if target == "process":
                os.kill(child.pid, signal.SIGINT)
            else:
                os.killpg(child.pid, signal.SIGINT)
            rest = child.communicate(timeout=CHILD_TIMEOUT)[0]
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == -signal.SIGINT, rest
    assert "not reached" not in rest
    assert_gone(tree)
    assert_nothing_left(private_tmp)


MOUNTING_CHILD = """
import signal, sys, time
import unionfs
signal.signal(signal.SIGINT, signal.default_int_handler)
with unionfs.mount(sys.argv[1:]) as tree:
    time.sleep(60)
"""


def test_cleanup_on_sigint_while_mounting(stack: Stack, private_tmp: Path) -> None:
    """Ctrl-C while ``mount()`` waits for the daemon to be ready leaves nothing behind either.

    SIGINT is sent as soon as the daemon process exists (it then still has to import and
    mount, so the interrupt lands in the wait); three times, to not depend on one timing.
    """
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    cmd = [sys.executable, "-c", MOUNTING_CHILD, *map(str, stack.lowers)]
    for _ in range(3):
        with subprocess.Popen(cmd, env=env) as child:
            try:
                wait_until(lambda: daemons_for(private_tmp) or child.poll() is not None)
                os.kill(child.pid, signal.SIGINT)
                child.wait(timeout=CHILD_TIMEOUT)
            finally:
                if child.poll() is None:
                    child.kill()
        left = daemons_for(private_tmp), mounts_below(private_tmp), os.listdir(private_tmp)
        remove_leftovers(private_tmp)
        assert left == ([], [], []), "daemons, mounts, temp dirs left by an interrupted mount()"
        assert child.returncode == -signal.SIGINT


def wait_until(condition: Callable[[], object], timeout: float = CHILD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def remove_leftovers(private: Path) -> None:
    """Stops daemons serving mounts below ``private`` (our children's), unmounts, empties it."""
    for pid in daemons_for(private):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not daemons_for(private), timeout=10)
    except AssertionError:
        for pid in daemons_for(private):
            os.kill(pid, signal.SIGKILL)
    for point in mounts_below(private):
        mounts.unmount(point)
    for entry in os.listdir(private):
        shutil.rmtree(private / entry)


CHATTY_CHILD = """
import os, sys
import unionfs
with unionfs.mount(sys.argv[1:], options=["debug"]) as tree:
    print(tree, flush=True)
    for i in range(1000):
        (tree / f"f{i}").write_text("x")
        os.stat(tree / f"f{i}")
print("done", flush=True)
"""


def test_debug_output_does_not_block_the_daemon(stack: Stack, private_tmp: Path) -> None:
    """A daemon that logs a lot (``-o debug``) keeps serving: its stderr must not fill up.

    The I/O runs in a child process: a blocked daemon hangs it in FUSE requests no signal
    but SIGKILL ends. On a hang the test kills that daemon (started by its child) by pid.
    """
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    cmd = [sys.executable, "-c", CHATTY_CHILD, *map(str, stack.lowers)]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as child:
        try:
            out = child.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            for pid in daemons_for(private_tmp):
                os.kill(pid, signal.SIGKILL)
            child.communicate(timeout=CHILD_TIMEOUT)
            pytest.fail("the filesystem stopped answering (daemon blocked writing its log?)")
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 0
    assert out.splitlines()[-1] == "done"
    assert_nothing_left(private_tmp)


def test_mount_object_start_and_unmount(stack: Stack, private_tmp: Path) -> None:
    m = unionfs.Mount(stack.lowers)
    assert not m.mounted
    path = m.start()
    try:
        assert m.mounted and path == m.path
        assert mounts.mount_type(path) == "fuse.pyunion"
        assert m.upper is not None and m.upper.is_dir()
        (path / "new.txt").write_text("new")
        assert (m.upper / "new.txt").read_text() == "new"
        with pytest.raises(unionfs.MountError):
            m.start()
        assert mounts.is_mounted(path)
    finally:
        m.unmount()
    assert not m.mounted
    assert not path.exists() and not m.upper.exists()
    m.unmount()  # a second unmount is a no-op
    assert_nothing_left(private_tmp)


def test_explicit_upper_kept_with_changes(stack: Stack, private_tmp: Path,
                                          tmp_path: Path) -> None:
    """An upper given by the caller stays, in overlayfs format; the default workdir is used."""
    upper = tmp_path / "upper"
    upper.mkdir()
    with unionfs.mount(stack.lowers, upper) as tree:
        (tree / "new.txt").write_text("new")
        (tree / "b.txt").write_text("changed")
        (tree / "a.txt").unlink()
        shutil.rmtree(tree / "dir")
        (tree / "dir").mkdir()
    assert_gone(tree)
    assert (upper / "new.txt").read_text() == "new"
    assert (upper / "b.txt").read_text() == "changed"
    whiteout = os.lstat(upper / "a.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert xattr.getxattr(str(upper / "dir"), "trusted.overlay.opaque") == b"y"
    assert (tmp_path / ".upper.work").is_dir()
    with unionfs.mount(stack.lowers, upper) as again:
        assert sorted(os.listdir(again)) == ["b.txt", "dir", "new.txt"]
        assert os.listdir(again / "dir") == []
    assert_nothing_left(private_tmp)


@pytest.mark.parametrize("with_upper", [False, True])
def test_readonly_writes_fail_with_erofs(stack: Stack, private_tmp: Path, tmp_path: Path,
                                         with_upper: bool) -> None:
    upper = tmp_path / "upper" if with_upper else None
    if upper is not None:
        upper.mkdir()
    writes: list[Callable[[Path], object]] = [
        lambda t: (t / "new.txt").write_text("x"),
        lambda t: (t / "b.txt").write_text("x"),
        lambda t: (t / "a.txt").unlink(),
        lambda t: (t / "newdir").mkdir(),
        lambda t: (t / "b.txt").chmod(0o600),
    ]
    with unionfs.mount(stack.lowers, upper, readonly=True) as tree:
        assert (tree / "a.txt").read_text() == "a1"
        for write in writes:
            with pytest.raises(OSError) as exc:
                write(tree)
            assert exc.value.errno == errno.EROFS
    assert_gone(tree)
    if upper is not None:
        assert os.listdir(upper) == []
    assert_nothing_left(private_tmp)


def cli_error(args: list[str]) -> str:
    """The message ``mount.pyunion`` prints for these arguments, without its prefix."""
    result = subprocess.run([sys.executable, "-m", "mount_helper", *args, "-f"],
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mount.pyunion: "), result.stderr
    return lines[0].removeprefix("mount.pyunion: ")


def test_missing_lower_raises_mount_error(stack: Stack, private_tmp: Path,
                                          tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    upper.mkdir()
    mnt.mkdir()
    with pytest.raises(unionfs.MountError) as exc, unionfs.mount([missing, stack.l2], upper,
                                                                mountpoint=mnt):
        pytest.fail("mounted a missing lower")
    assert str(exc.value) == cli_error([f"{missing}:{stack.l2}", str(upper), str(mnt)])
    assert str(missing) in str(exc.value)
    assert sorted(os.listdir(tmp_path)) == ["l1", "l2", "mnt", "tmp", "upper"]  # no workdir
    with pytest.raises(unionfs.MountError):
        unionfs.Mount([missing]).start()
    assert_nothing_left(private_tmp)


def test_unknown_option_raises_mount_error(stack: Stack, private_tmp: Path,
                                           tmp_path: Path) -> None:
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    upper.mkdir()
    mnt.mkdir()
    with pytest.raises(unionfs.MountError) as exc, unionfs.mount(
            stack.lowers, upper, mountpoint=mnt, options=["bogus=1"]):
        pytest.fail("mounted with an unknown option")
    lowers = ":".join(map(str, stack.lowers))
    assert str(exc.value) == cli_error([lowers, str(upper), str(mnt), "-o", "bogus=1"])
    assert "bogus" in str(exc.value)
    assert_nothing_left(private_tmp)


def test_mount_async_under_trio(stack: Stack, private_tmp: Path) -> None:
    async def main() -> Path:
        async with unionfs.mount_async(stack.lowers) as tree:
            assert mounts.mount_type(tree) == "fuse.pyunion"
            (tree / "new.txt").write_text("async")
            await trio.sleep(0)
            assert (tree / "new.txt").read_text() == "async"
            return tree

    tree = trio.run(main)
    assert_gone(tree)
    assert not (stack.l1 / "new.txt").exists()
    assert_nothing_left(private_tmp)


@pytest.mark.parametrize("when", ["in the body", "while mounting"])
def test_mount_async_cleanup_on_cancel(stack: Stack, private_tmp: Path, when: str) -> None:
    """A cancelled ``async with`` unmounts, also when the cancel comes before the mount is up."""
    trees: list[Path] = []

    async def main() -> bool:
        with trio.move_on_after(0.01 if when == "while mounting" else 60) as scope:
            async with unionfs.mount_async(stack.lowers) as tree:
                trees.append(tree)
                scope.deadline = min(scope.deadline, trio.current_time() + 0.3)
                await trio.sleep(60)
        return scope.cancelled_caught

    assert trio.run(main)
    assert len(trees) == 1
    assert_gone(trees[0])
    assert_nothing_left(private_tmp)


def mount_cycles(lowers: list[str], tmpdir: str, label: str, count: int) -> list[str]:
    """``count`` mount/write/read/unmount cycles; returns the mountpoints (runs in workers)."""
    tempfile.tempdir = tmpdir  # for spawned processes (no-op in threads: already set)
    trees = []
    for i in range(count):
        with unionfs.mount(lowers) as tree:
            name = f"{label}-{i}.txt"
            (tree / name).write_text(name)
            assert sorted(os.listdir(tree)) == sorted(["a.txt", "b.txt", "dir", name])
            assert (tree / "a.txt").read_text() == "a1"
        assert not mounts.is_mounted(tree)
        trees.append(str(tree))
    return trees


def check_cycles(results: list[list[str]], stack: Stack, private_tmp: Path) -> None:
    trees = [Path(t) for batch in results for t in batch]
    assert len(set(trees)) == len(trees)
    for tree in trees:
        assert_gone(tree)
    assert sorted(os.listdir(stack.l1)) == ["a.txt"]
    assert_nothing_left(private_tmp)


def test_concurrent_mounts_from_threads(stack: Stack, private_tmp: Path) -> None:
    lowers = [str(p) for p in stack.lowers]
    barrier = threading.Barrier(4)

    def worker(n: int) -> list[str]:
        barrier.wait(timeout=CHILD_TIMEOUT)
        return mount_cycles(lowers, str(private_tmp), f"thread{n}", 3)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    assert [len(r) for r in results] == [3, 3, 3, 3]
    check_cycles(results, stack, private_tmp)


def test_concurrent_mounts_from_processes(stack: Stack, private_tmp: Path) -> None:
    lowers = [str(p) for p in stack.lowers]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
        futures = [pool.submit(mount_cycles, lowers, str(private_tmp), f"proc{n}", 3)
                   for n in range(3)]
        results = [f.result(timeout=120) for f in futures]
    assert [len(r) for r in results] == [3, 3, 3]
    check_cycles(results, stack, private_tmp)


def test_unmount_right_after_mount_is_clean(stack: Stack, private_tmp: Path) -> None:
    """Unmounting at once (a test that mounts and touches nothing) ends the daemon cleanly.

    The daemon must exit by itself with status 0 after SIGTERM, and the mount go away with it
    (not by the API's fallback, a lazy unmount after two seconds of waiting).
    """
    for _ in range(10):
        m = unionfs.Mount(stack.lowers)
        m.start()
        proc = m._proc  # the daemon's Popen: its exit status is the point of this test
        assert proc is not None
        started = time.monotonic()
        m.unmount()
        took = time.monotonic() - started
        assert proc.returncode == 0, f"daemon ended with {proc.returncode} (killed by signal?)"
        assert took < 1.0, f"unmount took {took:.2f} s"
    assert_nothing_left(private_tmp)


@pytest.mark.timeout(300)
def test_many_cycles_leave_nothing_behind(stack: Stack, private_tmp: Path,
                                          record_property: Callable[[str, object], None]) -> None:
    """200 mount/write/unmount cycles, as 200 tests using a throw-away tree each would do."""
    durations = []
    for i in range(CYCLES):
        started = time.monotonic()
        with unionfs.mount(stack.lowers) as tree:
            (tree / "b.txt").write_text(str(i))
        durations.append(time.monotonic() - started)
        assert not mounts.is_mounted(tree)
        assert not tree.parent.exists()
    assert_nothing_left(private_tmp)
    assert (stack.l2 / "b.txt").read_text() == "b"
    mean, worst = sum(durations) / len(durations), max(durations)
    record_property("cycle_seconds_mean", round(mean, 3))
    record_property("cycle_seconds_max", round(worst, 3))
    print(f"{CYCLES} cycles: {sum(durations):.1f} s, mean {mean:.3f} s, max {worst:.3f} s")
