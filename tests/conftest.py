"""Shared fixtures: every test mount goes through the factories below, which unmount on teardown."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import mounts


@pytest.fixture
def mount_stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def pyunion(mount_stack, tmp_path):
    """Factory: ``pyunion(lowers, upper, mnt=None, options=())`` mounts pyunion, returns the mnt.

    ``upper=None`` gives a read-only merged view. The mount is undone at teardown.
    """

    def mount(
        lowers: Sequence[os.PathLike | str],
        upper: os.PathLike | str | None,
        mnt: os.PathLike | str | None = None,
        options: Sequence[str] = (),
    ) -> Path:
        if mnt is None:
            mnt = fresh_dir(tmp_path, "pyunion-mnt")
        return mount_stack.enter_context(mounts.pyunion_mounted(lowers, upper, mnt, options))

    return mount


@pytest.fixture
def pyunion_daemon(mount_stack, tmp_path):
    """Factory like ``pyunion`` that returns ``(mnt, proc)``: the foreground daemon's Popen.

    For tests that signal or kill the daemon (crash tests). Teardown unmounts whatever is left
    (a dead FUSE mount unmounts fine) and waits for the process.
    """

    def mount(lowers, upper, mnt=None, options=()):
        if mnt is None:
            mnt = fresh_dir(tmp_path, "pyunion-mnt")
        proc = mounts.start_pyunion(mounts.pyunion_command(lowers, upper, mnt, options), mnt)
        mount_stack.callback(mounts.unmount, mnt, proc)
        return Path(mnt), proc

    return mount


@pytest.fixture
def overlay(mount_stack, tmp_path):
    """Factory: ``overlay(lowers, upper, workdir, mnt=None, options=...)``: kernel overlayfs."""

    def mount(lowers, upper, workdir, mnt=None, options=("redirect_dir=on", "index=on")) -> Path:
        if mnt is None:
            mnt = fresh_dir(tmp_path, "overlay-mnt")
        return mount_stack.enter_context(
            mounts.overlay_mounted(lowers, upper, workdir, mnt, options)
        )

    return mount


@pytest.fixture
def fuse_overlayfs(mount_stack, tmp_path):
    """Factory: ``fuse_overlayfs(lowers, upper, workdir, mnt=None)`` mounts fuse-overlayfs."""

    def mount(lowers, upper, workdir, mnt=None) -> Path:
        if mnt is None:
            mnt = fresh_dir(tmp_path, "fuse-overlayfs-mnt")
        return mount_stack.enter_context(
            mounts.fuse_overlayfs_mounted(lowers, upper, workdir, mnt)
        )

    return mount


@pytest.fixture
def upper_and_work(tmp_path):
    """Factory: ``upper_and_work(name) -> (upper, workdir)``, two new empty dirs."""

    def make(name: str) -> tuple[Path, Path]:
        upper, work = tmp_path / f"{name}-upper", tmp_path / f"{name}-work"
        upper.mkdir()
        work.mkdir()
        return upper, work

    return make


def fresh_dir(parent: Path, stem: str) -> Path:
    """A new directory ``<stem>-<n>`` in ``parent``."""
    for i in range(100000):
        path = parent / f"{stem}-{i}"
        if not path.exists():
            path.mkdir()
            return path
    raise RuntimeError(f"no free directory name for {stem} in {parent}")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_mounted(tmp_path_factory) -> Iterator[None]:
    """Fails the session if any test left a mount behind under this session's temp dir."""
    base = os.path.realpath(tmp_path_factory.getbasetemp())
    yield
    left = sorted(p for p in mounts.mounted_paths() if p.startswith(base + os.sep))
    for point in left:
        mounts.unmount(point)
    assert not left, f"tests left these mounted: {left}"
