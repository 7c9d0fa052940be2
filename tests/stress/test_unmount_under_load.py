"""Unmount under load: the mount goes away while processes are writing and reading through it.

* SIGTERM to the daemon in the middle of the load: the daemon must exit (no hang), the mount
  must be gone, and every write a worker saw complete (fsync'ed) must be in the upper.
* a lazy unmount (``umount -l``) in the middle of the load: open files keep working until
  closed, then the daemon exits on its own; every completed write is in the upper.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from tests import mounts
from tests.stress.conftest import fresh_dir, size

WORKERS = 3


class Writer(threading.Thread):
    """Writes numbered records to a file of its own (a lower one, copied up), fsync after
    each; ``done`` is how many completed. Stops at the first error (the mount going away)."""

    def __init__(self, path, stop: threading.Event, hold_open: bool) -> None:
        super().__init__(daemon=True)
        self.path, self.stop, self.hold_open = path, stop, hold_open
        self.done = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                while not self.stop.is_set() or self.hold_open and self.done < 500:
                    os.write(fd, f"record {self.done:08d}\n".encode())
                    os.fsync(fd)
                    self.done += 1
                    if self.stop.is_set() and not self.hold_open:
                        break
            finally:
                os.close(fd)
        except OSError as e:
            self.error = e


def _records(path) -> int:
    lines = path.read_text().splitlines()
    assert lines[0] == "lower", f"{path}: lost its lower content"
    for i, line in enumerate(lines[1:]):
        assert line == f"record {i:08d}", f"{path}: line {i + 1} is {line!r}"
    return len(lines) - 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sigterm", "lazy-umount"])
def test_unmount_under_load(how, tmp_path, figures):
    lower, upper, mnt = (fresh_dir(tmp_path, n) for n in ("lower", "upper", "mnt"))
    for i in range(WORKERS):
        (lower / f"w{i}").write_text("lower\n")
    proc = mounts.start_pyunion(mounts.pyunion_command([lower], upper, mnt), mnt)
    stop = threading.Event()
    try:
        writers = [Writer(mnt / f"w{i}", stop, hold_open=how == "lazy-umount")
                   for i in range(WORKERS)]
        for w in writers:
            w.start()
        time.sleep(size(1.0, 3.0) * random.uniform(0.5, 1.0))
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=30)
            assert not mounts.is_mounted(mnt), "the lazy unmount left the mount in place"
        stop.set()
        for w in writers:
            w.join(timeout=60)
            assert not w.is_alive(), "a writer hung while the mount went away"
        proc.wait(timeout=30)  # the daemon ends: after the last file closes, for a lazy one
        assert not mounts.is_mounted(mnt)
    finally:
        mounts.unmount(mnt, proc)
        if proc.stderr:
            proc.stderr.close()
    done = [w.done for w in writers]
    found = [_records(upper / f"w{i}") for i in range(WORKERS)]
    for i, (d, f) in enumerate(zip(done, found, strict=True)):
        # each completed write is there; at most the one in flight more
        assert d <= f <= d + 1, f"w{i}: {d} writes completed, {f} in the upper"
    if how == "lazy-umount":
        errors = [w.error for w in writers if w.error]
        assert not errors, f"open files failed after a lazy unmount: {errors}"
    figures["ops"] = sum(done)
    figures.note(f"{how}: {sum(done)} fsync'ed appends by {WORKERS} writers, all in the upper; "
                 f"daemon exit status {proc.returncode}")
