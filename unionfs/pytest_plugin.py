"""pytest plugin: the ``union_tree`` fixture (throw-away copy-on-write trees per test).

    def test_upgrade(union_tree):
        tree = union_tree("fixtures/app", "fixtures/base")  # lowers, top-most first
        (tree / "etc/app.conf").write_text("debug = true\\n")

Every call mounts a fresh pyunion tree over the lowers with a new, empty upper; the lowers are
never written. All trees of a test are unmounted and removed at its teardown, whatever the
outcome. Where FUSE is unavailable the test is skipped.

The terminal summary gets one line per test saying what it changed, read from the uppers
(kernel overlayfs on-disk format)::

    union_tree test_a.py::test_x: +etc/new ~etc/app.conf -var/log/old !var/cache/

``+`` added, ``~`` changed, ``-`` deleted (a whiteout), ``!`` replaced (an opaque directory:
its lower contents are hidden); directories end in ``/``; several trees of one test are
separated by `` | ``. The same text is the test's ``union_tree`` user property (junitxml).

``@pytest.mark.union_keep`` on a test, or ``--union-keep-failed`` for all, keeps the uppers of
a failed test under the pytest basetemp; the summary prints where.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unionfs.api import Mount

CHANGES_PROPERTY = "union_tree"
KEPT_PROPERTY = "union_tree_kept"
FUSE_DEVICE = "/dev/fuse"
FUSE_RDEV = os.makedev(10, 229)

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


# ---------------------------------------------------------------- hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyunion", "pyunion union_tree fixture")
    group.addoption(
        "--union-keep-failed", action="store_true", default=False,
        help="keep the upper directories of union_tree mounts of failed tests (paths are "
             "printed in the terminal summary)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "union_keep: keep this test's union_tree uppers if it fails",
    )
    config.pluginmanager.register(Summary(), "pyunion-union-tree-summary")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Remembers each phase's report, so the fixture's teardown knows whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


class Summary:
    """Collects the fixture's properties from teardown reports and prints them at the end.

    Reports, not fixtures, are the source: under pytest-xdist they reach the controller.
    """

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.kept: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == CHANGES_PROPERTY:
                self.changes.append((report.nodeid, str(value)))
            elif name == KEPT_PROPERTY:
                self.kept.append((report.nodeid, str(value)))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.changes and not self.kept:
            return
        terminalreporter.write_sep("-", "union_tree changes")
        for nodeid, value in self.changes:
            terminalreporter.write_line(f"union_tree {nodeid}: {value}")
        for nodeid, value in self.kept:
            terminalreporter.write_line(f"union_tree kept upper of {nodeid}: {value}")


# ---------------------------------------------------------------- the fixture


@pytest.fixture
def union_tree(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnionTrees]:
    """Factory ``union_tree(*lowers, options=()) -> Path``: a fresh copy-on-write tree per call.

    Lowers are listed top-most first. ``options`` are extra ``mount.pyunion -o`` options.
    """
    trees = UnionTrees(tmp_path_factory.getbasetemp())
    try:
        yield trees
    finally:
        keep = _keep_requested(request) and _failed(request.node)
        changes, kept = trees.close(keep=keep)
        if changes:
            request.node.user_properties.append((CHANGES_PROPERTY, " | ".join(changes)))
        if kept:
            request.node.user_properties.append((KEPT_PROPERTY, " ".join(map(str, kept))))


def _keep_requested(request: pytest.FixtureRequest) -> bool:
    return (request.config.getoption("union_keep_failed")
            or request.node.get_closest_marker("union_keep") is not None)


def _failed(item: pytest.Item) -> bool:
    reports = item.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@dataclass
class Tree:
    """One mounted tree: ``root`` (under the basetemp) holds ``upper``, its workdir, ``mnt``."""

    root: Path
    lowers: list[Path]
    mount: Mount

    @property
    def upper(self) -> Path:
        return self.root / "upper"


@dataclass(repr=False)
class UnionTrees:
    """The trees of one test (the fixture's value); ``close()`` unmounts, reports, removes."""

    basetemp: Path
    trees: list[Tree] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<union_tree factory: {len(self.trees)} tree(s)>"

    def __call__(self, *lowers: os.PathLike | str, options: Sequence[str] = ()) -> Path:
        """Mounts a fresh tree over ``lowers`` (top-most first) and returns its mountpoint."""
        if not lowers:
            raise TypeError("union_tree() needs at least one lower directory")
        reason = fuse_unavailable()
        if reason:
            pytest.skip(f"union_tree: FUSE is not available here: {reason}")
        root = Path(tempfile.mkdtemp(prefix="union-tree-", dir=self.basetemp))
        for name in ("upper", "mnt"):
            (root / name).mkdir()
        # The upper's workdir is the daemon's default, root/.upper.work.
        m = Mount(lowers, root / "upper", root / "mnt", options=options)
        self.trees.append(Tree(root, [Path(p).absolute() for p in lowers], m))
        return m.start()

    def close(self, *, keep: bool) -> tuple[list[str], list[Path]]:
        """Unmounts every tree (even if one fails); returns the change lines and kept uppers."""
        changes: list[str] = []
        kept: list[Path] = []
        errors: list[BaseException] = []
        for tree in self.trees:
            if not tree.mount.mounted:  # its start() failed: nothing to report
                shutil.rmtree(tree.root, ignore_errors=True)
                continue
            try:
                tree.mount.unmount()
            except BaseException as e:  # noqa: BLE001 - the other trees must still be unmounted
                errors.append(e)
                continue
            changes.append(" ".join(upper_changes(tree.upper, tree.lowers)) or "(no changes)")
            if keep:
                kept.append(tree.upper)
                for name in (".upper.work", "mnt"):
                    shutil.rmtree(tree.root / name, ignore_errors=True)
            else:
                shutil.rmtree(tree.root, ignore_errors=True)
        self.trees.clear()
        if errors:
            raise errors[0]
        return changes, kept


@functools.cache
def fuse_unavailable() -> str | None:
    """Why FUSE can't be used by this process, or None if it can."""
    try:
        st = os.stat(FUSE_DEVICE)
    except OSError as e:
        return f"{FUSE_DEVICE}: {e.strerror}"
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != FUSE_RDEV:
        return f"{FUSE_DEVICE} is not the FUSE device"
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return f"cannot open {FUSE_DEVICE}: {e.strerror}"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3 to mount with"
    return None


# ---------------------------------------------------------------- what a test changed


def upper_changes(upper: Path, lowers: Sequence[Path]) -> list[str]:
    """What an upper directory changes over its lowers: ``+added ~changed -deleted !replaced``.

    Read from the overlayfs on-disk format: a 0/0 character device is a whiteout; a directory
    with ``overlay.opaque=y`` replaces the directory below it (if there is none, it is added); a
    directory with ``overlay.redirect`` is a renamed lower directory (added at its new name,
    deleted at the old one); a directory that only merges with the one below is descended into,
    and changed itself only if its mode or owner differ. Lowers are searched top-most first for
    each path as overlayfs looks them up (whiteouts and opaque directories in lowers count).
    """
    return _scan(upper, Path(), list(lowers))


def _scan(upper: Path, rel: Path, lowers: list[Path]) -> list[str]:
    with os.scandir(upper / rel) as it:
        names = sorted(entry.name for entry in it)
    out: list[str] = []
    for name in names:
        out += _entry_changes(upper, rel / name, lowers)
    return out


def _entry_changes(upper: Path, path: Path, lowers: list[Path]) -> list[str]:
    st = os.lstat(upper / path)
    if _is_whiteout(st):
        return [f"-{path}"]
    below = _lower_stat(lowers, path)
    if not stat.S_ISDIR(st.st_mode):
        return [f"~{path}" if below else f"+{path}"]
    if below is None:  # (the kernel marks new directories opaque too: that hides nothing)
        return [f"+{path}/"]
    if (not stat.S_ISDIR(below.st_mode) or _overlay_xattr(upper / path, "opaque") == b"y"
            or _overlay_xattr(upper / path, "redirect")):
        return [f"!{path}/"]
    own = [f"~{path}/"] if _owner_mode(st) != _owner_mode(below) else []
    return own + _scan(upper, path, lowers)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lower_stat(lowers: list[Path], path: Path) -> os.stat_result | None:
    """What the lowers show at ``path`` (overlayfs lookup, top-most first), or None."""
    for lower in lowers:
        st = _lstat(lower / path)
        if st is not None:
            return None if _is_whiteout(st) else st
        if _hides_below(lower, path):
            return None
    return None


def _hides_below(lower: Path, path: Path) -> bool:
    """Whether ``lower`` ends the lookup of ``path``: a whiteout, file or opaque dir above it."""
    for parent in path.parents:
        if parent == Path():
            break
        st = _lstat(lower / parent)
        if st is not None and (not stat.S_ISDIR(st.st_mode)
                               or _overlay_xattr(lower / parent, "opaque") == b"y"):
            return True
    return False


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _overlay_xattr(path: Path, name: str) -> bytes | None:
    for namespace in ("trusted", "user"):
        with contextlib.suppress(OSError):
            return os.getxattr(path, f"{namespace}.overlay.{name}", follow_symlinks=False)
    return None


def _owner_mode(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_mode, st.st_uid, st.st_gid
