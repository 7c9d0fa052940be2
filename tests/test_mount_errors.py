"""Bad input to ``mount.pyunion``: one ``mount.pyunion: `` line on stderr, non-zero exit, no change.

Every case runs the helper in background mode (no ``-f``), the way mount(8) runs it. Before and
after, the directories involved are snapshotted recursively (names, types, modes, link targets,
all xattrs, hidden entries, so also the default workdir ``<parent>/.<upper>.work``) and the
mount table below them is compared: a refused mount must leave both exactly as they were.
A case that wrongly succeeds is unmounted again in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import mounts
from tests.cli_helpers import (
    DEV_FUSE_0600_AS_NOBODY,
    FUSERMOUNT_NOT_SETUID_AS_NOBODY,
    NO_USER_ALLOW_OTHER_AS_NOBODY,
    NOBODY,
    PREFIX,
    WITHOUT_DEV_FUSE,
    Result,
    default_workdir,
    kill_leftovers,
    mounts_below,
    pids_with_arg,
    public_dir,
    readonly_bind,
    remount_ro,
    run_helper,
    tmpfs_mounted,
    tree_shape,
    undo_mounts,
    wait_gone,
    write,
)


@dataclass
class Bad:
    """One bad command line: ``names`` are the strings of which the message must contain one
    (the offending path or option); empty means only the message form is checked."""

    args: list[str]
    names: list[str]
    mnt: Path | None = None
    wrapper: Sequence[str] = ()
    ignore_case: bool = False
    extra_roots: list[Path] = field(default_factory=list)


@dataclass
class Layout:
    base: Path
    l1: Path
    l2: Path
    upper: Path
    mnt: Path

    def std(self) -> list[str]:
        return [f"{self.l1}:{self.l2}", str(self.upper), str(self.mnt)]


def make_layout(base: Path) -> Layout:
    """Two lowers with a file each, an empty upper and a mountpoint, all directly in ``base``."""
    lay = Layout(base, base / "l1", base / "l2", base / "upper", base / "mnt")
    for d in (lay.l1, lay.l2, lay.upper, lay.mnt):
        d.mkdir(parents=True)
    write(lay.l1 / "a", "from l1\n")
    write(lay.l2 / "b", "from l2\n")
    return lay


def check_refused(bad: Bad, roots: Sequence[Path]) -> None:
    """Run ``bad`` and assert: non-zero exit, one prefixed line naming the culprit, no change."""
    roots = [*roots, *bad.extra_roots]
    shape_before = {r: tree_shape(r) for r in roots}
    mounted_before = mounts_below(roots)
    mnt_was_mounted = bad.mnt is not None and mounts.is_mounted(bad.mnt)
    new_mounts = None
    try:
        result = run_helper(bad.args, wrapper=bad.wrapper)
    finally:
        new_mounts = mounts_below(roots) - mounted_before
        if new_mounts:
            undo_mounts(new_mounts)
            if bad.mnt is not None:
                kill_leftovers(wait_gone(pids_with_arg(bad.mnt), 10))
    assert result.returncode != 0, f"accepted bad input {bad.args}: {result}"
    assert not new_mounts, f"refused but left mounts behind: {dict(new_mounts)}"
    if bad.mnt is not None and not mnt_was_mounted:
        assert not mounts.is_mounted(bad.mnt)
    check_message(result, bad)
    for root in roots:
        assert tree_shape(root) == shape_before[root], f"refused mount changed {root}"


def check_message(result: Result, bad: Bad) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"want exactly one stderr line, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith(PREFIX), f"stderr line lacks {PREFIX!r}: {line!r}"
    if bad.names:
        text = line.lower() if bad.ignore_case else line
        wanted = [n.lower() if bad.ignore_case else n for n in bad.names]
        assert any(n in text for n in wanted), f"message names none of {bad.names}: {line!r}"


# --------------------------------------------------------------------------- path problems

Builder = Callable[[Layout, contextlib.ExitStack], Bad]


def missing_lower(lay: Layout, _: contextlib.ExitStack) -> Bad:
    gone = lay.base / "no-such-lower"
    return Bad([f"{lay.l1}:{gone}", str(lay.upper), str(lay.mnt)], [str(gone)], lay.mnt)


def missing_only_lower(lay: Layout, _: contextlib.ExitStack) -> Bad:
    gone = lay.base / "no-such-lower"
    return Bad([str(gone), str(lay.upper), str(lay.mnt)], [str(gone)], lay.mnt)


def missing_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    gone = lay.base / "no-such-upper"
    return Bad([f"{lay.l1}:{lay.l2}", str(gone), str(lay.mnt)], [str(gone)], lay.mnt)


def missing_mountpoint(lay: Layout, _: contextlib.ExitStack) -> Bad:
    gone = lay.base / "no-such-mnt"
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.upper), str(gone)], [str(gone)], gone)


def mountpoint_is_file(lay: Layout, _: contextlib.ExitStack) -> Bad:
    f = write(lay.base / "plainfile", "x")
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.upper), str(f)], [str(f)], f)


def lower_is_file(lay: Layout, _: contextlib.ExitStack) -> Bad:
    f = write(lay.base / "plainfile", "x")
    return Bad([f"{lay.l1}:{f}", str(lay.upper), str(lay.mnt)], [str(f)], lay.mnt)


def upper_is_file(lay: Layout, _: contextlib.ExitStack) -> Bad:
    f = write(lay.base / "plainfile", "x")
    return Bad([f"{lay.l1}:{lay.l2}", str(f), str(lay.mnt)], [str(f)], lay.mnt)


def mountpoint_already_mounted(lay: Layout, stack: contextlib.ExitStack) -> Bad:
    stack.enter_context(tmpfs_mounted(lay.mnt))
    return Bad(lay.std(), [str(lay.mnt)], lay.mnt)


def lower_twice(lay: Layout, _: contextlib.ExitStack) -> Bad:
    return Bad([f"{lay.l1}:{lay.l2}:{lay.l1}", str(lay.upper), str(lay.mnt)], [str(lay.l1)],
               lay.mnt)


def lower_twice_via_symlink(lay: Layout, _: contextlib.ExitStack) -> Bad:
    alias = lay.base / "alias"
    alias.symlink_to(lay.l1)
    return Bad([f"{lay.l1}:{alias}", str(lay.upper), str(lay.mnt)], [str(lay.l1), str(alias)],
               lay.mnt)


def lower_is_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.l1), str(lay.mnt)], [str(lay.l1)], lay.mnt)


def upper_is_lower_via_symlink(lay: Layout, _: contextlib.ExitStack) -> Bad:
    alias = lay.base / "alias"
    alias.symlink_to(lay.l2)
    return Bad([f"{lay.l1}:{lay.l2}", str(alias), str(lay.mnt)], [str(lay.l2), str(alias)],
               lay.mnt)


def upper_inside_lower(lay: Layout, _: contextlib.ExitStack) -> Bad:
    inner = lay.l1 / "sub"
    inner.mkdir()
    # the message may name either; the inner path starts with the outer one
    return Bad([f"{lay.l1}:{lay.l2}", str(inner), str(lay.mnt)], [str(lay.l1)], lay.mnt)


def lower_inside_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    inner = lay.upper / "sub"
    inner.mkdir()
    return Bad([f"{lay.l1}:{inner}", str(lay.upper), str(lay.mnt)], [str(lay.upper)], lay.mnt)


def mountpoint_inside_lower(lay: Layout, _: contextlib.ExitStack) -> Bad:
    inner = lay.l2 / "m"
    inner.mkdir()
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.upper), str(inner)], [str(lay.l2)], inner)


def mountpoint_inside_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    inner = lay.upper / "m"
    inner.mkdir()
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.upper), str(inner)], [str(lay.upper)], inner)


def mountpoint_is_lower(lay: Layout, _: contextlib.ExitStack) -> Bad:
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.upper), str(lay.l1)], [str(lay.l1)], lay.l1)


def mountpoint_is_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    return Bad([f"{lay.l1}:{lay.l2}", str(lay.upper), str(lay.upper)], [str(lay.upper)],
               lay.upper)


def lower_inside_mountpoint(lay: Layout, _: contextlib.ExitStack) -> Bad:
    inner = lay.mnt / "l"
    inner.mkdir()
    return Bad([f"{lay.l1}:{inner}", str(lay.upper), str(lay.mnt)], [str(lay.mnt)], lay.mnt)


def upper_inside_mountpoint(lay: Layout, _: contextlib.ExitStack) -> Bad:
    inner = lay.mnt / "u"
    inner.mkdir()
    return Bad([f"{lay.l1}:{lay.l2}", str(inner), str(lay.mnt)], [str(lay.mnt)], lay.mnt)


def upper_on_readonly_tmpfs(lay: Layout, stack: contextlib.ExitStack) -> Bad:
    fs = lay.base / "rofs"
    fs.mkdir()
    stack.enter_context(tmpfs_mounted(fs))
    upper = fs / "upper"
    upper.mkdir()
    remount_ro(fs)
    return Bad([f"{lay.l1}:{lay.l2}", str(upper), str(lay.mnt)], [str(upper)], lay.mnt)


def upper_on_readonly_bind(lay: Layout, stack: contextlib.ExitStack) -> Bad:
    src = lay.base / "src"
    (src / "upper").mkdir(parents=True)
    view = lay.base / "robind"
    view.mkdir()
    stack.enter_context(readonly_bind(src, view))
    upper = view / "upper"
    return Bad([f"{lay.l1}:{lay.l2}", str(upper), str(lay.mnt)], [str(upper)], lay.mnt)


def workdir_on_readonly_fs(lay: Layout, stack: contextlib.ExitStack) -> Bad:
    """Upper and workdir on one filesystem (same st_dev), but the workdir's mount is read-only."""
    fs = lay.base / "fs"
    fs.mkdir()
    stack.enter_context(tmpfs_mounted(fs))
    upper, work = fs / "upper", fs / "work"
    upper.mkdir()
    work.mkdir()
    view = lay.base / "robind"
    view.mkdir()
    stack.enter_context(readonly_bind(fs, view))
    args = [f"{lay.l1}:{lay.l2}", str(upper), str(lay.mnt), "-o", f"workdir={view / 'work'}"]
    return Bad(args, [str(view / "work")], lay.mnt)


def workdir_on_other_fs(lay: Layout, stack: contextlib.ExitStack) -> Bad:
    fs = lay.base / "otherfs"
    fs.mkdir()
    stack.enter_context(tmpfs_mounted(fs))
    work = fs / "work"
    work.mkdir()
    return Bad([*lay.std(), "-o", f"workdir={work}"], [str(work)], lay.mnt)


def upper_is_mount_root(lay: Layout, stack: contextlib.ExitStack) -> Bad:
    """The default workdir (in the upper's parent) would be on another fs than the upper."""
    stack.enter_context(tmpfs_mounted(lay.upper))
    return Bad(lay.std(), [str(lay.upper), str(default_workdir(lay.upper))], lay.mnt)


def workdir_inside_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    work = lay.upper / "work"
    work.mkdir()
    return Bad([*lay.std(), "-o", f"workdir={work}"], [str(lay.upper)], lay.mnt)


def workdir_inside_upper_missing(lay: Layout, _: contextlib.ExitStack) -> Bad:
    work = lay.upper / "work"
    return Bad([*lay.std(), "-o", f"workdir={work}"], [str(lay.upper)], lay.mnt)


def workdir_is_upper(lay: Layout, _: contextlib.ExitStack) -> Bad:
    return Bad([*lay.std(), "-o", f"workdir={lay.upper}"], [str(lay.upper)], lay.mnt)


def upper_inside_workdir(lay: Layout, _: contextlib.ExitStack) -> Bad:
    work = lay.base / "work"
    upper = work / "upper"
    upper.mkdir(parents=True)
    args = [f"{lay.l1}:{lay.l2}", str(upper), str(lay.mnt), "-o", f"workdir={work}"]
    return Bad(args, [str(work)], lay.mnt)


def no_dev_fuse(lay: Layout, _: contextlib.ExitStack) -> Bad:
    """/dev/fuse missing (only in a private mount namespace whose /dev is an empty tmpfs)."""
    return Bad(lay.std(), ["/dev/fuse"], lay.mnt, wrapper=WITHOUT_DEV_FUSE)


PATH_CASES: list[Builder] = [
    missing_lower,
    missing_only_lower,
    missing_upper,
    missing_mountpoint,
    mountpoint_is_file,
    lower_is_file,
    upper_is_file,
    mountpoint_already_mounted,
    lower_twice,
    lower_twice_via_symlink,
    lower_is_upper,
    upper_is_lower_via_symlink,
    upper_inside_lower,
    lower_inside_upper,
    mountpoint_inside_lower,
    mountpoint_inside_upper,
    mountpoint_is_lower,
    mountpoint_is_upper,
    lower_inside_mountpoint,
    upper_inside_mountpoint,
    upper_on_readonly_tmpfs,
    upper_on_readonly_bind,
    workdir_on_readonly_fs,
    workdir_on_other_fs,
    upper_is_mount_root,
    workdir_inside_upper,
    workdir_inside_upper_missing,
    workdir_is_upper,
    upper_inside_workdir,
    no_dev_fuse,
]


@pytest.mark.parametrize("build", PATH_CASES, ids=[b.__name__ for b in PATH_CASES])
def test_bad_paths_are_refused(build: Builder, tmp_path: Path, mount_stack) -> None:
    lay = make_layout(tmp_path / "case")
    bad = build(lay, mount_stack)
    check_refused(bad, [lay.base])


def _nobody_layout(pub: Path) -> Layout:
    base = pub / "case"
    base.mkdir()
    lay = make_layout(base)
    for path in (base, lay.l1, lay.l2, lay.upper, lay.mnt, lay.l1 / "a", lay.l2 / "b"):
        os.chown(path, NOBODY, NOBODY)
    return lay


def test_ordinary_user_without_setuid_fusermount3() -> None:
    """An ordinary user's mount goes through the setuid fusermount3: without it, say so."""
    with public_dir() as pub:
        lay = _nobody_layout(pub)
        check_refused(Bad(lay.std(), ["fusermount3"], lay.mnt,
                          wrapper=FUSERMOUNT_NOT_SETUID_AS_NOBODY), [pub])


def test_ordinary_user_needs_a_dev_fuse_of_their_own() -> None:
    """fusermount3 opens /dev/fuse with the caller's permissions: a 0600 one is named."""
    with public_dir() as pub:
        lay = _nobody_layout(pub)
        check_refused(Bad(lay.std(), ["/dev/fuse"], lay.mnt, wrapper=DEV_FUSE_0600_AS_NOBODY),
                      [pub])


def test_ordinary_user_allow_other_needs_user_allow_other() -> None:
    """-o allow_other as an ordinary user, with no user_allow_other in /etc/fuse.conf."""
    with public_dir() as pub:
        lay = _nobody_layout(pub)
        check_refused(Bad([*lay.std(), "-o", "allow_other"], ["user_allow_other"], lay.mnt,
                          wrapper=NO_USER_ALLOW_OTHER_AS_NOBODY), [pub])


# --------------------------------------------------------------------------- argument problems

OptionCase = Callable[[Layout], Bad]


def _opts(lay: Layout, opts: str, names: list[str]) -> Bad:
    return Bad([*lay.std(), "-o", opts], names, lay.mnt)


OPTION_CASES: dict[str, OptionCase] = {
    "lowerdir-without-value": lambda lay: Bad(
        ["src", str(lay.mnt), "-o", "lowerdir"], ["lowerdir"], lay.mnt),
    "lowerdir-empty": lambda lay: Bad(
        ["src", str(lay.mnt), "-o", f"lowerdir=,upperdir={lay.upper}"], ["lowerdir"], lay.mnt),
    "upperdir-empty": lambda lay: Bad(
        [f"{lay.l1}:{lay.l2}", str(lay.mnt), "-o", "upperdir="], ["upperdir"], lay.mnt),
    "empty-option": lambda lay: _opts(lay, "ro,,noatime", [",,", "empty"]),
    "option-without-name": lambda lay: _opts(lay, "=x", ["=x"]),
    "unknown-option": lambda lay: _opts(lay, "frobnicate", ["frobnicate"]),
    "unknown-option-with-value": lambda lay: _opts(lay, "frobnicate=1", ["frobnicate"]),
    "timeout-not-a-number": lambda lay: _opts(lay, "timeout=abc", ["timeout"]),
    "redirect-dir-bad-value": lambda lay: _opts(lay, "redirect_dir=maybe", ["redirect_dir"]),
    "index-bad-value": lambda lay: _opts(lay, "index=maybe", ["index"]),
    "upper-given-twice": lambda lay: _opts(lay, f"upperdir={lay.l2}", ["upperdir"]),
    "dash-o-without-argument": lambda lay: Bad([*lay.std(), "-o"], ["-o"], lay.mnt),
    "unknown-flag": lambda lay: Bad([*lay.std(), "-z"], ["-z"], lay.mnt),
    "unknown-long-flag": lambda lay: Bad([*lay.std(), "--frobnicate"], ["--frobnicate"], lay.mnt),
    "data-only-layers": lambda lay: Bad(
        [f"{lay.l1}::{lay.l2}", str(lay.upper), str(lay.mnt)], ["::"], lay.mnt),
    "data-only-layers-option": lambda lay: Bad(
        ["src", str(lay.mnt), "-o", f"lowerdir={lay.l1}::{lay.l2},upperdir={lay.upper}"],
        ["::"], lay.mnt),
    "no-lowers": lambda lay: Bad(["", str(lay.upper), str(lay.mnt)], ["lower"], lay.mnt,
                                 ignore_case=True),
    "no-lowers-no-upper": lambda lay: Bad(["", str(lay.mnt)], ["lower"], lay.mnt,
                                          ignore_case=True),
    "empty-lower-in-list": lambda lay: Bad(
        [f"{lay.l1}:", str(lay.upper), str(lay.mnt)], ["lower"], lay.mnt, ignore_case=True),
    "no-arguments": lambda lay: Bad([], [], None),
    "one-positional": lambda lay: Bad([f"{lay.l1}:{lay.l2}"], [], None),
    "one-positional-with-upperdir": lambda lay: Bad(
        [f"{lay.l1}:{lay.l2}", "-o", f"upperdir={lay.upper}"], [], None),
    "too-many-positionals": lambda lay: Bad([*lay.std(), "extra-arg"], ["extra-arg"], lay.mnt),
}


@pytest.mark.parametrize("case", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_bad_arguments_are_refused(case: OptionCase, tmp_path: Path) -> None:
    lay = make_layout(tmp_path / "case")
    check_refused(case(lay), [lay.base])


# --------------------------------------------------------------------------- resources in use


def test_upper_in_use_by_another_mount_is_refused(pyunion, tmp_path: Path) -> None:
    """The same upper may serve one mount at a time (the kernel answers EBUSY)."""
    lay = make_layout(tmp_path / "case")
    pyunion([lay.l1, lay.l2], lay.upper)  # its mountpoint is outside lay.base
    names = [str(lay.upper), str(default_workdir(lay.upper))]
    check_refused(Bad(lay.std(), names, lay.mnt), [lay.base])


def test_workdir_in_use_by_another_mount_is_refused(pyunion, tmp_path: Path) -> None:
    """Two mounts (different uppers) sharing one workdir: the kernel with index=on refuses the
    second with EBUSY ("workdir is in-use as upperdir/workdir of another mount")."""
    lay = make_layout(tmp_path / "case")
    work, other_upper = lay.base / "work", lay.base / "upper2"
    work.mkdir()
    other_upper.mkdir()
    pyunion([lay.l1], other_upper, options=[f"workdir={work}"])
    check_refused(Bad([*lay.std(), "-o", f"workdir={work}"], [str(work)], lay.mnt), [lay.base])
