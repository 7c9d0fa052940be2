"""Resource bounds: the daemon's memory and descriptors while a workload touches many files.

The workload stats every one of many distinct lower files, reads every 5th and copies up
every 20th (appending to it), in two halves (even-numbered files, then odd ones, so the second
half lists no directory the first did not), dropping the kernel's dentries and inodes every few
thousand files (``echo 2 > /proc/sys/vm/drop_caches``) so that the kernel sends FORGETs. The
daemon's VmRSS after the second half must be close to after the first (its memory follows what
the kernel holds, not how many files were ever touched), and its descriptor count must come
back to where it started, also after holding hundreds of files open at once.
"""

from __future__ import annotations

import os
import time

import pytest

from tests import mounts
from tests.stress.conftest import (
    daemon_mounted,
    daemon_usage,
    drop_caches,
    fresh_dir,
    settled_fds,
    size,
)
from unionfs.fs.operations import PYFUSE3_NO_OPEN

FILES = size(20_000, 100_000)
PER_DIR = 1000
DROP_EVERY = 5000
HELD_OPEN = size(300, 1000)


def _touch(mnt, parity: int) -> int:
    """Stats the files whose number has ``parity``, reads every 5th, appends to every 20th
    (copy-up); bytes read."""
    total = 0
    for i in range(parity, FILES, 2):
        path = mnt / f"d{i // PER_DIR}" / f"f{i}"
        os.stat(path)
        if i % 20 == 0:
            with open(path, "ab") as f:
                f.write(b"+")
        if i % 5 == 0:
            with open(path, "rb") as f:
                data = f.read()
            expected = f"{i}\n".encode() + (b"+" if i % 20 == 0 else b"")
            assert data == expected, f"{path}: {data!r}"
            total += len(data)
        if i % DROP_EVERY < 2:
            drop_caches()
    return total


def _settled_usage(pid: int) -> dict[str, int]:
    drop_caches()
    time.sleep(1.0)  # the FORGETs are handled
    return daemon_usage(pid)


@pytest.mark.timeout(size(180, 900))
def test_memory_and_fds_bounded(tmp_path, figures):
    lower, upper, mnt = (fresh_dir(tmp_path, n) for n in ("lower", "upper", "mnt"))
    for d in range((FILES + PER_DIR - 1) // PER_DIR):
        (lower / f"d{d}").mkdir()
    for i in range(FILES):
        with open(lower / f"d{i // PER_DIR}" / f"f{i}", "w") as f:
            f.write(f"{i}\n")
    with daemon_mounted([lower], upper, mnt) as proc:
        pid = proc.pid
        base = _settled_usage(pid)
        checked = _touch(mnt, 0)
        first = _settled_usage(pid)
        checked += _touch(mnt, 1)
        second = _settled_usage(pid)
        held = [os.open(mnt / f"d0/f{i}", os.O_RDONLY) for i in range(HELD_OPEN)]
        peak_fds = daemon_usage(pid)["fds"]
        for fd in held:
            os.close(fd)
        settled_fds(pid, base["fds"] + 2)  # RELEASE is asynchronous
        end = _settled_usage(pid)
    figures.update(base_fds=base["fds"], peak_fds=peak_fds, end_fds=end["fds"],
                   peak_rss_kib=end["hwm_kib"], ops=FILES, bytes_checked=checked)
    mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
    figures.note(f"{FILES:,} distinct files; RSS MiB base/half/end {mib(base['rss_kib'])}/"
                 f"{mib(first['rss_kib'])}/{mib(second['rss_kib'])}; {HELD_OPEN} held open")
    growth_first = first["rss_kib"] - base["rss_kib"]
    growth_second = second["rss_kib"] - first["rss_kib"]
    figures.note(f"first half +{growth_first} KiB ({growth_first * 1024 // FILES} B per lower "
                 f"name listed), second half +{growth_second} KiB")
    # The first half reads every directory's lower listing, which the daemon keeps for the
    # mount's life (lowers do not change): memory bounded by the lowers' size, ~100 B a name.
    assert growth_first <= FILES * 400 // 1024 + 4096, (
        f"daemon RSS grew {growth_first} KiB over {FILES} lower names")
    # The second half touches as many new files in the same directories: with the kernel's
    # FORGETs handled, the daemon holds no more than after the first.
    assert growth_second <= 0.5 * max(growth_first, 0) + 1024, (
        f"daemon RSS grew {growth_second} KiB in the second half after {growth_first} KiB in "
        "the first: memory follows the files ever touched, not what the kernel holds")
    if mounts.PASSTHROUGH:  # at most one each (read-only opens of lower files hold none)
        assert peak_fds <= base["fds"] + HELD_OPEN + 2, \
            f"{peak_fds - base['fds']} fds held for {HELD_OPEN} open files"
    elif PYFUSE3_NO_OPEN:  # files are used without handles: none stays open in the daemon
        assert peak_fds <= base["fds"] + 2, f"{peak_fds - base['fds']} fds held for open files"
    else:
        assert peak_fds >= base["fds"] + HELD_OPEN // 2, "the held files were not open in daemon"
    assert end["fds"] <= base["fds"] + 2, f"fds {base['fds']} at start, {end['fds']} at end"
