"""How the write path behaves when things go wrong, and what open files and inodes see.

Crash in the middle of a copy-up, persistence of fsync'ed data across a daemon crash, ENOSPC
during copy-up and during writes, open file descriptors across a copy-up, inode numbers across
copy-up / cache drops / remounts, shared writable mmap. Whatever can be done on kernel
overlayfs too (``redirect_dir=on,index=on``) is done on both and compared.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests import mounts, treesnap
from tests.posix_helpers import (
    KINDS,
    Mounter,
    Union,
    assert_same,
    drop_caches,
    on_both,
    put,
    put_dir,
)

MiB = 1 << 20


@pytest.fixture
def mounter(pyunion_daemon, overlay, tmp_path) -> Mounter:
    return Mounter(pyunion_daemon, overlay, tmp_path)


def sha256_of(path: os.PathLike | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def temp_files(temp_dir: Path) -> dict[str, int]:
    """Name -> size of what sits in the workdir's temp dir (empty if it does not exist)."""
    out = {}
    try:
        with os.scandir(temp_dir) as entries:
            for entry in entries:
                try:
                    out[entry.name] = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        pass
    return out


# --- crash in the middle of a copy-up -------------------------------------------------------

BIG_SIZE = 512 * MiB   # real data: a sparse file could be copied in no time (reflink/ranges)
APPENDED = b"appended after the copy-up\n"


def write_big_file(path: Path, size: int) -> tuple[str, str]:
    """Writes ``size`` bytes of real (non-sparse, per-MiB distinct) data.

    Returns the sha256 of the content and of the content followed by ``APPENDED``.
    """
    base = os.urandom(MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // MiB):
            block = i.to_bytes(8, "little") + base[8:]
            f.write(block)
            h.update(block)
    old = h.hexdigest()
    h.update(APPENDED)
    return old, h.hexdigest()


def _kill_during_copy_up(union: Union, appender: subprocess.Popen) -> dict[str, int]:
    """Waits until a temp file in the workdir is growing, then SIGKILLs the daemon.

    Returns the temp files left behind (proof that the kill came mid copy-up).
    """
    assert union.proc is not None
    deadline = time.monotonic() + 60
    while True:
        sizes = temp_files(union.temp_dir)
        if any(MiB <= size < BIG_SIZE for size in sizes.values()):
            break
        assert appender.poll() is None, "the append finished before its copy-up was seen"
        assert time.monotonic() < deadline, f"no copy-up seen in {union.temp_dir}: {sizes}"
        time.sleep(0.002)
    union.proc.send_signal(signal.SIGKILL)
    union.proc.wait(timeout=30)
    return temp_files(union.temp_dir)


@pytest.mark.timeout(600)
def test_crash_during_copy_up_leaves_old_or_complete_file(mounter, tmp_path):
    """SIGKILL while a 512 MiB copy-up runs: after remount the file is the complete old content
    or the complete copy (never truncated), the lower is untouched, no partial file is left in
    the upper, and the temp dir is cleaned at the next mount."""
    lower = put_dir(tmp_path, "lower")
    old_sha, appended_sha = write_big_file(lower / "big", BIG_SIZE)
    union = mounter.mount("pyunion", [lower])
    started = time.monotonic()
    appender = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nwith open(sys.argv[1], 'ab') as f:\n    f.write(sys.argv[2].encode())",
         str(union.mnt / "big"), APPENDED.decode()],
        stderr=subprocess.DEVNULL)
    try:
        left = _kill_during_copy_up(union, appender)
    finally:
        try:
            appender.wait(timeout=30)
        except subprocess.TimeoutExpired:
            appender.kill()
            appender.wait()
    caught_after = time.monotonic() - started
    print(f"killed {caught_after:.2f} s into the append; temp files left: {left}")
    assert left, "the kill came too late: no temp file was left, the copy-up had finished"
    assert all(size < BIG_SIZE for size in left.values()), left
    mounts.unmount(union.mnt, union.proc)

    assert sha256_of(lower / "big") == old_sha, "the lower file changed"
    in_upper = union.upper / "big"
    if in_upper.exists():
        assert sha256_of(in_upper) in (old_sha, appended_sha), "partial copy in the upper"

    again = mounter.remount(union)
    assert temp_files(again.temp_dir) == {}, "temp files of the crash survived the remount"
    merged_sha = sha256_of(again.mnt / "big")
    assert merged_sha in (old_sha, appended_sha), (
        f"after the crash (caught {caught_after:.2f} s into the append, temp files {left}) "
        f"the merged file has size {os.stat(again.mnt / 'big').st_size}, not {BIG_SIZE}")
    # The union works again: a new copy-up completes.
    with open(again.mnt / "big", "ab") as f:
        f.write(APPENDED)
    if merged_sha == old_sha:
        assert sha256_of(again.mnt / "big") == appended_sha
    assert sha256_of(lower / "big") == old_sha


# --- persistence across a daemon crash ------------------------------------------------------

SYNCED = os.urandom(256 * 1024)


def _persistence_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    put(lower, "grow", b"lower content of grow\n")
    put(lower, "renameme", b"lower file to rename\n")
    put(lower, "gone", b"lower file to delete\n")
    put(lower, "dir/kept", b"kept\n")
    return lower


def _persistence_ops(mnt: Path) -> int:
    """Writes through the mount; returns an fd left open after its data was fsync'ed."""
    (mnt / "closed").write_bytes(b"c" * MiB)          # closed, never fsync'ed
    with open(mnt / "grow", "ab") as f:                # copy-up + fsync
        f.write(b"appended and fsync'ed\n")
        f.flush()
        os.fsync(f.fileno())
    (mnt / "sub").mkdir()
    (mnt / "sub" / "deep").write_bytes(b"deep file\n")
    (mnt / "renameme").rename(mnt / "dir" / "renamed")
    (mnt / "gone").unlink()
    fd = os.open(mnt / "open-synced", os.O_CREAT | os.O_WRONLY, 0o640)
    os.write(fd, SYNCED)
    os.fsync(fd)
    return fd


@pytest.mark.timeout(300)
def test_fsynced_and_closed_data_survive_daemon_kill(mounter, tmp_path):
    """Data written and fsync'ed (fd still open) or written and closed before a SIGKILL of the
    daemon is all there after remount: the tree equals kernel overlayfs after the same writes."""
    lower = _persistence_lower(tmp_path)
    union = mounter.mount("pyunion", [lower])
    fd = _persistence_ops(union.mnt)
    assert union.proc is not None
    union.proc.send_signal(signal.SIGKILL)
    union.proc.wait(timeout=30)
    try:
        os.close(fd)
    except OSError:
        pass  # the connection is gone; the close may report it
    mounts.unmount(union.mnt, union.proc)
    again = mounter.remount(union)

    reference = mounter.mount("kernel", [lower])
    os.close(_persistence_ops(reference.mnt))
    treesnap.assert_same_tree(treesnap.snapshot(again.mnt), treesnap.snapshot(reference.mnt),
                              "pyunion after kill+remount vs kernel overlayfs")
    assert (again.mnt / "open-synced").read_bytes() == SYNCED


# --- ENOSPC ----------------------------------------------------------------------------------

TMPFS_SIZE = "8m"
BIG_LOWER = 16 * MiB


@pytest.fixture
def small_tmpfs(tmp_path) -> Path:
    """An 8 MiB tmpfs (for upper and workdir), unmounted at the end.

    Request it before ``mounter`` so that the unions on it are unmounted first.
    """
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs",
                    str(point)], check=True, capture_output=True, timeout=30)
    try:
        yield point
    finally:
        mounts.unmount(point)


def _write_until_enospc(path: Path) -> str:
    """Writes 256 KiB chunks until a write fails; returns the errno name of the failure."""
    chunk = b"f" * (256 * 1024)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for _ in range(1000):
            os.write(fd, chunk)
    except OSError as e:
        return os.strerror(e.errno or 0)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return "no error after 250 MiB"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.timeout(300)
def test_enospc(kind, small_tmpfs, mounter, tmp_path):
    """Upper and workdir on an 8 MiB tmpfs, a 16 MiB lower file: its copy-up fails with ENOSPC,
    leaving no partial copy and nothing in the temp dir; earlier writes are intact, the union
    keeps serving; filling the fs gives ENOSPC and deleting frees the space again.
    (Run on kernel overlayfs too, as a check of the scenario.)"""
    lower = put_dir(tmp_path, "lower")
    big = lower / "big"
    big.write_bytes(os.urandom(MiB) * (BIG_LOWER // MiB))
    big_sha = sha256_of(big)
    put(lower, "small", b"small lower file\n")
    union = mounter.mount(kind, [lower], top=small_tmpfs)
    mnt = union.mnt
    early = os.urandom(512 * 1024)
    (mnt / "early").write_bytes(early)
    with open(mnt / "small", "ab") as f:
        f.write(b"appended\n")

    with pytest.raises(OSError) as failed:
        with open(mnt / "big", "ab") as f:
            f.write(b"more")
    assert failed.value.errno == 28, f"copy-up of a too-big file: {failed.value!r}, not ENOSPC"
    if union.proc is not None:
        assert union.proc.poll() is None, "the daemon died"
    assert not (union.upper / "big").exists(), "partial copy-up left in the upper"
    assert temp_files(union.temp_dir) == {}, f"leftovers in {union.temp_dir}"
    assert sha256_of(mnt / "big") == big_sha, "the merged file no longer shows the lower content"
    assert (mnt / "early").read_bytes() == early
    assert (mnt / "small").read_bytes() == b"small lower file\nappended\n"
    (mnt / "after").write_bytes(b"written after the failed copy-up\n")
    assert (mnt / "after").read_bytes() == b"written after the failed copy-up\n"

    assert _write_until_enospc(mnt / "filler") == os.strerror(28)
    (mnt / "filler").unlink()
    again = os.urandom(2 * MiB)
    (mnt / "again").write_bytes(again)
    assert (mnt / "again").read_bytes() == again
    assert (mnt / "early").read_bytes() == early
    assert sha256_of(big) == big_sha


@pytest.mark.parametrize("kind", KINDS)
def test_enospc_in_the_last_chunk_of_a_copy_up(kind, small_tmpfs, mounter, tmp_path):
    """A lower file only slightly bigger than the free space: the copy-up runs out of space in
    the middle of its last chunk (a short write, not an error). The append must fail with
    ENOSPC, or succeed completely; the merged file is never cut short or zero-filled."""
    upper = put_dir(small_tmpfs, "upper")
    (upper / "early").write_bytes(b"e" * (300 * 1024))  # free space no longer a MiB multiple
    free = _free_bytes(small_tmpfs)
    lower = put_dir(tmp_path, "lower")
    content = os.urandom(free + 64 * 1024)
    (lower / "big").write_bytes(content)
    union = mounter.mount(kind, [lower], top=small_tmpfs)
    assert _free_bytes(small_tmpfs) == free, "mounting used space: the scenario is off"
    try:
        with open(union.mnt / "big", "ab") as f:
            f.write(APPENDED)
        result = "ok"
    except OSError as e:
        result = os.strerror(e.errno or 0)
    merged = (union.mnt / "big").read_bytes()
    in_upper = (union.upper / "big").stat().st_size if (union.upper / "big").exists() else None
    intact = merged in (content, content + APPENDED)
    assert intact, (
        f"append gave {result!r}; the merged file has {len(merged)} bytes (lower: "
        f"{len(content)}), first difference at {_first_difference(merged, content)}; "
        f"size in the upper: {in_upper}")
    assert result == os.strerror(28)
    assert not (union.upper / "big").exists()
    assert temp_files(union.temp_dir) == {}


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _first_difference(a: bytes, b: bytes) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# --- open file descriptors across a copy-up ---------------------------------------------------

LOWER_TEXT = b"0123456789 the lower content of the file\n"


def _fd_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    for name in ("overwrite", "append", "truncate", "chmod"):
        put(lower, name, LOWER_TEXT)
    put(lower, "pages", b"".join(bytes([65 + i]) * 4096 for i in range(4)))
    return lower


def _write_in_child(path: Path, mode: str, data: bytes, offset: int = 0) -> None:
    """Another process writes (and so copies up) the file."""
    code = ("import sys\nwith open(sys.argv[1], sys.argv[2]) as f:\n"
            "    f.seek(int(sys.argv[4])) if 'r' in sys.argv[2] else None\n"
            "    f.write(bytes.fromhex(sys.argv[3]))\n")
    subprocess.run([sys.executable, "-c", code, str(path), mode, data.hex(), str(offset)],
                   check=True, timeout=30)


def _read_all(fd: int) -> bytes | str:
    """All of the file from offset 0 (a digest if it is longer than a line)."""
    data = os.pread(fd, 1 << 20, 0)
    return data if len(data) <= 80 else _digest(data)


def _digest(data: bytes) -> str:
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def _fd_scenario(union: Union) -> dict[str, Any]:
    """Read-only fds opened (and read from) before another writer copies the file up."""
    mnt = union.mnt
    seen: dict[str, Any] = {}
    fds = {name: os.open(mnt / name, os.O_RDONLY)
           for name in ("overwrite", "append", "truncate", "chmod", "pages")}
    try:
        for fd in fds.values():
            _read_all(fd)  # the old data is in the page cache now
        _write_in_child(mnt / "overwrite", "r+b", b"NEW", 3)
        _write_in_child(mnt / "append", "ab", b"appended\n")
        _write_in_child(mnt / "truncate", "wb", b"short\n")
        os.chmod(mnt / "chmod", 0o600)
        seen["chmod: read after metadata copy-up"] = _read_all(fds["chmod"])
        _write_in_child(mnt / "chmod", "r+b", b"XY", 0)
        # the same process, another fd: write into the second page only
        other = os.open(mnt / "pages", os.O_WRONLY)
        os.pwrite(other, b"z" * 10, 4096 + 5)
        os.close(other)
        for name, fd in fds.items():
            seen[f"{name}: read"] = _read_all(fd)
            seen[f"{name}: fstat size"] = os.fstat(fd).st_size
    finally:
        for fd in fds.values():
            os.close(fd)
    return seen


def test_open_fd_reads_new_data_after_copy_up(mounter, tmp_path):
    """An O_RDONLY fd opened on a lower file before another process (or another fd) writes to
    it reads the new data; an fd opened before a chmod keeps reading (as the kernel ≥4.19)."""
    lower = _fd_lower(tmp_path)
    # (With passthrough a read-only fd reads its lower file: tests/test_passthrough.py.)
    unions = mounter.both([lower], options=(mounts.NO_PASSTHROUGH,))
    kernel = on_both(unions, _fd_scenario, "reads through fds opened before copy-up")
    assert kernel["append: read"] == LOWER_TEXT + b"appended\n"  # the scenario is meaningful


# --- inode numbers ---------------------------------------------------------------------------


LINK_NAMES = ("d/h1", "d/h2", "e/h3")


def _ino_lower(root: Path) -> Path:
    lower = put_dir(root, "lower")
    put(lower, "single", b"single\n")
    put(lower, "d/h1", b"hard linked\n")
    put_dir(lower, "e")
    for name in LINK_NAMES[1:]:
        os.link(lower / "d" / "h1", lower / name)
    return lower


def _links(mnt: Path) -> dict[str, Any]:
    """What the names of the lower hard link show: one inode? nlink, content."""
    stats = [os.stat(mnt / name) for name in LINK_NAMES]
    return {"one inode": len({st.st_ino for st in stats}) == 1,
            "nlink": [st.st_nlink for st in stats],
            "content": {(mnt / name).read_bytes() for name in LINK_NAMES}}


def _ino_scenario(union: Union, written: str) -> dict[str, Any]:
    """st_ino before and after copy-up (drop_caches between); hard links after writing one
    name (the other names not looked up before)."""
    mnt = union.mnt
    seen: dict[str, Any] = {}
    single = os.stat(mnt / "single").st_ino
    link_ino = os.stat(mnt / written).st_ino
    drop_caches()
    with open(mnt / "single", "ab") as f:
        f.write(b"x\n")
    with open(mnt / written, "ab") as f:
        f.write(b"written via " + written.encode() + b"\n")
    seen["single: ino kept by copy-up"] = os.stat(mnt / "single").st_ino == single
    seen["links: ino kept by copy-up"] = os.stat(mnt / written).st_ino == link_ino
    seen["links after write"] = _links(mnt)
    drop_caches()
    seen["single: ino kept after drop_caches"] = os.stat(mnt / "single").st_ino == single
    seen["links: ino kept after drop_caches"] = os.stat(mnt / "e" / "h3").st_ino == link_ino
    seen["links after drop_caches"] = _links(mnt)
    return seen


def _after_remount(union: Union) -> dict[str, Any]:
    mnt = union.mnt
    seen = {"links after remount": _links(mnt)}
    with open(mnt / "d" / "h2", "ab") as f:
        f.write(b"after remount\n")
    seen["links after remount + write"] = _links(mnt)
    drop_caches()
    seen["links after remount + drop_caches"] = _links(mnt)
    return seen


@pytest.mark.parametrize("written", ["d/h1", "e/h3"])
def test_inode_numbers_stable_across_copy_up(written, mounter, tmp_path):
    """st_ino of a lower file is kept by its copy-up and through drop_caches; the three names of
    a lower hard link (two dirs) stay one inode (same st_ino, nlink 3, same content) after one
    name is written, through drop_caches and after a remount, as on kernel overlayfs."""
    lower = _ino_lower(tmp_path)
    unions = mounter.both([lower])
    kernel = on_both(unions, lambda u: _ino_scenario(u, written), "inode numbers")
    # The scenario means something: the kernel keeps the numbers and the link.
    assert kernel["single: ino kept after drop_caches"]
    assert kernel["links: ino kept after drop_caches"]
    assert kernel["links after drop_caches"]["one inode"]
    remounted = {kind: mounter.remount(u) for kind, u in unions.items()}
    kernel = on_both(remounted, _after_remount, "hard links after remount")
    assert kernel["links after remount + drop_caches"]["nlink"] == [3, 3, 3]


# --- shared writable mmap --------------------------------------------------------------------


def _mmap_scenario(union: Union) -> dict[str, Any]:
    path = union.mnt / "mapped"
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            mm[0:5] = b"HELLO"
            mm[8192:8197] = b"WORLD"
            mm[size - 3:size] = b"END"
            mm.flush()
    finally:
        os.close(fd)
    return {"content": _digest(path.read_bytes())}


def test_shared_writable_mmap_of_lower_file(mounter, tmp_path):
    """MAP_SHARED writes to a lower file reach the file: seen at once and after a remount."""
    lower = put_dir(tmp_path, "lower")
    original = b"".join(bytes([97 + i % 26]) * 4096 for i in range(5)) + b"tail"
    put(lower, "mapped", original)
    unions = mounter.both([lower])
    kernel = on_both(unions, _mmap_scenario, "content after a shared mmap write")
    assert kernel["content"] != _digest(original)
    remounted = {kind: mounter.remount(u) for kind, u in unions.items()}
    seen = {kind: {"content": _digest((u.mnt / "mapped").read_bytes())}
            for kind, u in remounted.items()}
    assert_same(seen["pyunion"], seen["kernel"], "mmap'ed content after remount")
    assert (lower / "mapped").read_bytes() == original
