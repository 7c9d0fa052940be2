"""Stress suite: one knob picks the mode, every test records what it ran in a figures table.

``PYUNION_STRESS=long`` (what ``make stress`` sets) runs every test at length; otherwise the
short version runs, as part of ``make test``. Tests ask ``size(short, long)`` for their figures.

``figures`` (per test) collects what a test ran and found — operations, bytes checked, crashes
injected, the daemon's peak RSS and fd count, stressors — and the terminal summary prints them
as one table (also written as JSON to ``$PYUNION_STRESS_REPORT`` when set).

``stress_mount(lowers, upper, mnt=None, options=())`` mounts a foreground ``mount.pyunion``
and returns ``(mnt, proc)``: ``proc.pid`` is the daemon itself (crash and resource tests).
It goes through tests/mounts.py (``start_pyunion``/``unmount``: unmount, then lazy unmount as
the last resort; only our own pid is ever signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import mounts
from tests.conftest import fresh_dir

MODE = "long" if os.environ.get("PYUNION_STRESS", "").strip().lower() == "long" else "short"
LONG = MODE == "long"
KERNEL_OPTIONS = ("redirect_dir=on", "index=on")
BUSY_RETRY_SECONDS = 30.0


def size(short: Any, long: Any) -> Any:
    """The figure for the current mode."""
    return long if LONG else short


# -- figures ----------------------------------------------------------------------------------

_ROWS: list[dict[str, Any]] = []
COLUMNS = (
    ("test", "test"),
    ("seconds", "s"),
    ("ops", "operations"),
    ("bytes_checked", "bytes checked"),
    ("kills", "crashes injected"),
    ("peak_rss_kib", "daemon peak RSS"),
    ("fds", "daemon fds (base/peak/end)"),
    ("notes", "stressors / notes"),
)


class Figures(dict):
    """What one test ran and found; ``add`` sums, item assignment sets."""

    def add(self, key: str, amount: int | float) -> None:
        self[key] = self.get(key, 0) + amount

    def note(self, text: str) -> None:
        self["notes"] = f"{self['notes']}; {text}" if self.get("notes") else text

    def daemon(self, pid: int) -> dict[str, int]:
        """Reads the daemon's memory and fds now; keeps the peaks in the figures."""
        usage = daemon_usage(pid)
        if usage:
            self["peak_rss_kib"] = max(self.get("peak_rss_kib", 0), usage["hwm_kib"])
            self["peak_fds"] = max(self.get("peak_fds", 0), usage["fds"])
        return usage


@pytest.fixture
def figures(request) -> Iterator[Figures]:
    fig = Figures(test=request.node.name)
    start = time.monotonic()
    yield fig
    fig["seconds"] = round(time.monotonic() - start, 1)
    _ROWS.append(fig)


def daemon_usage(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and the number of open fds of a live process; {} once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return {}
    kib = lambda key: int(status[key].split()[0])  # noqa: E731
    return {"rss_kib": kib("VmRSS"), "hwm_kib": kib("VmHWM"), "fds": fds}


def settled_fds(pid: int, at_most: int, timeout: float = 10.0) -> int:
    """The daemon's fd count once it is at most ``at_most`` (RELEASE is asynchronous: closed
    files are let go a moment later), or what it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        fds = daemon_usage(pid).get("fds", 0)
        if fds <= at_most or time.monotonic() > deadline:
            return fds
        time.sleep(0.05)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "fds":
        parts = [row.get(k) for k in ("base_fds", "peak_fds", "end_fds")]
        return "/".join("-" if p is None else str(p) for p in parts) if any(
            p is not None for p in parts) else ""
    if value is None:
        return ""
    if key == "bytes_checked":
        return _human_bytes(int(value))
    if key == "peak_rss_kib":
        return f"{value / 1024:.0f} MiB"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _ROWS:
        return
    table = [[title for _, title in COLUMNS]]
    table += [[_cell(row, key) for key, _ in COLUMNS] for row in _ROWS]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
    tr = terminalreporter
    tr.section(f"pyunion stress figures ({MODE} mode)")
    for i, row in enumerate(table):
        tr.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                      + "  " + row[-1])
        if i == 0:
            tr.write_line("-" * (sum(widths) + 2 * len(widths) + len(COLUMNS[-1][1])))
    report = os.environ.get("PYUNION_STRESS_REPORT")
    if report:
        Path(report).write_text(json.dumps({"mode": MODE, "rows": _ROWS}, indent=1,
                                           default=str) + "\n")


# -- mounts -----------------------------------------------------------------------------------




@contextlib.contextmanager
def daemon_mounted(lowers: Sequence[os.PathLike | str], upper: os.PathLike | str,
                   mnt: os.PathLike | str, options: Sequence[str] = (),
                   exit_timeout: float | None = None) -> Iterator[subprocess.Popen]:
    """A foreground pyunion daemon (its Popen) for the block; always unmounted afterwards,
    also when the test killed the daemon (a dead FUSE mount unmounts fine).

    ``exit_timeout``: how long the daemon may take to exit after the unmount, if longer than
    tests/mounts.py allows; ``proc.exit_seconds`` then says how long it took.
    """
    proc = mounts.start_pyunion(mounts.pyunion_command(lowers, upper, mnt, options), mnt)
    try:
        yield proc
    finally:
        try:
            if exit_timeout is not None:
                mounts.unmount(mnt)
                start = time.monotonic()
                try:
                    proc.wait(timeout=exit_timeout)
                finally:
                    proc.exit_seconds = time.monotonic() - start
            mounts.unmount(mnt, proc)
        finally:
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def stress_mount(mount_stack, tmp_path):
    """Factory ``stress_mount(lowers, upper, mnt=None, options=()) -> (mnt, proc)``."""

    def mount(lowers, upper, mnt=None, options=()):
        mnt = Path(mnt) if mnt is not None else fresh_dir(tmp_path, "mnt")
        proc = mount_stack.enter_context(daemon_mounted(lowers, upper, mnt, options))
        return mnt, proc

    return mount


@contextlib.contextmanager
def kernel_overlay(lowers: Sequence[os.PathLike | str], upper: os.PathLike | str,
                   base: Path) -> Iterator[Path]:
    """Kernel overlayfs (redirect_dir=on,index=on) over ``upper`` with a fresh workdir, retried
    while a layer is still "in use" (another mount namespace on the machine holding a copy)."""
    work, mnt = fresh_dir(base, "kwork"), fresh_dir(base, "kmnt")
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    while True:
        try:
            cm = mounts.overlay_mounted(lowers, upper, work, mnt, KERNEL_OPTIONS)
            path = cm.__enter__()
            break
        except mounts.MountError as e:
            if "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        yield path
    finally:
        cm.__exit__(None, None, None)


def drop_caches() -> None:
    """Dentries and inodes (the kernel then sends FORGETs); not the page cache of others."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
