"""Data integrity under random I/O: an fsx-style exerciser and fio verify workloads.

The exerciser works on files that start in a lower layer (some with holes) and are copied up
mid-run (each file is only read until a random point, then its first write copies it up). It
does random reads (through a descriptor opened before the copy-up, through one opened after,
through mmap), writes, appends, truncates up and down (holes), writes past the end of the file
(holes), writes through a shared mmap, fsyncs and reopenings, and checks every byte read
against an in-memory model. After unmounting, the upper copies must equal the model and the
lower files must be unchanged.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import mounts
from tests.stress.conftest import (
    LONG,
    daemon_mounted,
    drop_caches,
    fresh_dir,
    settled_fds,
    size,
)

FILES = size(4, 6)
MAXLEN = size(1 << 20, 4 << 20)
OPS = size(6_000, 100_000)
MIN_BYTES_CHECKED = size(64 << 20, 1 << 30)
FULL_CHECK_EVERY = size(300, 600)  # ops between full-file comparisons of every file
MAX_IO = 64 << 10


def _sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_lower_file(path: Path, rng: random.Random) -> bytes:
    """A lower file of random length with random data and holes; returns its content."""
    length = rng.randrange(MAXLEN // 4, MAXLEN)
    content = bytearray(length)
    with open(path, "wb") as f:
        for _ in range(rng.randrange(2, 8)):  # data extents; the rest stays a hole
            off = rng.randrange(0, length)
            n = min(rng.randrange(1, 256 << 10), length - off)
            data = rng.randbytes(n)
            content[off:off + n] = data
            f.seek(off)
            f.write(data)
        f.truncate(length)
    return bytes(content)


class Mismatch(AssertionError):
    pass


class FsxFile:
    """One file under test and its model; descriptors are opened as the run goes."""

    def __init__(self, mnt: Path, name: str, initial: bytes, frozen_until: int) -> None:
        self.path = str(mnt / name)
        self.name = name
        self.model = bytearray(initial)
        self.frozen_until = frozen_until  # only reads before this op: copy-up comes mid-run
        self.early_fd = os.open(self.path, os.O_RDONLY)  # opened on the lower copy
        self.rw_fd: int | None = None
        self.append_fd: int | None = None

    def rw(self) -> int:
        if self.rw_fd is None:
            self.rw_fd = os.open(self.path, os.O_RDWR)  # the first one copies up
        return self.rw_fd

    def appender(self) -> int:
        if self.append_fd is None:
            self.append_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return self.append_fd

    def close_writers(self) -> None:
        for fd in (self.rw_fd, self.append_fd):
            if fd is not None:
                os.close(fd)
        self.rw_fd = self.append_fd = None

    def close(self) -> None:
        self.close_writers()
        os.close(self.early_fd)


class Exerciser:
    def __init__(self, files: list[FsxFile], rng: random.Random) -> None:
        self.files = files
        self.rng = rng
        self.checked = 0
        self.counts: dict[str, int] = {}
        self.log: list[str] = []
        self.op_index = 0

    def fail(self, f: FsxFile, what: str) -> None:
        recent = "\n  ".join(self.log[-25:])
        raise Mismatch(f"op {self.op_index} on {f.name}: {what}\nlast ops:\n  {recent}")

    def compare(self, f: FsxFile, off: int, got: bytes, how: str) -> None:
        want = bytes(f.model[off:off + len(got)]) if off < len(f.model) else b""
        expected_len = max(0, min(len(f.model) - off, len(got)))
        if len(got) != expected_len or got != want[:len(got)]:
            first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                         min(len(got), len(want)))
            self.fail(f, f"{how} at {off}: got {len(got)} bytes, model has {len(want)}; "
                         f"first difference at +{first} (file size {len(f.model)})")
        self.checked += len(got)

    def read_back(self, f: FsxFile, off: int, n: int, fd: int, how: str) -> None:
        got = os.pread(fd, n, off)
        want_len = max(0, min(n, len(f.model) - off))
        if len(got) != want_len:
            self.fail(f, f"{how} at {off} len {n}: short read {len(got)} != {want_len}")
        self.compare(f, off, got, how)

    def full_check(self, f: FsxFile) -> None:
        fd = os.open(f.path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if st.st_size != len(f.model):
                self.fail(f, f"size {st.st_size} != model {len(f.model)}")
            data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        finally:
            os.close(fd)
        self.compare(f, 0, data, "full read")
        if os.fstat(f.early_fd).st_size != len(f.model):
            self.fail(f, "size through the early descriptor differs")

    def skip(self) -> None:
        self.op_index += 1

    def step(self) -> None:
        rng, f = self.rng, self.rng.choice(self.files)
        frozen = self.op_index < f.frozen_until
        ops = ["read", "early_read", "mmap_read"]
        if not frozen:
            ops += ["write"] * 4 + ["append", "truncate", "mmap_write", "hole_write", "fsync",
                                    "reopen"]
        kind = rng.choice(ops)
        size_now = len(f.model)
        off = rng.randrange(0, size_now + 1) if size_now else 0
        n = rng.randrange(1, MAX_IO)
        self.log.append(f"{self.op_index} {f.name} {kind} off={off} n={n} size={size_now}")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "read":
            self.read_back(f, off, n, f.rw_fd if f.rw_fd is not None else f.early_fd, kind)
        elif kind == "early_read":
            self.read_back(f, off, n, f.early_fd, kind)
        elif kind == "mmap_read":
            if size_now:
                off = min(off, size_now - 1)
                with mmap.mmap(f.early_fd, size_now, prot=mmap.PROT_READ) as m:
                    got = m[off:off + n]
                self.compare(f, off, got, kind)
        elif kind in ("write", "hole_write"):
            if kind == "hole_write":  # past the end: a hole between the old end and the data
                off = size_now + rng.randrange(1, 256 << 10)
            if off + n > MAXLEN:
                n = max(0, MAXLEN - off)
            if n == 0:
                return self.skip()
            data = rng.randbytes(n)
            if os.pwrite(f.rw(), data, off) != n:
                self.fail(f, "short write")
            if off > len(f.model):
                f.model.extend(bytes(off - len(f.model)))
            f.model[off:off + n] = data
            if rng.random() < 0.3:
                self.read_back(f, off, n, f.rw(), "read after write")
        elif kind == "append":
            if size_now + n > MAXLEN:
                n = max(0, MAXLEN - size_now)
            data = rng.randbytes(n)
            if os.write(f.appender(), data) != n:
                self.fail(f, "short append")
            f.model.extend(data)
        elif kind == "truncate":
            new = rng.randrange(0, MAXLEN) if rng.random() < 0.5 else rng.randrange(
                0, size_now + 1)
            os.ftruncate(f.rw(), new)
            if new < size_now:
                del f.model[new:]
            else:
                f.model.extend(bytes(new - size_now))
        elif kind == "mmap_write":
            if size_now:
                fd = f.rw()
                off = min(off, size_now - 1)
                n = min(n, size_now - off)
                data = rng.randbytes(n)
                with mmap.mmap(fd, size_now, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
                    m[off:off + n] = data
                    m.flush()
                f.model[off:off + n] = data
        elif kind == "fsync":
            os.fsync(f.rw())
        elif kind == "reopen":
            f.close_writers()
        self.op_index += 1


@pytest.mark.timeout(size(180, 900))
def test_fsx_random_io_with_copy_up(tmp_path, figures):
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    seed = rng.randrange(1 << 30)
    rng = random.Random(seed)
    figures.note(f"seed {seed}")
    lower, upper, mnt = (fresh_dir(tmp_path, n) for n in ("lower", "upper", "mnt"))
    initial = {f"f{i}": _make_lower_file(lower / f"f{i}", rng) for i in range(FILES)}
    lower_sums = {name: _sha(data) for name, data in initial.items()}

    # Each file's early read-only fd, opened on its lower copy, must see the copy-up's data:
    # the daemon-served mode's guarantee (with passthrough it keeps reading the lower file,
    # and the writer waits for it: tests/test_passthrough.py).
    with daemon_mounted([lower], upper, mnt, [mounts.NO_PASSTHROUGH]) as proc:
        figures["base_fds"] = figures.daemon(proc.pid)["fds"]
        files = [FsxFile(mnt, name, data, rng.randrange(0, OPS // 3))
                 for name, data in initial.items()]
        ex = Exerciser(files, rng)
        try:
            for i in range(OPS):
                ex.step()
                if i % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1:
                    for f in files:
                        ex.full_check(f)
                    figures.daemon(proc.pid)
                if i == OPS // 2:
                    drop_caches()  # the second half re-reads through fresh inodes
            while ex.checked < MIN_BYTES_CHECKED:  # top up with full comparisons
                for f in files:
                    ex.full_check(f)
            for f in files:
                ex.full_check(f)
        finally:
            for f in files:
                f.close()
        figures["end_fds"] = settled_fds(proc.pid, figures["base_fds"] + 2)
        models = {f.name: bytes(f.model) for f in files}

    for name, data in models.items():
        got = (upper / name).read_bytes() if (upper / name).exists() else initial[name]
        assert _sha(got) == _sha(data), f"{name}: the upper copy differs from the model"
        assert _sha((lower / name).read_bytes()) == lower_sums[name], f"lower {name} changed"
    figures["ops"] = ex.op_index
    figures["bytes_checked"] = ex.checked
    figures.note("ops: " + " ".join(f"{k}={v}" for k, v in sorted(ex.counts.items())))
    assert ex.op_index >= OPS
    assert ex.checked >= MIN_BYTES_CHECKED
    assert figures["end_fds"] <= figures["base_fds"] + 2, "the daemon kept descriptors open"


# -- fio ----------------------------------------------------------------------------------


FIO_SIZE = size("8M", "64M")
FIO_JOBS = [  # (name, extra options); each writes its files, then reads them back verified
    ("randwrite-psync-lower", ["--rw=randwrite", "--ioengine=psync", "--bsrange=4k-64k"]),
    ("write-mmap-new", ["--rw=write", "--ioengine=mmap", "--bs=16k"]),
    ("randrw-psync-new", ["--rw=randwrite", "--ioengine=psync", "--bs=4k", "--numjobs=2"]),
]
if LONG:
    FIO_JOBS += [
        ("randwrite-mmap-lower", ["--rw=randwrite", "--ioengine=mmap", "--bsrange=4k-128k"]),
        ("randwrite-libaio-new", ["--rw=randwrite", "--ioengine=libaio", "--iodepth=8",
                                  "--bs=8k", "--numjobs=2"]),
        ("randwrite-fsync-new", ["--rw=randwrite", "--ioengine=sync", "--fsync=16", "--bs=4k"]),
    ]


@pytest.mark.timeout(size(120, 600))
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (make setup)")
def test_fio_verify(tmp_path, figures):
    lower, upper, mnt = (fresh_dir(tmp_path, n) for n in ("lower", "upper", "mnt"))
    nbytes = int(FIO_SIZE[:-1]) << 20
    for name, _ in FIO_JOBS:
        if name.endswith("-lower"):  # fio overwrites a lower file in place: copied up first
            with open(lower / f"{name}.0.0", "wb") as f:
                f.write(os.urandom(nbytes))
    sums = {p.name: _sha(p.read_bytes()) for p in lower.iterdir()}
    total_read = total_written = 0
    with daemon_mounted([lower], upper, mnt) as proc:
        for name, extra in FIO_JOBS:
            out = tmp_path / f"{name}.json"
            cmd = ["fio", f"--name={name}", f"--directory={mnt}", f"--size={FIO_SIZE}",
                   "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                   "--verify_state_save=0", "--output-format=json", f"--output={out}",
                   "--group_reporting=0", *extra]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
            report = json.loads(out.read_text()) if out.exists() and out.stat().st_size else {}
            assert result.returncode == 0, f"fio {name} failed: {result.stderr[-2000:]}"
            for job in report["jobs"]:
                assert job["error"] == 0, f"fio {name}: job error {job['error']}"
                total_read += job["read"]["io_bytes"]
                total_written += job["write"]["io_bytes"]
            figures.daemon(proc.pid)
    for name, digest in sums.items():
        assert _sha((lower / name).read_bytes()) == digest, f"lower {name} changed"
    figures["bytes_checked"] = total_read
    figures["ops"] = len(FIO_JOBS)
    figures.note(f"fio jobs: {', '.join(n for n, _ in FIO_JOBS)}; "
                 f"{total_written >> 20} MiB written, verified crc32c")
    assert total_read >= nbytes, "fio read back less than one file's worth"
