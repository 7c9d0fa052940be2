"""Concurrency: several processes at once on the same mount.

* ``test_many_processes_on_one_tree``: writers that create, rename and delete files of their own
  in shared directories (lower ones, so the directories are copied up concurrently) and that
  publish self-checking payloads onto contended names (built under a private name, renamed over
  the shared one); walkers that list, stat and read the whole tree during the renames and
  deletes. Every process has a deadline (a hang fails the test); every payload read must be
  complete; every writer's own files must be there at the end with their content; no listing
  may name an entry twice. Kernel overlayfs over the upper afterwards shows the same tree.
* ``test_simultaneous_copy_up``: two processes open the same large lower file for writing at
  the same moment and write different regions; two processes write through the two names of a
  lower hard link at the same moment. Both writes must land in one copy.
* ``test_stress_ng_filesystem`` (long mode only): ``stress-ng --class filesystem --seq 0``.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import re
import shutil
import struct
import subprocess
import time
import traceback
from pathlib import Path

import pytest

from tests import treesnap
from tests.stress.conftest import (
    LONG,
    daemon_mounted,
    fresh_dir,
    kernel_overlay,
    settled_fds,
    size,
)

CTX = multiprocessing.get_context("fork")
WRITERS = size(3, 4)
WALKERS = 2
SECONDS = size(6, 45)
JOIN_SLACK = 60.0
DIRS = ("a", "a/x", "b", "c")
SHARED = [f"{d}/shared{i}" for d in DIRS for i in range(3)]
TOLERATED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY}


def payload(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(0, 200 << 10))
    return struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def check_payload(data: bytes, where: str) -> None:
    if len(data) < 40:
        raise AssertionError(f"{where}: a partial payload ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    body = data[40:]
    if len(body) != n or hashlib.sha256(body).digest() != data[8:40]:
        raise AssertionError(f"{where}: a corrupt payload ({len(data)} bytes, header says {n})")


def _tolerate(fn, *args):
    try:
        return fn(*args)
    except OSError as e:
        if e.errno not in TOLERATED:
            raise
        return None


def _publish(mnt: Path, tmp: str, data: bytes, name: str) -> None:
    """Writes ``data`` under a private name, then renames it over ``name``: readers of
    ``name`` only ever see a complete payload."""
    with open(mnt / tmp, "wb") as f:
        f.write(data)
    os.rename(mnt / tmp, mnt / name)


def writer(mnt: Path, wid: int, seed: int, deadline: float, results) -> None:
    try:
        rng = random.Random(seed)
        mine: dict[str, bytes] = {}
        ops = 0
        while time.monotonic() < deadline:
            kind = rng.choice(["create", "create", "rename", "delete", "publish", "publish",
                               "unpublish", "overwrite"])
            d = rng.choice(DIRS)
            if kind == "create" or not mine and kind in ("rename", "delete", "overwrite"):
                name = f"{d}/w{wid}-{ops}"
                data = payload(rng)
                _publish(mnt, f"{d}/w{wid}-tmp", data, name)
                mine[name] = data
            elif kind == "rename":
                old = rng.choice(sorted(mine))
                new = f"{d}/w{wid}-{ops}"
                os.rename(mnt / old, mnt / new)
                mine[new] = mine.pop(old)
            elif kind == "delete":
                old = rng.choice(sorted(mine))
                os.unlink(mnt / old)
                del mine[old]
            elif kind == "overwrite":
                name = rng.choice(sorted(mine))
                data = payload(rng)
                _publish(mnt, f"{d}/w{wid}-tmp", data, name)
                mine[name] = data
            elif kind == "publish":  # complete first, then renamed over a contended name
                _publish(mnt, f"{d}/w{wid}-tmp", payload(rng), rng.choice(SHARED))
            elif kind == "unpublish":
                _tolerate(os.unlink, mnt / rng.choice(SHARED))
                if rng.random() < 0.3:
                    _tolerate(os.rename, mnt / rng.choice(SHARED), mnt / rng.choice(SHARED))
            ops += 1
        for name, data in mine.items():  # nothing of mine lost, nothing changed
            got = (mnt / name).read_bytes()
            if got != data:
                raise AssertionError(f"writer {wid}: {name} has {len(got)} bytes, wrote "
                                     f"{len(data)}, or different content")
        results.put(("ok", wid, ops, 0, 0))
    except BaseException:
        results.put(("error", wid, traceback.format_exc(), 0, 0))


def walker(mnt: Path, wid: int, deadline: float, results) -> None:
    try:
        ops = checked = 0
        while time.monotonic() < deadline:
            pending = [mnt]
            while pending:
                d = pending.pop()
                names = _tolerate(os.listdir, d)
                if names is None:
                    continue
                if len(names) != len(set(names)):
                    dup = sorted(n for n in set(names) if names.count(n) > 1)
                    raise AssertionError(f"{d}: a listing names entries twice: {dup}")
                for name in names:
                    path = d / name
                    st = _tolerate(os.lstat, path)
                    ops += 1
                    if st is None:
                        continue
                    if os.path.isdir(path):
                        pending.append(path)
                    elif name.startswith("shared") or name.startswith("w"):
                        try:
                            with open(path, "rb") as f:
                                data = f.read()
                        except OSError as e:
                            if e.errno != errno.ENOENT:
                                raise
                            continue
                        if not name.endswith("-tmp"):
                            check_payload(data, str(path))
                        checked += len(data)
        results.put(("ok", -1 - wid, ops, checked, 0))
    except BaseException:
        results.put(("error", -1 - wid, traceback.format_exc(), 0, 0))


def _run_all(procs, results, deadline: float) -> list[tuple]:
    for p in procs:
        p.start()
    out = []
    try:
        for _ in procs:
            out.append(results.get(timeout=max(1.0, deadline + JOIN_SLACK - time.monotonic())))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():  # a hung worker of ours: kill it by pid
                p.kill()
                p.join()
    return out


def _lower(tmp_path: Path) -> Path:
    lower = fresh_dir(tmp_path, "lower")
    rng = random.Random(1)
    for d in DIRS:
        (lower / d).mkdir(parents=True, exist_ok=True)
        for i in range(20):
            (lower / d / f"low{i}").write_bytes(rng.randbytes(rng.randrange(0, 8192)))
    for name in SHARED[::2]:
        (lower / name).write_bytes(payload(rng))
    return lower


@pytest.mark.timeout(size(120, 400))
def test_many_processes_on_one_tree(tmp_path, figures):
    lower = _lower(tmp_path)
    lower_snap = treesnap.snapshot(lower, times=True)
    upper, mnt = fresh_dir(tmp_path, "upper"), fresh_dir(tmp_path, "mnt")
    results = CTX.Queue()
    with daemon_mounted([lower], upper, mnt) as proc:
        figures["base_fds"] = figures.daemon(proc.pid)["fds"]
        deadline = time.monotonic() + SECONDS
        procs = [CTX.Process(target=writer, args=(mnt, i, 1000 + i, deadline, results))
                 for i in range(WRITERS)]
        procs += [CTX.Process(target=walker, args=(mnt, i, deadline, results))
                  for i in range(WALKERS)]
        out = _run_all(procs, results, deadline)
        figures.daemon(proc.pid)
        errors = [o[2] for o in out if o[0] == "error"]
        assert not errors, "\n".join(errors)
        for name in SHARED:  # the contended names: a complete payload or nothing
            if (mnt / name).exists():
                check_payload((mnt / name).read_bytes(), name)
        ours = treesnap.snapshot(mnt)
        figures["end_fds"] = settled_fds(proc.pid, figures["base_fds"] + 2)
    with kernel_overlay([lower], upper, tmp_path) as kmnt:
        treesnap.assert_same_tree(ours, treesnap.snapshot(kmnt),
                                  "pyunion (first) and kernel overlayfs over the upper")
    treesnap.assert_same_tree(treesnap.snapshot(lower, times=True), lower_snap, "the lower")
    figures["ops"] = sum(o[2] for o in out)
    figures["bytes_checked"] = sum(o[3] for o in out)
    figures.note(f"{WRITERS} writers, {WALKERS} walkers, {SECONDS} s")
    assert figures["end_fds"] <= figures["base_fds"] + 2


def _opener(path: Path, deadline: float, results) -> None:
    try:
        opens = stale = 0
        while time.monotonic() < deadline:
            try:
                with open(path, "rb") as f:
                    check_payload(f.read(), str(path))
                opens += 1
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise
                stale += 1
        results.put(("ok", 0, opens, 0, stale))
    except BaseException:
        results.put(("error", 0, traceback.format_exc(), 0, 0))


def _renamer(mnt: Path, wid: int, deadline: float, results) -> None:
    try:
        rng, n = random.Random(wid), 0
        while time.monotonic() < deadline:
            _publish(mnt, f"c/t{wid}", payload(rng), "c/f")
            n += 1
        results.put(("ok", wid, n, 0, 0))
    except BaseException:
        results.put(("error", wid, traceback.format_exc(), 0, 0))


@pytest.mark.timeout(60)
def test_open_racing_rename_over(tmp_path, figures):
    """Two processes rename new files over ``c/f`` (a lower file), two open and read it."""
    lower = fresh_dir(tmp_path, "lower")
    (lower / "c").mkdir()
    (lower / "c/f").write_bytes(payload(random.Random(0)))
    upper, mnt = fresh_dir(tmp_path, "upper"), fresh_dir(tmp_path, "mnt")
    results = CTX.Queue()
    with daemon_mounted([lower], upper, mnt):
        deadline = time.monotonic() + size(4, 10)
        procs = [CTX.Process(target=_renamer, args=(mnt, i, deadline, results)) for i in (0, 1)]
        procs += [CTX.Process(target=_opener, args=(mnt / "c/f", deadline, results))
                  for _ in (0, 1)]
        out = _run_all(procs, results, deadline)
    errors = [o[2] for o in out if o[0] == "error"]
    assert not errors, "\n".join(errors)
    stale = sum(o[4] for o in out)
    figures["ops"] = sum(o[2] for o in out)
    figures.note(f"{stale} ESTALE")
    assert stale == 0, f"{stale} opens failed with ESTALE"


BIG = size(32 << 20, 64 << 20)
ROUNDS = size(2, 8)


def region_writer(path: str, off: int, data: bytes, barrier, results) -> None:
    try:
        barrier.wait(timeout=30)
        fd = os.open(path, os.O_RDWR)  # both open at once: both ask for the copy-up
        try:
            os.pwrite(fd, data, off)
            os.fsync(fd)
        finally:
            os.close(fd)
        results.put(("ok", off, 1, len(data), 0))
    except BaseException:
        results.put(("error", off, traceback.format_exc(), 0, 0))


@pytest.mark.timeout(size(120, 400))
def test_simultaneous_copy_up(tmp_path, figures):
    rng = random.Random(7)
    lower = fresh_dir(tmp_path, "lower")
    (lower / "hl").mkdir()
    originals = {}
    for r in range(ROUNDS):
        originals[f"big{r}"] = rng.randbytes(BIG)
        (lower / f"big{r}").write_bytes(originals[f"big{r}"])
        originals[f"hl/a{r}"] = rng.randbytes(1 << 20)
        (lower / f"hl/a{r}").write_bytes(originals[f"hl/a{r}"])
        os.link(lower / f"hl/a{r}", lower / f"hl/b{r}")
    upper, mnt = fresh_dir(tmp_path, "upper"), fresh_dir(tmp_path, "mnt")
    checked = 0
    with daemon_mounted([lower], upper, mnt) as proc:
        for r in range(ROUNDS):
            cases = [(f"big{r}", f"big{r}", f"big{r}", BIG),
                     (f"hl/a{r}", f"hl/a{r}", f"hl/b{r}", 1 << 20)]
            for key, name1, name2, length in cases:
                want = bytearray(originals[key])
                d1, d2 = rng.randbytes(4096), rng.randbytes(4096)
                o1, o2 = 0, length - 4096
                want[o1:o1 + 4096], want[o2:o2 + 4096] = d1, d2
                results, barrier = CTX.Queue(), CTX.Barrier(2)
                procs = [CTX.Process(target=region_writer,
                                     args=(str(mnt / name1), o1, d1, barrier, results)),
                         CTX.Process(target=region_writer,
                                     args=(str(mnt / name2), o2, d2, barrier, results))]
                out = _run_all(procs, results, time.monotonic() + 30)
                errors = [o[2] for o in out if o[0] == "error"]
                assert not errors, "\n".join(errors)
                for name in {name1, name2}:
                    got = (mnt / name).read_bytes()
                    assert got == want, f"{name}: one of two simultaneous writes was lost"
                    checked += len(got)
                assert os.stat(mnt / name1).st_ino == os.stat(mnt / name2).st_ino
            figures.daemon(proc.pid)
    for r in range(ROUNDS):
        assert os.stat(upper / f"hl/a{r}").st_ino == os.stat(upper / f"hl/b{r}").st_ino, \
            "the upper copies of a hard link are two files"
        assert (lower / f"big{r}").read_bytes() == originals[f"big{r}"]
    figures["ops"] = ROUNDS * 4
    figures["bytes_checked"] = checked
    figures.note(f"{ROUNDS} x (two writers on one {BIG >> 20} MiB lower file, "
                 "two on the names of a hard link)")


# -- stress-ng ------------------------------------------------------------------------------

# Stressors of the filesystem class left out, and why. Each of the others runs 3 s with one
# instance per CPU on the mount (--temp-path) and must pass; those that find a feature missing
# (FIEMAP, fs-verity: ioctls pyfuse3 cannot pass) skip themselves and pass. A probe of every
# stressor alone on a pyunion mount (2026-12-01) found no other that failed.
STRESS_NG_EXCLUDED = {
    "bind-mount": "stress-ng itself disables it: 'may hang or reboot the machine'",
    "binderfs": "mounts binderfs of its own; nothing on our mount (absent here: ENODEV)",
    "procfs": "reads /proc, not our mount",
    "dup": "dup(2)s /dev/zero descriptors, not our mount",
    "eventfd": "eventfd(2) only, not our mount",
    "fsize": "checks RLIMIT_FSIZE through fallocate(2), which pyunion lacks (README Limits: "
             "EOPNOTSUPP); stress-ng's write-based stand-in for it then misreports now and then "
             "(passed alone 3 times; once in a full run: 'fallocate unexpectedly succeeded "
             "at offset 262144'; the traced writes there did get EFBIG and SIGXFSZ)",
}


@pytest.mark.skipif(not LONG, reason="long mode only (PYUNION_STRESS=long)")
@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng is not installed")
@pytest.mark.timeout(600)
def test_stress_ng_filesystem(tmp_path, figures):
    listing = subprocess.run(["stress-ng", "--class", "filesystem?"], capture_output=True,
                             text=True, timeout=30)
    names = sorted(set(re.findall(r"[\w-]+", (listing.stdout + listing.stderr)
                                  .split(":", 1)[-1])) - {"class", "filesystem", "stressors"})
    run = [n for n in names if n not in STRESS_NG_EXCLUDED]
    lower, upper = fresh_dir(tmp_path, "lower"), fresh_dir(tmp_path, "upper")
    log = tmp_path / "stress-ng.log"
    mnt = fresh_dir(tmp_path, "mnt")
    # After stress-ng the daemon has been seen to take 7 s (idle machine) to over 20 s (busy)
    # to exit once unmounted: allowed here, and reported.
    with daemon_mounted([lower], upper, mnt, exit_timeout=120) as proc:
        result = subprocess.run(
            ["stress-ng", "--class", "filesystem", "--seq", "0", "--timeout", "3",
             "--temp-path", str(mnt), "--exclude", ",".join(sorted(STRESS_NG_EXCLUDED)),
             "--metrics-brief", "--log-file", str(log), "--verify"],
            capture_output=True, text=True, timeout=560)
        figures.daemon(proc.pid)
    text = log.read_text() if log.exists() else result.stdout + result.stderr
    failures = [line for line in text.splitlines() if " fail: " in line or " error: " in line]
    ran = sorted(set(re.findall(r"metrc: \[\d+\] ([\w-]+) +\d+ ", text)) - {"stressor"})
    figures["ops"] = sum(int(n) for n in re.findall(r"metrc: \[\d+\] [\w-]+ +(\d+) +\d", text))
    figures.note(f"stress-ng: {len(ran)} stressors ran ({', '.join(ran)}); excluded: "
                 f"{', '.join(sorted(STRESS_NG_EXCLUDED))}; the daemon exited "
                 f"{proc.exit_seconds:.1f} s after the unmount")
    assert not failures, "stress-ng failures:\n" + "\n".join(failures[:30])
    assert "successful run completed" in text, f"stress-ng did not complete:\n{text[-3000:]}"
    assert result.returncode == 0, f"stress-ng exit {result.returncode}:\n{text[-3000:]}"
    assert len(ran) >= len(names) - len(STRESS_NG_EXCLUDED) - 2, f"only {ran} ran of {run}"
