"""The pytest plugin (``unionfs.pytest_plugin``): the ``union_tree`` fixture and its reports.

The fixture is exercised in real inner pytest sessions (``pytester.runpytest_subprocess``), so
its FUSE mounts happen in a separate process, as for a user; the outer test then checks that
nothing is left: no mount, no daemon, no tree directory, no temp dir. The change report's
reading of the overlayfs on-disk format is checked against kernel overlayfs uppers.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mounts
from tests.treesnap import snapshot
from unionfs.pytest_plugin import upper_changes

pytest_plugins = ["pytester"]

MANY = 200
INNER_TIMEOUT = 280.0
# Private mount namespaces (gone with their processes): one without /dev/fuse, one where
# /dev/fuse is the right device but on a nodev mount, so opening it fails with EACCES.
PRIVATE_NS = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
NO_DEV_FUSE = 'mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && exec "$@"'
NODEV_FUSE = ('mount -t tmpfs -o nodev none "$0" && mknod "$0/fuse" c 10 229'
              ' && mount --bind "$0/fuse" /dev/fuse && exec "$@"')
# What the change-making ops below leave in an upper, as the summary prints it.
EXPECTED_CHANGES = ["-data", "~etc/", "~etc/app.conf", "+etc/new", "+moved/", "+newdir/",
                    "!opt/dir/", "-var/log/old"]

CHANGE_OPS = """
def make_changes(tree):
    (tree / "etc/new").write_text("new")
    (tree / "etc/app.conf").write_text("changed")
    (tree / "etc").chmod(0o700)
    (tree / "var/log/old").unlink()
    shutil.rmtree(tree / "opt/dir")
    (tree / "opt/dir").mkdir()
    (tree / "newdir").mkdir()
    (tree / "newdir/file").write_text("f")
    os.rename(tree / "data", tree / "moved")
"""


def make_changes(tree: Path) -> None:
    """The operations of ``CHANGE_OPS`` (which inner tests run), for the outer tests."""
    namespace: dict = {"os": os, "shutil": shutil}
    exec(CHANGE_OPS, namespace)  # one text for both, so they can't drift apart
    namespace["make_changes"](tree)


def make_lower(path: Path) -> Path:
    for rel, text in [("etc/app.conf", "orig"), ("var/log/old", "old"),
                      ("opt/dir/x", "x"), ("data/keep.txt", "keep"), ("top.txt", "top")]:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    (path / "etc").chmod(0o755)
    return path


@dataclass
class Inner:
    """An inner pytest session's playground: a lower, a private TMPDIR, and checks."""

    pytester: pytest.Pytester
    lower: Path
    tmpdir: Path

    def write_tests(self, name: str, body: str, prelude: str = "") -> Path:
        """A test module with ``LOWER`` (the lower's path) and common imports."""
        header = f"import os, shutil, signal, time\nimport pytest\nLOWER = {str(self.lower)!r}\n"
        text = header + prelude + textwrap.dedent(body)
        return self.pytester.makepyfile(**{name: text})

    def run(self, *args: str, timeout: float = INNER_TIMEOUT) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess("-p", "no:cacheprovider", *args,
                                                  timeout=timeout)

    def assert_nothing_left(self, kept: int = 0) -> None:
        """No mounts, daemons or temp dirs; only ``kept`` tree dirs (kept uppers) remain."""
        base = os.path.realpath(self.pytester.path)
        assert [p for p in mounts.mounted_paths() if p.startswith(base + os.sep)] == []
        assert daemons_below(self.pytester.path) == []
        assert os.listdir(self.tmpdir) == []
        trees = list(self.pytester.path.rglob("union-tree-*"))
        assert len(trees) == kept, trees
        for tree in trees:
            assert sorted(os.listdir(tree)) == ["upper"]


def daemons_below(path: Path) -> list[int]:
    """Pids of other processes with an argument inside ``path`` (a pyunion daemon's mountpoint)."""
    base = os.fsencode(os.path.realpath(path)) + b"/"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")[1:]
            except OSError:
                continue
            if any(arg.startswith(base) for arg in args):
                found.append(int(entry))
    return found


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Inner:
    tmpdir = pytester.path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # inherited by the inner pytest
    return Inner(pytester, make_lower(pytester.path / "lower"), tmpdir)


def summary_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("union_tree ")]


def kept_paths(result: pytest.RunResult) -> dict[str, Path]:
    """nodeid -> kept upper, from the summary's ``union_tree kept upper of ...`` lines."""
    prefix = "union_tree kept upper of "
    out = {}
    for line in summary_lines(result):
        if line.startswith(prefix):
            nodeid, _, path = line.removeprefix(prefix).partition(": ")
            out[nodeid] = Path(path)
    return out


# ---------------------------------------------------------------- the change report itself


def test_upper_changes_reads_kernel_overlay_upper(tmp_path: Path, overlay) -> None:
    """The report's reading of the on-disk format, on an upper written by kernel overlayfs."""
    lower = make_lower(tmp_path / "lower")
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    make_changes(overlay([lower], upper, work, mnt))
    assert upper_changes(upper, [lower]) == EXPECTED_CHANGES


def test_upper_changes_same_for_pyunion_and_kernel(tmp_path: Path, overlay, pyunion) -> None:
    """The same operations leave uppers that read the same (differential, against the kernel)."""
    lower = make_lower(tmp_path / "lower")
    results = []
    for name, mount in [("kernel", overlay), ("pyunion", pyunion)]:
        upper, work, mnt = (tmp_path / f"{name}-{d}" for d in ("upper", "work", "mnt"))
        for d in (upper, work, mnt):
            d.mkdir()
        if name == "kernel":
            make_changes(mount([lower], upper, work, mnt))
        else:
            make_changes(mount([lower], upper, mnt, options=[f"workdir={work}"]))
        results.append(upper_changes(upper, [lower]))
    assert results[1] == results[0]


def test_upper_changes_searches_lowers_top_first(tmp_path: Path) -> None:
    """What a higher lower hides (whiteout, opaque dir, file over a dir) is not "below" a path.

    The lowers are overlayfs-format layers (as in images); the result is checked against the
    kernel: what a read-only kernel overlay of the lowers shows at each path.
    """
    upper, top, bottom = (tmp_path / n for n in ("upper", "top", "bottom"))
    for rel in ("gone.txt", "kept.txt", "opq/x", "file/y"):
        (bottom / rel).parent.mkdir(parents=True, exist_ok=True)
        (bottom / rel).write_text("bottom")
    top.mkdir()
    os.mknod(top / "gone.txt", 0o600 | stat.S_IFCHR, 0)  # a whiteout
    (top / "opq").mkdir()
    os.setxattr(top / "opq", "trusted.overlay.opaque", b"y")
    (top / "file").write_text("a file over bottom's directory")
    for rel in ("gone.txt", "kept.txt", "opq/x", "file/y"):
        (upper / rel).parent.mkdir(parents=True, exist_ok=True)
        (upper / rel).write_text("upper")
    visible = [rel for rel in ("gone.txt", "kept.txt", "opq", "opq/x", "file")
               if kernel_lower_view(tmp_path, [top, bottom], rel)]
    assert visible == ["kept.txt", "opq", "file"]
    assert upper_changes(upper, [top, bottom]) == ["!file/", "+gone.txt", "~kept.txt", "+opq/x"]


def kernel_lower_view(tmp_path: Path, lowers: list[Path], rel: str) -> bool:
    """Whether a read-only kernel overlay of ``lowers`` shows ``rel``."""
    mnt = tmp_path / "view"
    mnt.mkdir(exist_ok=True)
    with mounts.overlay_mounted(lowers, None, None, mnt):
        return os.path.lexists(mnt / rel)


# ---------------------------------------------------------------- inner sessions


def test_tree_is_writable_and_lower_untouched(inner: Inner) -> None:
    before = snapshot(inner.lower)
    inner.write_tests("test_write", """
        def test_write(union_tree):
            tree = union_tree(LOWER)
            assert str(tree) != LOWER
            assert (tree / "etc/app.conf").read_text() == "orig"
            (tree / "etc/app.conf").write_text("changed")
            (tree / "etc/new").write_text("new")
            (tree / "var/log/old").unlink()
            assert (tree / "etc/app.conf").read_text() == "changed"
            assert sorted(os.listdir(tree / "etc")) == ["app.conf", "new"]
            assert not (tree / "var/log/old").exists()
            assert open(LOWER + "/etc/app.conf").read() == "orig"
            mountpoints = [line.split()[4] for line in open("/proc/self/mountinfo")]
            assert str(tree) in mountpoints
    """)
    result = inner.run()
    result.assert_outcomes(passed=1)
    assert snapshot(inner.lower) == before
    inner.assert_nothing_left()


def test_trees_are_independent(inner: Inner) -> None:
    """Each test, and each call within one test, gets its own empty upper."""
    inner.write_tests("test_indep", """
        def test_a(union_tree):
            tree = union_tree(LOWER)
            assert not (tree / "marker").exists()
            (tree / "marker").write_text("a")

        def test_b(union_tree):
            tree = union_tree(LOWER)
            assert not (tree / "marker").exists()
            (tree / "marker").write_text("b")

        def test_two_in_one(union_tree):
            one, two = union_tree(LOWER), union_tree(LOWER)
            assert one != two
            (one / "top.txt").unlink()
            (two / "only-two").write_text("2")
            assert (two / "top.txt").read_text() == "top"
            assert not (one / "only-two").exists()
    """)
    result = inner.run()
    result.assert_outcomes(passed=3)
    assert sorted(summary_lines(result)) == [
        "union_tree test_indep.py::test_a: +marker",
        "union_tree test_indep.py::test_b: +marker",
        "union_tree test_indep.py::test_two_in_one: -top.txt | +only-two",
    ]
    inner.assert_nothing_left()


def test_summary_and_user_property_list_changes(inner: Inner) -> None:
    inner.write_tests("test_changes", prelude=CHANGE_OPS, body="""
        def test_changes(union_tree):
            make_changes(union_tree(LOWER))

        def test_nothing(union_tree):
            union_tree(LOWER)

        def test_without_fixture():
            pass
    """)
    result = inner.run("--junitxml=report.xml")
    result.assert_outcomes(passed=3)
    expected = " ".join(EXPECTED_CHANGES)
    assert summary_lines(result) == [
        f"union_tree test_changes.py::test_changes: {expected}",
        "union_tree test_changes.py::test_nothing: (no changes)",
    ]
    props = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
             for case in ET.parse(inner.pytester.path / "report.xml").iter("testcase")}
    assert props["test_changes"] == {"union_tree": expected}
    assert props["test_nothing"] == {"union_tree": "(no changes)"}
    assert props["test_without_fixture"] == {}
    inner.assert_nothing_left()


KEEP_TESTS = """
    @pytest.mark.union_keep
    def test_marked_fails(union_tree):
        (union_tree(LOWER) / "etc/new").write_text("marked")
        assert False

    def test_unmarked_fails(union_tree):
        (union_tree(LOWER) / "etc/new").write_text("unmarked")
        assert False

    @pytest.mark.union_keep
    def test_marked_passes(union_tree):
        (union_tree(LOWER) / "etc/new").write_text("passes")
"""


@pytest.mark.parametrize("option", [False, True], ids=["marker", "option"])
def test_keep_failed_keeps_upper(inner: Inner, option: bool) -> None:
    """The marker keeps a failed test's upper; ``--union-keep-failed`` keeps every failed one."""
    inner.write_tests("test_keep", KEEP_TESTS)
    result = inner.run(*(["--union-keep-failed"] if option else []))
    result.assert_outcomes(passed=1, failed=2)
    kept = kept_paths(result)
    expected = {"test_keep.py::test_marked_fails": "marked"}
    if option:
        expected["test_keep.py::test_unmarked_fails"] = "unmarked"
    assert sorted(kept) == sorted(expected)
    basetemp = os.path.realpath(next(inner.pytester.path.glob("runpytest-*")))
    for nodeid, text in expected.items():
        assert kept[nodeid].name == "upper"
        assert os.path.realpath(kept[nodeid]).startswith(basetemp + os.sep)
        assert (kept[nodeid] / "etc/new").read_text() == text
        assert os.listdir(kept[nodeid]) == ["etc"]
    inner.assert_nothing_left(kept=len(expected))


def test_interrupted_session_unmounts(inner: Inner) -> None:
    """Ctrl-C during a test: the inner pytest still tears the fixture down before exiting."""
    ready = inner.pytester.path / "tree-path"
    inner.write_tests("conftest", """
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    """)
    inner.write_tests("test_interrupt", f"""
        def test_waits(union_tree):
            tree = union_tree(LOWER)
            (tree / "etc/new").write_text("x")
            with open({str(ready)!r} + ".tmp", "w") as f:
                f.write(str(tree))
            os.rename({str(ready)!r} + ".tmp", {str(ready)!r})
            time.sleep(120)
    """)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:timeout",
           f"--basetemp={inner.pytester.path / 'basetemp'}", "test_interrupt.py"]
    with subprocess.Popen(cmd, cwd=inner.pytester.path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        try:
            tree = Path(wait_for_file(ready, proc.poll))
            assert mounts.is_mounted(tree)
            os.kill(proc.pid, signal.SIGINT)
            output = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    assert not mounts.is_mounted(tree)
    inner.assert_nothing_left()


def wait_for_file(path: Path, finished: Callable[[], int | None], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert finished() is None, "the inner pytest ended early"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    return path.read_text()


@pytest.mark.parametrize(("script", "reason"), [
    (NO_DEV_FUSE, "/dev/fuse: No such file or directory"),
    (NODEV_FUSE, "cannot open /dev/fuse: Permission denied"),
], ids=["no-device", "no-permission"])
def test_skips_where_fuse_is_unavailable(inner: Inner, script: str, reason: str) -> None:
    inner.write_tests("test_nofuse", """
        def test_needs_fuse(union_tree):
            union_tree(LOWER)
    """)
    scratch = inner.pytester.path / "scratch"
    scratch.mkdir()
    result = inner.pytester.run(
        *PRIVATE_NS, script, str(scratch), sys.executable, "-m", "pytest",
        "-p", "no:cacheprovider", "-rs", f"--basetemp={inner.pytester.path / 'basetemp'}",
        "test_nofuse.py", timeout=INNER_TIMEOUT)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED *union_tree: FUSE is not available here: {reason}"])
    assert os.listdir(scratch) == []  # the nodev tmpfs was only in the private namespace
    inner.assert_nothing_left()


@pytest.mark.timeout(300)
def test_many_tests_leave_nothing_behind(inner: Inner) -> None:
    """200 tiny tests, each with its own tree: every mount and directory is cleaned up."""
    inner.write_tests("test_many", f"""
        @pytest.mark.parametrize("i", range({MANY}))
        def test_tiny(union_tree, i):
            (union_tree(LOWER) / f"n{{i}}").write_text(str(i))
    """)
    started = time.monotonic()
    result = inner.run()
    took = time.monotonic() - started
    result.assert_outcomes(passed=MANY)
    lines = summary_lines(result)
    assert len(lines) == MANY
    assert "union_tree test_many.py::test_tiny[7]: +n7" in lines
    inner.assert_nothing_left()
    print(f"inner session of {MANY} tests: {took:.1f} s ({took / MANY:.3f} s per test)")


def test_xdist_workers_have_their_own_trees(inner: Inner) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    inner.write_tests("test_par", """
        @pytest.mark.parametrize("i", range(6))
        def test_par(union_tree, i):
            tree = union_tree(LOWER)
            assert os.environ["PYTEST_XDIST_WORKER"] in str(tree)  # the worker's own basetemp
            assert not (tree / "mine").exists()
            (tree / "mine").write_text(str(i))
            time.sleep(0.2)
            assert (tree / "mine").read_text() == str(i)

        @pytest.mark.union_keep
        def test_fails(union_tree):
            (union_tree(LOWER) / "etc/new").write_text("failed")
            assert False
    """)
    result = inner.run("-n", "2")
    result.assert_outcomes(passed=6, failed=1)
    lines = summary_lines(result)
    for i in range(6):
        assert f"union_tree test_par.py::test_par[{i}]: +mine" in lines
    assert "union_tree test_par.py::test_fails: +etc/new" in lines
    kept = kept_paths(result)["test_par.py::test_fails"]
    assert (kept / "etc/new").read_text() == "failed"
    assert "popen-gw" in str(kept)
    inner.assert_nothing_left(kept=1)
