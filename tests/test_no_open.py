"""Files and directories used without open requests (the kernel's ``no_open`` and
``no_opendir``, with the pyfuse3 extension; unionfs/fs/inode_io.py): the kernel stops sending
``open``, ``release``, ``opendir`` and ``releasedir``, and everything ``open`` did for pyunion
still happens: copy-up at the first write, ``O_TRUNC``, reading the upper copy after another
process wrote, writing through a name that went, listings that follow changes. On a plain
pyfuse3 every open reaches the daemon, and the same operations give the same results."""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

from tests import mounts
from unionfs.fs.operations import PYFUSE3_NO_OPEN

FILES = 20


def _lower(root: Path) -> Path:
    lower = root / "lower"
    (lower / "d").mkdir(parents=True)
    for i in range(FILES):
        (lower / f"d/f{i}").write_bytes(f"lower {i}\n".encode())
    (lower / "big").write_bytes(b"x" * 3 * mmap.PAGESIZE)
    return lower


def _workload(mnt: Path) -> None:
    for _ in range(3):  # list and read every file three times
        assert sorted(os.listdir(mnt / "d")) == sorted(f"f{i}" for i in range(FILES))
        for i in range(FILES):
            assert (mnt / f"d/f{i}").read_bytes() == f"lower {i}\n".encode()
    reader = open(mnt / "d/f0", "rb")  # opened before another process writes
    with open(mnt / "d/f0", "ab") as f:  # copy-up at the first write
        f.write(b"appended\n")
    assert reader.read() == b"lower 0\nappended\n"
    reader.close()
    with open(mnt / "d/f1", "wb") as f:  # O_TRUNC of a lower file
        f.write(b"new\n")
    assert (mnt / "d/f1").read_bytes() == b"new\n"
    os.close(os.open(mnt / "d/f2", os.O_RDWR))  # opened for writing, never written
    with open(mnt / "big", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:  # shared mapping
        m[mmap.PAGESIZE:mmap.PAGESIZE + 5] = b"MMAP!"
        m.flush()
    fd = os.open(mnt / "d/f3", os.O_RDWR)  # written after its last name went
    try:
        os.unlink(mnt / "d/f3")
        os.pwrite(fd, b"LATE", 0)
        os.ftruncate(fd, 6)
        assert os.pread(fd, 100, 0) == b"LATEr "  # (b"lower 3\n")
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    (mnt / "d/new").write_bytes(b"new\n")  # a listing follows the changes
    expected = sorted([f"f{i}" for i in range(FILES) if i != 3] + ["new"])
    assert sorted(os.listdir(mnt / "d")) == expected


def test_files_and_directories_without_open_requests(tmp_path, upper_and_work, pyunion_daemon):
    lower = _lower(tmp_path)
    upper, _ = upper_and_work("p")
    stats = tmp_path / "stats.json"
    # no_open is the mode without passthrough (which needs open requests)
    mnt, proc = pyunion_daemon([lower], upper, options=[f"stats={stats}", mounts.NO_PASSTHROUGH])
    _workload(mnt)
    mounts.unmount(mnt, proc)
    counts = json.loads(stats.read_text())

    assert (upper / "d/f0").read_bytes() == b"lower 0\nappended\n"
    assert (upper / "d/f1").read_bytes() == b"new\n"
    big = (upper / "big").read_bytes()
    assert big[mmap.PAGESIZE:mmap.PAGESIZE + 5] == b"MMAP!" and len(big) == 3 * mmap.PAGESIZE
    assert os.path.lexists(upper / "d/f3") and not (upper / "d/f3").is_file()  # a whiteout
    assert not (lower / "d/f0").read_bytes().endswith(b"appended\n"), "the lower changed"
    opens = 3 * FILES + 7
    if PYFUSE3_NO_OPEN:
        # One open, answered ENOSYS; one create (the pyunion-mnt probe of the fixture may
        # make none): from then on the kernel sends neither.
        assert counts.get("open", 0) <= 1 and counts.get("release", 0) == 0, counts
        assert counts.get("opendir", 0) <= 1 and counts.get("releasedir", 0) == 0, counts
        assert not (upper / "d/f2").exists(), "opened for writing, never written: no copy-up"
    else:
        assert counts["open"] >= opens and counts["release"] >= opens, counts
        assert counts["opendir"] >= 4 and counts["releasedir"] >= 4, counts
