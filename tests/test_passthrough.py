"""FUSE passthrough (unionfs/fs/passthrough.py): open files are read, written and mapped by the
kernel from their real files, so one lower file is one copy in the page cache however many
mounts read it; and where passthrough is refused, pyunion serves the file itself."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import mounts
from tests.cli_helpers import public_dir, run_as_nobody_with_fuse
from unionfs.fs import passthrough

pytestmark = pytest.mark.skipif(
    not mounts.PASSTHROUGH,
    reason=f"passthrough is off in this run: {passthrough.unavailable_because() or 'asked'}")

MIB = 1 << 20
BASE_SIZE = 64 * MIB
MOUNTS = 4


def _page_cache() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Cached: line in /proc/meminfo")


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _cache_growth_of_reading(mnts: list[Path], name: str) -> int:
    """Bytes the page cache grows by when ``name`` is read through every mount in turn."""
    _drop_caches()
    before = _page_cache()
    for mnt in mnts:
        with open(mnt / name, "rb") as f:
            while f.read(MIB):
                pass
    return _page_cache() - before


@pytest.fixture
def base(tmp_path: Path) -> Path:
    lower = tmp_path / "lower"
    lower.mkdir()
    with open(lower / "base", "wb") as f:
        for _ in range(BASE_SIZE // MIB):
            f.write(os.urandom(MIB))
    (lower / "small").write_bytes(b"lower small\n")
    return lower


def _mounts(pyunion, upper_and_work, lower: Path, options: list[str], n: int) -> list[Path]:
    return [pyunion([lower], upper_and_work(f"{options}-{i}")[0], options=options)
            for i in range(n)]


@pytest.mark.timeout(240)
def test_four_mounts_of_one_lower_file_cache_it_once(base, pyunion, upper_and_work):
    """As kernel overlayfs: about one file's worth of page cache for four readers, each on
    its own mount; served by the daemon, each mount caches its own copy too."""
    shared = _mounts(pyunion, upper_and_work, base, [], MOUNTS)
    private = _mounts(pyunion, upper_and_work, base, [mounts.NO_PASSTHROUGH], MOUNTS)
    with_passthrough = _cache_growth_of_reading(shared, "base")
    without = _cache_growth_of_reading(private, "base")
    assert without > 3 * BASE_SIZE, f"the measurement itself: {without / MIB:.0f} MiB"
    assert with_passthrough < 1.5 * BASE_SIZE, (
        f"{MOUNTS} mounts added {with_passthrough / MIB:.0f} MiB for one "
        f"{BASE_SIZE / MIB:.0f} MiB file (without passthrough: {without / MIB:.0f} MiB)")


def _stats_after(mnt: Path, proc: subprocess.Popen, stats: Path) -> dict[str, int]:
    mounts.unmount(mnt, proc)
    return json.loads(stats.read_text())


def test_reads_writes_and_maps_never_reach_the_daemon(base, tmp_path, pyunion_daemon,
                                                      upper_and_work):
    upper, _ = upper_and_work("p")
    stats = tmp_path / "stats.json"
    mnt, proc = pyunion_daemon([base], upper, options=[f"stats={stats}"])
    assert (mnt / "base").read_bytes() == (base / "base").read_bytes()
    with open(mnt / "small", "ab") as f:  # copy-up at the open, then a passthrough write
        f.write(b"appended\n")
    with open(mnt / "small", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[:5] = b"LOWER"
        m.flush()
    (mnt / "new").write_bytes(b"created\n")
    assert (mnt / "small").read_bytes() == b"LOWER small\nappended\n"
    counts = _stats_after(mnt, proc, stats)
    assert counts.get("read", 0) == 0 and counts.get("write", 0) == 0, counts
    assert counts["open"] >= 4, counts
    assert (upper / "small").read_bytes() == b"LOWER small\nappended\n"
    assert (upper / "new").read_bytes() == b"created\n"
    assert (base / "small").read_bytes() == b"lower small\n", "the lower changed"


def test_writing_a_file_held_open_on_its_lower_file(base, pyunion, upper_and_work):
    """The readers' backing file cannot follow a copy-up: a write open waits for them, then
    fails with ETXTBSY and changes nothing; once they are gone it succeeds."""
    upper, _ = upper_and_work("p")
    mnt = pyunion([base], upper)
    with open(mnt / "small", "rb") as reader:
        started = time.monotonic()
        with pytest.raises(OSError) as refused:
            open(mnt / "small", "ab")
        waited = time.monotonic() - started
        assert refused.value.errno == 26, refused.value  # ETXTBSY
        assert waited >= passthrough.RELEASE_WAIT * 0.9, waited
        with pytest.raises(OSError) as truncated:
            os.truncate(mnt / "small", 0)
        assert truncated.value.errno == 26, truncated.value
        assert not (upper / "small").exists(), "copied up although refused"
        assert reader.read() == b"lower small\n"
    with open(mnt / "small", "ab") as f:
        f.write(b"after\n")
    assert (mnt / "small").read_bytes() == b"lower small\nafter\n"


def test_a_write_right_after_the_readers_closed(base, pyunion, upper_and_work):
    """A close reaches the daemon as a release request a little later: a write open that
    overtakes it waits for it instead of failing."""
    names = [f"f{i}" for i in range(20)]
    for name in names:
        (base / name).write_bytes(b"lower\n")
    upper, _ = upper_and_work("p")
    mnt = pyunion([base], upper)
    for name in names:
        script = f"cat {name} >/dev/null && echo more >> {name} && cat {name}"
        out = subprocess.run(["sh", "-c", script], cwd=mnt, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0 and out.stdout == "lower\nmore\n", (name, out.stderr)


def test_a_lower_on_a_stacked_filesystem_is_served_by_the_daemon(base, tmp_path, overlay,
                                                                 pyunion_daemon,
                                                                 upper_and_work):
    """The kernel refuses backing files on overlayfs (stacking depth): those files are
    served through the daemon, the mount and the other layers' files keep passthrough."""
    empty = tmp_path / "empty"
    empty.mkdir()
    stacked = overlay([base, empty], None, None)  # (a read-only overlay needs two lowers)
    top = tmp_path / "top"
    top.mkdir()
    (top / "plain").write_bytes(b"plain layer\n")
    upper, _ = upper_and_work("p")
    stats = tmp_path / "stats.json"
    mnt, proc = pyunion_daemon([top, stacked], upper, options=[f"stats={stats}"])
    assert (mnt / "small").read_bytes() == b"lower small\n"
    assert (mnt / "plain").read_bytes() == b"plain layer\n"
    counts = _stats_after(mnt, proc, stats)
    assert counts.get("read", 0) >= 1, counts  # small, from the overlayfs layer


def test_debug_output_says_which_mode(base, tmp_path, upper_and_work):
    upper, _ = upper_and_work("p")
    for option, expected in (("passthrough=auto", "passthrough: on"),
                             ("passthrough=off", "passthrough: off (-o passthrough=off)")):
        mnt = tmp_path / f"mnt-{option}"
        mnt.mkdir()
        cmd = mounts.pyunion_command([base], upper, mnt, [option, "debug"])
        log = tmp_path / f"{option}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stderr=err, stdin=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + mounts.READY_TIMEOUT
                while not mounts.is_mounted(mnt) and proc.poll() is None:
                    assert time.monotonic() < deadline, "not mounted in time"
                    time.sleep(0.02)
                (mnt / "small").read_bytes()
            finally:
                mounts.unmount(mnt, proc)
        lines = [line for line in log.read_text().splitlines() if "passthrough:" in line]
        assert len(lines) == 1 and expected in lines[0], lines


def test_an_ordinary_user_mounts_without_passthrough() -> None:
    """The kernel registers backing files for CAP_SYS_ADMIN only: an ordinary user's mount
    is served by the daemon (auto), and passthrough=on is refused with one line."""
    script = ("set -e; {helper} l u m -o stats=$PWD/stats.json; cat m/f; fusermount3 -u m; "
              "sleep 1; {helper} l u m -o passthrough=on || echo refused $?")
    with public_dir() as pub:
        for d in ("l", "u", "m"):
            (pub / d).mkdir()
        (pub / "l/f").write_text("lower\n")
        result = run_as_nobody_with_fuse(pub, script)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["lower", "refused 1"], result.stdout
        assert "passthrough=on: not root" in result.stderr, result.stderr
        assert json.loads((pub / "stats.json").read_text()).get("read", 0) >= 1
