"""Stateful differential test of every write operation: pyunion against kernel overlayfs.

A hypothesis state machine mounts the same fixed lower layers twice, through the subject
(pyunion) and through kernel overlayfs (``redirect_dir=on,index=on``, the reference), each with
its own fresh upper. Every rule performs one operation (tests/opscript.py) at the same relative
path on both mounts and asserts the same result or the same errno; after every step the whole
visible trees are compared (tests/treesnap.py, with mtimes: a time the clock set during the run
is normalised to "recent", every other time, i.e. one from the lowers or from an explicit
utime, must be equal to the nanosecond). At the end of each example, unmounted, the subject's
upper must hold no ``.wh.*`` files, must remount through pyunion to the same tree, and must read
through kernel overlayfs (fresh workdir) as the same tree.

A failure is reported with its program cut down by replaying it on fresh mounts (ddmin below),
e.g. ``minimal program (2 of 43 ops): mkdir('n3', 0o755) / rename('d1', 'n3/n2', '0')``.

Budget: ``make test`` runs a small derandomized budget (about a minute for this file);
``PYUNION_LONG_TESTS=1`` runs many more and longer programs (same tests, bigger numbers).
``PYUNION_WRITEDIFF_SUBJECT=kernel`` (two kernel mounts: must always agree) or
``=fuse-overlayfs`` (finds its known differences) validates the machine itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests import mounts, treesnap
from tests.opscript import GENERATORS, Model, Op, random_op, short

LONG = os.environ.get("PYUNION_LONG_TESTS") == "1"
SUBJECT = os.environ.get("PYUNION_WRITEDIFF_SUBJECT", "pyunion")
KERNEL_OPTIONS = ("redirect_dir=on", "index=on")
# A timestamp within this many ns of the run is "set by the clock", not by the test.
CLOCK_SLACK_NS = 10 * 10**9
BUSY_RETRY_SECONDS = 30.0
MINIMIZE_SECONDS = 900 if LONG else 150

MACHINE_SETTINGS = settings(
    max_examples=150 if LONG else 20,
    stateful_step_count=50 if LONG else 40,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    report_multiple_bugs=True,
    suppress_health_check=list(HealthCheck),
    # No hypothesis shrinking: a failing program is minimized by replay instead (see ddmin).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
LAYER_SEEDS = range(8) if LONG else range(2)
LAYER_STEPS = 60 if LONG else 25


# -- the lower layers -------------------------------------------------------------------------


def _file(root: Path, rel: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0),
          xattrs: dict[str, bytes] | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(path, name, value)


def _dir(root: Path, rel: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0),
         xattrs: dict[str, bytes] | None = None) -> None:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *owner)
    os.chmod(path, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(path, name, value)


def _whiteout(root: Path, rel: str) -> None:
    """Kernel-format whiteout: char device 0/0."""
    os.mknod(root / rel, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _set_times(root: Path) -> None:
    """Fixed, distinct, far-past mtimes on everything (children before their dirs)."""
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(root, topdown=False)):
        for j, name in enumerate(sorted(filenames + dirnames)):
            ns = 1_100_000_000_000_000_000 + i * 10**12 + j * 10**9 + 123_456_789
            os.utime(os.path.join(dirpath, name), ns=(ns, ns), follow_symlinks=False)
        ns = 1_050_000_000_000_000_000 + i * 10**12 + 987_654_321
        os.utime(dirpath, ns=(ns, ns))


def _bottom(root: Path, hardlinks: bool = True) -> None:
    _file(root, "d1/f1", b"bottom d1/f1\n")
    _file(root, "d1/sub/g", b"deep g\n")
    _file(root, "d1/sub/deeper/h", b"deeper h\n", 0o600)
    _file(root, "d2/b_only", b"hidden by opaque d2\n")
    _file(root, "shared/x", b"bottom shared/x, whited out above\n")
    _file(root, "shared/w", b"bottom shared/w\n")
    _file(root, "wo", b"whited out above\n")
    _file(root, "wdir/c1", b"c1\n")
    _file(root, "wdir/c2", b"c2\n")
    _file(root, "filedir/inner", b"dir hidden by a file above\n")
    _file(root, "dirfile", b"file hidden by a dir above\n")
    _file(root, "f_bottom", b"bottom file\n", 0o600, (1000, 1000), {"user.k": b"bottom"})
    _file(root, "suid", b"#!/bin/true\n", 0o4755, (1234, 2345))
    if hardlinks:
        _file(root, "h1", b"hard link pair\n", 0o640, (1000, 100), {"user.a": b"h"})
        os.link(root / "h1", root / "h2")
        _file(root, "h3a", b"hard link triple\n")
        os.link(root / "h3a", root / "d1/h3b")
        os.link(root / "h3a", root / "shared/h3c")
    os.mkfifo(root / "fifo", 0o640)
    os.symlink("f1", root / "sym")
    os.symlink("d1", root / "symd")
    os.symlink("nowhere", root / "dangling")
    _dir(root, "priv", 0o700, (1234, 2345))
    _file(root, "priv/secret", b"secret\n", 0o600, (1234, 2345))
    _dir(root, "empty")


def _middle(root: Path, hardlinks: bool = True) -> None:
    _file(root, "f1", b"middle root f1\n", 0o644, (0, 0), {"user.a": b"mid"})
    _file(root, "d1/f2", b"middle d1/f2\n")
    _file(root, "d1/sub/g2", b"middle g2\n")
    _file(root, "shared/y", b"middle shared/y\n")
    _file(root, "mh1", b"middle hard link\n")
    if hardlinks:
        os.link(root / "mh1", root / "d1/mh2")
    _file(root, "fat", bytes(range(256)) * 600)  # 150 KiB: more than one copy chunk
    _dir(root, "mdir", 0o750, (1000, 1000), {"user.m": b"1"})
    _file(root, "mdir/m", b"m\n")


def _top(root: Path, hardlinks: bool = True) -> None:
    _dir(root, "d1", 0o775, (0, 100), {"user.k": b"top d1"})
    _file(root, "d1/f1", b"top d1/f1 shadows bottom\n", 0o640, (1000, 0))
    _dir(root, "d2")
    os.setxattr(root / "d2", "trusted.overlay.opaque", b"y")
    _file(root, "d2/a_only", b"top opaque d2\n")
    _whiteout(root, "wo")
    _whiteout(root, "wdir")
    _dir(root, "shared")
    _whiteout(root, "shared/x")
    _file(root, "shared/z", b"top shared/z\n")
    _file(root, "filedir", b"file over a dir\n")
    _file(root, "dirfile/inner2", b"dir over a file\n")
    _file(root, "f_top", b"top file\n", 0o755, (0, 0), {"user.a": b"1", "user.b": b"2"})


def build_lowers(base: Path, count: int = 3, hardlinks: bool = True) -> list[Path]:
    """Fixed lower layers, top-most first: 3 = top:middle:bottom, 2 = top:bottom.

    ``hardlinks=False`` leaves out the hard-linked lower files (see test_upper_as_lower).
    """
    builders = [("top", _top), ("middle", _middle), ("bottom", _bottom)]
    if count == 2:
        builders = [builders[0], builders[2]]
    layers = []
    for name, build in builders:
        root = base / f"lower-{name}"
        root.mkdir(parents=True)
        build(root, hardlinks)
        _set_times(root)
        layers.append(root)
    return layers


# -- mounting ---------------------------------------------------------------------------------


def _mount(stack: contextlib.ExitStack, kind: str, lowers: Sequence[Path], upper: Path,
           work: Path, mnt: Path) -> Path:
    """Mount ``kind`` (pyunion / kernel / fuse-overlayfs) and register its unmount."""
    if kind == "pyunion":  # its default workdir: <parent>/.<upper>.work
        return stack.enter_context(mounts.pyunion_mounted(lowers, upper, mnt))
    if kind == "kernel":
        return _enter_kernel(stack, lowers, upper, work, mnt)
    if kind == "fuse-overlayfs":
        return stack.enter_context(mounts.fuse_overlayfs_mounted(lowers, upper, work, mnt))
    raise ValueError(f"unknown subject {kind!r}")


def _enter_kernel(stack: contextlib.ExitStack, lowers: Sequence[Path], upper: Path, work: Path,
                  mnt: Path) -> Path:
    """Kernel overlayfs mount, retried while a layer is still "in use" (EBUSY).

    Remounting an upper (or using it as a lower) right after its unmount fails with EBUSY if
    any other mount namespace created meanwhile (other tests on this machine use unshare) still
    holds a copy of the old mount; such namespaces are short-lived.
    """
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    while True:
        try:
            return stack.enter_context(
                mounts.overlay_mounted(lowers, upper, work, mnt, KERNEL_OPTIONS))
        except mounts.MountError as e:
            if "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _fresh(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir()
    return path


def _snap(root: Path, t0: int) -> dict[str, Any]:
    """treesnap with mtimes; a time set by the clock during this run becomes "recent"."""
    snap = treesnap.snapshot(root, times=True)
    lo, hi = t0 - CLOCK_SLACK_NS, time.time_ns() + CLOCK_SLACK_NS
    for entry in snap["entries"].values():
        if lo <= entry.get("mtime_ns", -1) <= hi:
            entry["mtime_ns"] = "recent"
    return snap


_DIVERGENCES: dict[str, type[AssertionError]] = {}


def divergence(what: str) -> type[AssertionError]:
    """One AssertionError subclass per kind of failure (op kind, tree after op kind, offline
    check), so hypothesis reports each as its own bug and the minimizer keeps to one bug."""
    if what not in _DIVERGENCES:
        _DIVERGENCES[what] = type(f"Divergence_{what}", (AssertionError,), {})
    return _DIVERGENCES[what]


class Pair:
    """The subject and the kernel reference over the same lowers, driven op by op."""

    def __init__(self, stack: contextlib.ExitStack, base: Path, subject_lowers: Sequence[Path],
                 ref_lowers: Sequence[Path], t0: int, history: Sequence[Op | str] = (),
                 quiet: bool = False) -> None:
        self.base, self.t0, self.quiet = base, t0, quiet
        self.ops: list[Op | str] = list(history)
        self.subject_upper = _fresh(base, "s-upper")
        self.ref_upper = _fresh(base, "k-upper")
        self.subject_work = _fresh(base, "s-work")  # not used by pyunion (default workdir)
        self.subject = _mount(stack, SUBJECT, subject_lowers, self.subject_upper,
                              self.subject_work, _fresh(base, "s-mnt"))
        self.ref = _mount(stack, "kernel", ref_lowers, self.ref_upper,
                          _fresh(base, "k-work"), _fresh(base, "k-mnt"))
        self.model = Model(self.check_trees("mount"))

    def run(self, op: Op) -> None:
        """Apply ``op`` to both; assert equal outcomes and equal trees afterwards."""
        self.ops.append(op)
        if not self.quiet and currently_in_test_context():
            note(str(op))
        ref = op.apply(str(self.ref))
        got = op.apply(str(self.subject))
        if got != ref:
            raise divergence(op.kind)(
                f"{op}\n  {SUBJECT}: {short(got)}\n  kernel: {short(ref)}\n{self.history()}")
        self.model = Model(self.check_trees(op.kind))

    def check_trees(self, what: str) -> dict[str, Any]:
        """Compare the visible trees; returns the reference snapshot."""
        ref = _snap(self.ref, self.t0)
        try:
            got = _snap(self.subject, self.t0)
        except OSError as e:  # e.g. a name listed by readdir that lstat cannot find
            raise divergence(f"tree_after_{what}")(
                f"snapshot of {SUBJECT} failed: {e!r}\n{self.history()}") from e
        diff = treesnap.differences(got, ref)
        if diff:
            raise divergence(f"tree_after_{what}")(
                f"trees differ (first = {SUBJECT}, second = kernel):\n  " + "\n  ".join(diff)
                + "\n" + self.history())
        return ref

    def history(self) -> str:
        return "ops:\n  " + "\n  ".join(map(str, self.ops))


def _wh_names(upper: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(upper):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith(".wh.")]
    return sorted(out)


def _kernel_view(base: Path, lowers: Sequence[Path], upper: Path, work: Path,
                 t0: int) -> dict[str, Any]:
    """Snapshot of ``upper`` over ``lowers`` through kernel overlayfs."""
    with contextlib.ExitStack() as stack:
        mnt = _enter_kernel(stack, lowers, upper, work, _fresh(base, "offline-mnt"))
        return _snap(mnt, t0)


def check_upper_offline(pair: Pair, lowers: Sequence[Path], ref_snap: dict[str, Any]) -> None:
    """After unmounting: the subject's upper is in kernel format and holds the whole state.

    No ``.wh.*`` files; pyunion remounted on its upper (and workdir) shows the same tree; kernel
    overlayfs over the subject's upper with a fresh workdir shows the same tree. (A kernel upper
    needs its own workdir for that: the kernel's index, which serves the not-yet-copied-up names
    of a lower hard link, lives there. pyunion links every visible name of such a file into the
    upper at copy-up, so its upper must stand on its own.)
    """
    leftovers = _wh_names(pair.subject_upper)
    if leftovers:
        raise divergence("offline_wh_files")(
            f".wh.* files in {SUBJECT}'s upper: {leftovers}\n{pair.history()}")
    if SUBJECT == "pyunion":
        with mounts.pyunion_mounted(lowers, pair.subject_upper, pair.subject) as mnt:
            diff = treesnap.differences(_snap(mnt, pair.t0), ref_snap)
        if diff:
            raise divergence("offline_pyunion_remount")(
                "pyunion remounted on its upper differs from the reference (first = pyunion, "
                "second = kernel):\n  " + "\n  ".join(diff) + "\n" + pair.history())
    work = pair.subject_work if SUBJECT == "kernel" else _fresh(pair.base, "offline-work")
    got = _kernel_view(pair.base, lowers, pair.subject_upper, work, pair.t0)
    diff = treesnap.differences(got, ref_snap)
    if diff:
        raise divergence("offline_kernel_view")(
            f"kernel overlayfs over {SUBJECT}'s upper differs from the reference (first = kernel "
            "over the subject's upper, second = live reference):\n  " + "\n  ".join(diff)
            + "\n" + pair.history())


def _cleanup(base: Path) -> None:
    """Remove an example's directory, unless something is (still) mounted below it."""
    prefix = os.path.realpath(base) + os.sep
    if not any(p.startswith(prefix) for p in mounts.mounted_paths()):
        shutil.rmtree(base, ignore_errors=True)


# -- minimizing a failing program -------------------------------------------------------------
# Hypothesis' own shrinking does poorly here (each path is drawn from the model of the moment,
# so deleting an early step changes what every later draw means) and costs a remount per try.
# Instead, a failing program is replayed, as concrete ops, on fresh mounts and cut down by
# delta debugging to a (1-)minimal program that still fails the same way.

_MINIMIZED: dict[tuple[str, tuple[str, ...]], str] = {}


def replay(base: Path, ops: Sequence[Op], offline: bool) -> str | None:
    """Run ``ops`` on fresh lowers and mounts; the failure's class name, or None if none."""
    workdir = Path(tempfile.mkdtemp(prefix="replay-", dir=base))
    t0 = time.time_ns()
    try:
        with contextlib.ExitStack() as stack:
            lowers = build_lowers(workdir)
            pair = Pair(stack, workdir, lowers, lowers, t0, quiet=True)
            for op in ops:
                pair.run(op)
            if not offline:
                return None
            ref_snap = pair.check_trees("last step")
        check_upper_offline(pair, lowers, ref_snap)
        return None
    except Exception as e:  # any failure counts, compared by class name
        return type(e).__name__
    finally:
        _cleanup(workdir)


def ddmin(ops: list[Op], fails: Callable[[list[Op]], bool], deadline: float) -> list[Op]:
    """Zeller's delta debugging: drop chunks of ops while the program still fails."""
    n = 2
    while len(ops) >= 2 and time.monotonic() < deadline:
        size = -(-len(ops) // n)
        for start in range(0, len(ops), size):
            candidate = ops[:start] + ops[start + size:]
            if time.monotonic() < deadline and fails(candidate):
                ops, n = candidate, max(n - 1, 2)
                break
        else:
            if size == 1:
                break
            n = min(len(ops), 2 * n)
    return ops


def minimized_report(base: Path, ops: Sequence[Op | str], failure: str) -> str:
    """The shortest failing program found within the time budget, as text for the report."""
    program = [op for op in ops if isinstance(op, Op)]
    key = (failure, tuple(map(str, program)))
    if key not in _MINIMIZED:
        offline = failure.startswith("Divergence_offline")
        deadline = time.monotonic() + MINIMIZE_SECONDS

        def fails(candidate: list[Op]) -> bool:
            return replay(base, candidate, offline) == failure

        if not fails(program):
            text = "(does not fail when replayed on fresh mounts: flaky or timing-dependent)"
        else:
            small = ddmin(program, fails, deadline)
            text = f"minimal program ({len(small)} of {len(program)} ops):\n    " + "\n    ".join(
                map(str, small))
        _MINIMIZED[key] = text
    return _MINIMIZED[key]


# -- the state machine ------------------------------------------------------------------------


def _rule(kind: str) -> Callable[..., None]:
    generate = GENERATORS[kind]

    def step(self: WriteDifferential, data: st.DataObject) -> None:
        def pick(options: Sequence[Any]) -> Any:
            # Draw an index, not the value: hypothesis prints every draw, and some values are
            # 64 KiB of data. The op itself is printed as a note.
            return options[data.draw(st.integers(0, len(options) - 1))]

        self.run(generate(pick, self.pair.model))

    step.__name__ = kind
    return rule(data=st.data())(step)


class WriteDifferential(RuleBasedStateMachine):
    """Fresh lowers, subject and reference mounts per example; one op per step on both."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base
        self.t0 = time.time_ns()
        self.dir = Path(tempfile.mkdtemp(prefix="ex-", dir=base))
        self.stack = contextlib.ExitStack()
        self.broken = False
        try:
            self.lowers = build_lowers(self.dir)
            self.pair = Pair(self.stack, self.dir, self.lowers, self.lowers, self.t0)
        except BaseException:
            self.stack.close()
            _cleanup(self.dir)
            raise

    def run(self, op: Op) -> None:
        try:
            self.pair.run(op)
        except AssertionError as e:
            self.broken = True
            self._fail_minimized(e)
        except BaseException:
            self.broken = True
            raise

    def _fail_minimized(self, error: AssertionError) -> None:
        """Re-raise ``error`` (same class) with the minimized program added."""
        self.stack.close()  # unmount this example's mounts before replaying
        report = minimized_report(self.base, self.pair.ops, type(error).__name__)
        raise type(error)(f"{error}\n  {report}") from None

    create = _rule("create")
    write_at = _rule("write_at")
    truncate = _rule("truncate")
    mkdir = _rule("mkdir")
    mkfifo = _rule("mkfifo")
    symlink = _rule("symlink")
    link = _rule("link")
    unlink = _rule("unlink")
    rmdir = _rule("rmdir")
    rename = _rule("rename")
    chmod = _rule("chmod")
    chown = _rule("chown")
    utime = _rule("utime")
    setxattr = _rule("setxattr")
    removexattr = _rule("removexattr")
    read = _rule("read")
    listdir = _rule("listdir")
    held = _rule("held")

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.broken = True  # a failure below is reported once, minimized
                try:
                    ref_snap = self.pair.check_trees("last step")
                    self.stack.close()
                    check_upper_offline(self.pair, self.lowers, ref_snap)
                except AssertionError as e:
                    self._fail_minimized(e)
        finally:
            self.stack.close()
            _cleanup(self.dir)


def test_rules_cover_every_op() -> None:
    """Every op kind in the vocabulary has a rule in the machine."""
    rules = {name for name in GENERATORS if callable(getattr(WriteDifferential, name, None))}
    assert rules == set(GENERATORS)


@pytest.mark.timeout(7200 if LONG else 600)
def test_write_differential(tmp_path: Path) -> None:
    run_state_machine_as_test(lambda: WriteDifferential(tmp_path), settings=MACHINE_SETTINGS)


# -- layers of layers -------------------------------------------------------------------------


def _run_random(pair: Pair, rng: random.Random, steps: int) -> None:
    for _ in range(steps):
        pair.run(random_op(rng.choice, pair.model))


# Leaves every kind of marker in U1: an absolute and a relative redirect, whiteouts of a file
# and a dir, an opaque dir, an upper-only hard-link group made from a copied-up lower file.
STAGE1_PRELUDE = [
    Op("link", ("f_top", "d1/lnk")),
    Op("link", ("d1/lnk", "shared/lnk2")),
    Op("rename", ("d1/sub", "shared/sub2", "0")),
    Op("rename", ("dirfile", "dirfile2", "0")),
    Op("unlink", ("shared/w",)),
    Op("rmdir", ("empty",)),
    Op("mkdir", ("empty", 0o755)),
    Op("create", ("empty/new", "WRONLY|CREAT", 0o644, b"new\n")),
    Op("unlink", ("filedir",)),
    Op("mkdir", ("filedir", 0o700)),
]

# Works on those markers, now in a lower layer: renames a redirected dir again, writes below
# redirected dirs, removes an opaque dir, links and writes a (now lower) hard-link group.
STAGE2_PRELUDE = [
    Op("rename", ("shared/sub2", "sub3", "0")),
    Op("write_at", ("sub3/g", 0, b"changed")),
    Op("create", ("dirfile2/inner2", "WRONLY|TRUNC", 0o644, b"rewritten\n")),
    Op("unlink", ("empty/new",)),
    Op("rmdir", ("empty",)),
    Op("link", ("d1/lnk", "lnk3")),
    Op("write_at", ("shared/lnk2", 2, b"XY")),
    Op("rename", ("filedir", "d1/filedir2", "0")),
]


@pytest.mark.timeout(1800 if LONG else 300)
@pytest.mark.parametrize("seed", LAYER_SEEDS)
def test_upper_as_lower(tmp_path: Path, seed: int) -> None:
    """Each side's upper after a program becomes the top lower of a second stack.

    Stage 1: A:B + U1 (pyunion's U1 / kernel's U1), a fixed prelude then random ops.
    Stage 2: U1:A:B + fresh U2, each side over its own U1, so the subject has to read the
    markers it wrote itself (redirects, whiteouts, opaque dirs, hard links), the kernel its own.
    A and B have no hard-linked files here: the kernel keeps the link between a copied-up name
    of a lower hard link and its other names only in its workdir index, which a U1-as-lower
    stack doesn't have, so its stage 2 would not show the stage 1 state (the machine covers
    lower hard links).
    """
    rng = random.Random(seed)
    t0 = time.time_ns()
    lowers = build_lowers(tmp_path, count=2, hardlinks=False)
    with contextlib.ExitStack() as stack:
        first = Pair(stack, _fresh(tmp_path, "stage1"), lowers, lowers, t0)
        for op in STAGE1_PRELUDE:
            first.run(op)
        _run_random(first, rng, LAYER_STEPS)
        first.check_trees("stage 1")
    with contextlib.ExitStack() as stack:
        second = Pair(stack, _fresh(tmp_path, "stage2"), [first.subject_upper, *lowers],
                      [first.ref_upper, *lowers], t0,
                      history=[*first.ops, "-- unmounted; stage 2: U1:A:B + fresh U2 --"])
        for op in STAGE2_PRELUDE:
            second.run(op)
        _run_random(second, rng, LAYER_STEPS)
        second.check_trees("stage 2")


# -- names that pyunion refuses ---------------------------------------------------------------

WH_OPS = [
    Op("create", ("d1/.wh.c", "WRONLY|CREAT", 0o644, b"x")),
    Op("create", (".wh.c", "RDWR|CREAT|APPEND", 0o644, b"x")),
    Op("mkdir", (".wh.d", 0o755)),
    Op("mkdir", ("d1/.wh.d", 0o755)),
    Op("mkfifo", (".wh.p", 0o644)),
    Op("symlink", ("f1", ".wh.s")),
    Op("link", ("f_top", ".wh.l")),
    Op("link", ("h1", "d1/.wh.l")),
    Op("rename", ("f1", ".wh.r", "0")),
    Op("rename", ("d1", ".wh.rd", "NOREPLACE")),
    Op("rename", ("shared/z", "shared/.wh.rz", "0")),
]


def test_wh_names_rejected(tmp_path: Path, pyunion, overlay) -> None:
    """pyunion refuses to create any ``.wh.*`` name (EINVAL); the kernel allows them.

    Not differential on purpose: a ``.wh.`` name in an upper would be a whiteout for
    fuse-overlayfs and for our own AUFS-format reader.
    """
    t0 = time.time_ns()
    lowers = build_lowers(tmp_path)
    p_upper, k_upper = _fresh(tmp_path, "p-upper"), _fresh(tmp_path, "k-upper")
    p = pyunion(lowers, p_upper)
    k = overlay(lowers, k_upper, _fresh(tmp_path, "k-work"))
    before = _snap(p, t0)
    wrong = []
    for op in WH_OPS:
        got, ref = op.apply(str(p)), op.apply(str(k))
        if got != ("err", "EINVAL") or ref[0] != "ok":
            wrong.append(f"{op}: pyunion {got}, kernel {ref}")
    assert not wrong, "expected pyunion EINVAL and kernel success:\n  " + "\n  ".join(wrong)
    diff = treesnap.differences(_snap(p, t0), before)
    assert not diff, "refused creates changed the pyunion tree:\n  " + "\n  ".join(diff)
    assert not _wh_names(p_upper)
