"""Crash consistency, systematically: the daemon killed before each of its changing syscalls.

For each scenario (one operation through the mount), the daemon runs under ``strace`` once to
count the syscalls that change the upper or workdir (renames, links, unlinks, mkdir, mknod,
xattrs, owner, mode, times, data, fsync, opens) that the operation makes; then, for every
k among them, a fresh run whose k-th such syscall gets SIGKILL on entry (strace's
``inject=...:signal=KILL:when=k``), so the daemon dies just before it. After each kill the
upper remounted by pyunion must show the tree either as before the operation or as after it,
nothing in between, and kernel overlayfs over that upper must show the same tree.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import mounts, treesnap
from tests.stress.conftest import LONG, daemon_mounted, fresh_dir, kernel_overlay, size

# (No --seccomp-bpf: strace 6.1 then ignores inject=.)
CHANGING = ("rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,rmdir,mknod,"
            "mknodat,setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr,chown,"
            "fchown,lchown,fchownat,chmod,fchmod,fchmodat,utimensat,truncate,ftruncate,pwrite64,"
            "copy_file_range,fsync,fdatasync,symlink,symlinkat,openat")


def _lower(lower: Path) -> None:
    for d in ("d", "d/sub", "other", "hl", "empty"):
        (lower / d).mkdir()
    for name in ("d/a", "d/sub/b", "other/c", "other/gone"):
        (lower / name).write_text(name * 100)
    (lower / "big").write_bytes(os.urandom(3 << 20))
    (lower / "hl/x").write_text("linked" * 1000)
    os.link(lower / "hl/x", lower / "hl/y")
    os.setxattr(lower / "d", "user.tag", b"dir")


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        os.fsync(f.fileno())


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "rename a lower directory (redirect)": lambda m: os.rename(m / "d", m / "other/moved"),
    "write to a lower hard link (link copy-up)": lambda m: _append(m / "hl/x", b"!"),
    "append to a large lower file (copy-up)": lambda m: _append(m / "big", b"tail"),
    "delete a lower file (whiteout)": lambda m: os.unlink(m / "other/gone"),
    "rename a lower file over another (whiteout)": lambda m: os.rename(m / "d/a", m / "other/c"),
    "remove an empty lower directory (whiteout)": lambda m: os.rmdir(m / "empty"),
}
if not LONG:  # the short run: the one with the most steps
    SCENARIOS = {k: v for k, v in SCENARIOS.items() if "redirect" in k}


def _strace(log: Path, inject_at: tuple[str, int] | None) -> list[str]:
    cmd = ["strace", "-f", "-qq", "-o", str(log), "-e", f"trace={CHANGING}"]
    if inject_at is not None:
        name, nth = inject_at
        cmd += ["-e", f"inject={name}:signal=KILL:when={nth}"]
    return cmd


def _calls(log: Path) -> list[tuple[str, int]]:
    """The traced calls in order, each as (syscall, its ordinal in its thread): strace counts
    each syscall of each thread separately for ``when=``."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for line in log.read_text().splitlines():
        tid, _, rest = line.partition(" ")
        if "(" not in rest or rest.startswith("<...") or rest.startswith("+++"):
            continue
        name = rest.split("(", 1)[0].strip()
        seen[tid, name] = seen.get((tid, name), 0) + 1
        out.append((name, seen[tid, name]))
    return out


def _run_traced(lower: Path, upper: Path, mnt: Path, log: Path, op,
                inject_at: tuple[str, int] | None):
    """Mounts pyunion under strace, runs ``op``; returns (traced calls before op, all traced
    calls up to its end, whether the daemon died). A kill during the mount: (None, None, True).
    """
    cmd = _strace(log, inject_at) + mounts.pyunion_command([lower], upper, mnt)
    try:
        proc = mounts.start_pyunion(cmd, mnt)
    except mounts.MountError:
        return None, None, True
    try:
        time.sleep(0.3)
        before = len(_calls(log))
        try:
            op(mnt)
        except OSError:
            pass  # the daemon died under the operation
        time.sleep(0.1)
        after = _calls(log)
        died = proc.poll() is not None
    finally:
        mounts.unmount(mnt, proc)  # the daemon exits on the unmount, then strace
        if proc.stderr:
            proc.stderr.close()
    return before, after, died


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.timeout(size(120, 600))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_before_each_step(scenario, tmp_path, figures):
    op = SCENARIOS[scenario]
    lower = fresh_dir(tmp_path, "lower")
    _lower(lower)
    lower_snap = treesnap.snapshot(lower, times=True)
    with kernel_overlay([lower], fresh_dir(tmp_path, "ref-upper"), tmp_path) as ref:
        before = treesnap.snapshot(ref)
        op(ref)
        after = treesnap.snapshot(ref)
    assert treesnap.differences(before, after), "the scenario changes nothing"

    upper, mnt = fresh_dir(tmp_path, "upper"), fresh_dir(tmp_path, "mnt")
    first, calls, died = _run_traced(lower, upper, mnt, tmp_path / "count.log", op, None)
    assert not died and calls and len(calls) > first
    steps = calls[first:]
    with daemon_mounted([lower], upper, mnt):
        treesnap.assert_same_tree(treesnap.snapshot(mnt), after, "pyunion after the operation")
    outcomes = {"before": 0, "after": 0}
    kills = 0
    for k, step in enumerate(steps):
        upper, mnt = fresh_dir(tmp_path, f"upper{k}"), fresh_dir(tmp_path, f"mnt{k}")
        log = tmp_path / f"k{k}.log"
        started, _, died = _run_traced(lower, upper, mnt, log, op, step)
        if started is None or not died:
            continue  # the kill came during the mount, or never (this run's threads differ)
        kills += 1
        with daemon_mounted([lower], upper, mnt):
            seen = treesnap.snapshot(mnt)
        if not treesnap.differences(seen, after):
            outcomes["after"] += 1
        else:
            problems = treesnap.differences(seen, before)
            assert not problems, (
                f"killed before {step[0]} #{step[1]} (step {k + 1} of {len(steps)}): the tree is "
                "neither as before nor as after the operation; against before:\n  "
                + "\n  ".join(problems) + "\n  against after:\n  "
                + "\n  ".join(treesnap.differences(seen, after))
                + "\n  daemon's last syscalls:\n  "
                + "\n  ".join(log.read_text().splitlines()[-6:]))
            outcomes["before"] += 1
        with kernel_overlay([lower], upper, tmp_path) as kmnt:
            treesnap.assert_same_tree(seen, treesnap.snapshot(kmnt),
                                      f"pyunion and kernel overlayfs after a kill at step {k}")
    treesnap.assert_same_tree(treesnap.snapshot(lower, times=True), lower_snap, "the lower")
    figures["kills"] = kills
    figures["ops"] = len(steps)
    figures.note(f"{scenario}: {len(steps)} changing syscalls; {kills} kills: "
                 f"{outcomes['before']} showed before, {outcomes['after']} after")
    assert kills >= len(steps) // 2, "most injected kills did not happen"
