"""``mount.pyunion`` command line, positive behaviour.

Background and foreground modes and how each ends, the three argument forms (compared with
kernel overlayfs over the same layers), mount(8) integration through /sbin/mount.* helpers,
read-only mounts, use by another user, mount flags, the workdir, and where writes land.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import xattr

from tests import mounts
from tests.cli_helpers import (
    HELPER,
    NOBODY,
    default_workdir,
    foreground_mounted,
    kill_leftovers,
    mount_info,
    pids_with_arg,
    public_dir,
    run_checked,
    run_helper,
    sbin_wrapper,
    tree_shape,
    try_as_nobody,
    wait_gone,
    write,
)
from tests.treesnap import assert_same_tree, snapshot

DAEMON_EXIT_TIMEOUT = 10.0


@dataclass
class Stack:
    """Two lowers and an upper with a little of everything the merge has to get right."""

    base: Path
    l1: Path  # top-most lower
    l2: Path
    upper: Path
    mnt: Path

    @property
    def lowers(self) -> str:
        return f"{self.l1}:{self.l2}"

    def std(self) -> list[str]:
        return [self.lowers, str(self.upper), str(self.mnt)]


def make_stack(base: Path) -> Stack:
    s = Stack(base, base / "l1", base / "l2", base / "upper", base / "mnt")
    for d in (s.l1, s.l2, s.upper, s.mnt):
        d.mkdir(parents=True)
    write(s.l2 / "a", "a from l2\n")
    write(s.l1 / "a", "a from l1\n")
    write(s.l2 / "b", "b from l2\n")
    write(s.l2 / "gone", "hidden by a whiteout\n")
    write(s.l2 / "dir" / "low", "low\n")
    write(s.l1 / "dir" / "mid", "mid\n")
    write(s.l2 / "opaque" / "hidden", "hidden by an opaque dir\n")
    write(s.upper / "dir" / "up", "up\n")
    write(s.upper / "opaque" / "seen", "seen\n")
    xattr.setxattr(str(s.upper / "opaque"), "trusted.overlay.opaque", b"y")
    os.mknod(s.upper / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (s.l1 / "link").symlink_to("a")
    return s


# --------------------------------------------------------------------------- modes and ending


@pytest.mark.parametrize("unmount_cmd", [["umount"], ["fusermount3", "-u"]],
                         ids=["umount", "fusermount3"])
def test_background_mode_and_unmount_ends_daemon(unmount_cmd: list[str], tmp_path: Path) -> None:
    """Without -f: exit 0 means mounted; unmounting by name ends the daemon within 10 s."""
    s = make_stack(tmp_path / "stack")
    pids: set[int] = set()
    try:
        result = run_helper(s.std())
        assert result.returncode == 0, f"mount failed: {result.stderr}"
        assert mounts.mount_type(s.mnt) == "fuse.pyunion"
        assert (s.mnt / "a").read_text() == "a from l1\n"
        assert sorted(os.listdir(s.mnt)) == ["a", "b", "dir", "link", "opaque"]
        pids = pids_with_arg(s.mnt)
        assert pids, "no process has the mountpoint on its command line (daemon not found)"
        run_checked([*unmount_cmd, s.mnt])
        assert not mounts.is_mounted(s.mnt)
        left = wait_gone(pids, DAEMON_EXIT_TIMEOUT)
        assert not left, f"daemon {left} still running {DAEMON_EXIT_TIMEOUT} s after unmount"
    finally:
        if mounts.is_mounted(s.mnt):
            mounts.unmount(s.mnt)
        kill_leftovers(wait_gone(pids | pids_with_arg(s.mnt), DAEMON_EXIT_TIMEOUT))


def test_background_daemon_does_not_hold_callers_output(tmp_path: Path) -> None:
    """The daemon must let go of the caller's stdout/stderr, or ``$(mount ...)`` /
    ``subprocess.run(capture_output=True)`` would hang until the filesystem is unmounted."""
    s = make_stack(tmp_path / "stack")
    proc = subprocess.Popen([*HELPER, *s.std()], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        status = proc.wait(timeout=60)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("mount.pyunion exited but its daemon keeps the caller's pipes open")
        assert status == 0, err.decode(errors="replace")
        assert mounts.is_mounted(s.mnt)
    finally:
        pids = pids_with_arg(s.mnt)
        if mounts.is_mounted(s.mnt):
            mounts.unmount(s.mnt)
        kill_leftovers(wait_gone(pids, DAEMON_EXIT_TIMEOUT))
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_foreground_signal_unmounts_cleanly(sig: signal.Signals, pyunion_daemon,
                                            tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    mnt, proc = pyunion_daemon([s.l1, s.l2], s.upper)
    assert (mnt / "b").read_text() == "b from l2\n"
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 0, f"exit status {proc.returncode} after {sig.name}"
    err = proc.stderr.read().decode(errors="replace")
    assert "Traceback" not in err, err
    assert not mounts.is_mounted(mnt), f"still mounted after {sig.name}"
    assert os.listdir(mnt) == [], "mountpoint not usable/empty after the daemon ended"


# --------------------------------------------------------------------------- argument forms


def test_argument_forms_give_the_same_tree(tmp_path: Path) -> None:
    """All three contract forms show the kernel overlayfs view of the same layers."""
    ref = make_stack(tmp_path / "reference")  # the same content; the kernel marks its upper
    kwork = ref.base / "kwork"
    kwork.mkdir()
    with mounts.overlay_mounted([ref.l1, ref.l2], ref.upper, kwork, ref.mnt) as mnt:
        reference = snapshot(mnt)
    s = make_stack(tmp_path / "stack")
    work = s.base / "work"
    work.mkdir()
    forms = {
        "LOWERS UPPER MNT": s.std(),
        "LOWERS MNT -o upperdir=": [s.lowers, s.mnt, "-o", f"upperdir={s.upper}"],
        "SOURCE MNT -o lowerdir=,upperdir=,workdir=": [
            "mysource", s.mnt, "-o", f"lowerdir={s.lowers},upperdir={s.upper},workdir={work}"],
    }
    for name, args in forms.items():
        with foreground_mounted(args, s.mnt) as mnt:
            assert mounts.mount_type(mnt) == "fuse.pyunion", name
            assert_same_tree(reference, snapshot(mnt), f"kernel overlay vs pyunion {name!r}")


def test_no_upper_form_gives_the_kernel_tree(tmp_path: Path) -> None:
    """``LOWERS MNT`` and ``SOURCE MNT -o lowerdir=``: the read-only merge of the lowers."""
    s = make_stack(tmp_path / "stack")
    with mounts.overlay_mounted([s.l1, s.l2], None, None, s.mnt) as mnt:
        reference = snapshot(mnt)
    forms = {
        "LOWERS MNT": [s.lowers, s.mnt],
        "SOURCE MNT -o lowerdir=": ["mysource", s.mnt, "-o", f"lowerdir={s.lowers}"],
    }
    for name, args in forms.items():
        with foreground_mounted(args, s.mnt) as mnt:
            assert_same_tree(reference, snapshot(mnt), f"kernel overlay vs pyunion {name!r}")
    assert not default_workdir(s.upper).exists(), "a workdir was made for a mount without upper"


def test_label_form_shows_source_in_mount_table(tmp_path: Path) -> None:
    """``SOURCE MNT -o lowerdir=...``: the positional SOURCE is a label (like overlay's
    ``overlay``), not a layer; mountinfo shows it as the mount source."""
    s = make_stack(tmp_path / "stack")
    args = ["my-label", s.mnt, "-o", f"lowerdir={s.lowers},upperdir={s.upper}"]
    with foreground_mounted(args, s.mnt) as mnt:
        info = mount_info(mnt)
        assert info is not None and info.source == "my-label", info
        assert (mnt / "a").read_text() == "a from l1\n"


@pytest.mark.parametrize("extra", [
    ["-n", "-s", "-v", "-o", "rw,defaults,nofail,_netdev,x-systemd.automount,dev,suid"],
    ["-o", "auto,noauto,user,users,x-foo=bar"],
], ids=["mount8-flags-and-options", "more-ignored-options"])
def test_mount8_style_flags_and_ignored_options(extra: list[str], tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    with foreground_mounted([*s.std(), *extra], s.mnt) as mnt:
        assert mounts.mount_type(mnt) == "fuse.pyunion"
        assert (mnt / "dir" / "low").read_text() == "low\n"


# --------------------------------------------------------------------------- mount(8)


def _mount8_round_trip(mount_cmd: list[str], s: Stack) -> None:
    """mount(8) MNT, use it, umount(8) it; the daemon (found via /proc) must end."""
    pids: set[int] = set()
    try:
        run_checked(mount_cmd)
        assert mounts.mount_type(s.mnt) == "fuse.pyunion"
        assert (s.mnt / "a").read_text() == "a from l1\n"
        (s.mnt / "new").write_text("via mount(8)\n")
        assert (s.upper / "new").read_text() == "via mount(8)\n"
        pids = pids_with_arg(s.mnt)
        assert pids, "no daemon found with the mountpoint on its command line"
        run_checked(["umount", s.mnt])
        assert not wait_gone(pids, DAEMON_EXIT_TIMEOUT), "daemon still running after umount"
    finally:
        if mounts.is_mounted(s.mnt):
            mounts.unmount(s.mnt)
        kill_leftovers(wait_gone(pids | pids_with_arg(s.mnt), DAEMON_EXIT_TIMEOUT))


def test_mount8_fuse_type_with_overlay_options(tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    work = s.base / "work"
    work.mkdir()
    opts = f"lowerdir={s.lowers},upperdir={s.upper},workdir={work}"
    with sbin_wrapper("mount.fuse.pyunion"):
        _mount8_round_trip(["mount", "-t", "fuse.pyunion", "stack-src", s.mnt, "-o", opts], s)


def test_mount8_pyunion_type(tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    with sbin_wrapper("mount.pyunion"):
        cmd = ["mount", "-t", "pyunion", s.lowers, s.mnt, "-o", f"upperdir={s.upper}"]
        _mount8_round_trip(cmd, s)


# --------------------------------------------------------------------------- read-only


def _write_attempts(mnt: Path) -> dict[str, int | None]:
    """errno of each kind of write (None = it worked)."""
    ops: dict[str, Callable[[], object]] = {
        "create": lambda: os.close(os.open(mnt / "newfile", os.O_CREAT | os.O_WRONLY, 0o644)),
        "open-append": lambda: os.close(os.open(mnt / "a", os.O_WRONLY | os.O_APPEND)),
        "truncate": lambda: os.truncate(mnt / "b", 0),
        "mkdir": lambda: os.mkdir(mnt / "newdir"),
        "symlink": lambda: os.symlink("a", mnt / "newlink"),
        "unlink": lambda: os.unlink(mnt / "b"),
        "rmdir": lambda: os.rmdir(mnt / "opaque"),
        "rename": lambda: os.rename(mnt / "a", mnt / "a2"),
        "chmod": lambda: os.chmod(mnt / "a", 0o600),
        "utime": lambda: os.utime(mnt / "a", (0, 0)),
        "setxattr": lambda: xattr.setxattr(str(mnt / "a"), "user.x", b"1"),
    }
    out: dict[str, int | None] = {}
    for name, op in ops.items():
        try:
            op()
            out[name] = None
        except OSError as e:
            out[name] = e.errno
    return out


@pytest.mark.parametrize("form", ["ro-option", "no-upper"])
def test_readonly_mounts_refuse_writes(form: str, pyunion, tmp_path: Path) -> None:
    """Every write gives EROFS (as on the kernel's read-only overlay); mountinfo says ``ro``."""
    s = make_stack(tmp_path / "stack")
    kwork, kmnt = s.base / "kwork", s.base / "kmnt"
    kwork.mkdir()
    kmnt.mkdir()
    upper = s.upper if form == "ro-option" else None
    with mounts.overlay_mounted([s.l1, s.l2], upper, upper and kwork, kmnt,
                                options=("ro",)) as kmounted:
        want = _write_attempts(kmounted)
    assert want == {k: errno.EROFS for k in want}, f"reference surprise: {want}"
    # after the kernel's mount: even read-only, it stores trusted.overlay.uuid on the upper
    before = {d: tree_shape(d) for d in (s.l1, s.l2, s.upper)}
    if form == "ro-option":
        mnt = pyunion([s.l1, s.l2], s.upper, options=["ro"])
    else:
        mnt = pyunion([s.l1, s.l2], None)
    assert "ro" in mount_info(mnt).mount_options
    assert (mnt / "a").read_text() == "a from l1\n"
    got = _write_attempts(mnt)
    assert got == want, f"pyunion {got} != kernel {want}"
    for d, shape in before.items():
        assert tree_shape(d) == shape, f"{d} changed under a read-only mount"


# --------------------------------------------------------------------------- users and flags


def test_other_user_uses_mount_with_permissions_checked(tmp_path: Path) -> None:
    """As root: allow_other + default_permissions, so uid 65534 can use the mount and the
    kernel applies file modes (0644 readable, root's 0600 not, own 0600 yes)."""
    s = make_stack(tmp_path / "stack")
    write(s.l1 / "public", "public\n", 0o644)
    write(s.l1 / "secret", "secret\n", 0o600)
    own = write(s.l2 / "own", "own\n", 0o600)
    os.chown(own, NOBODY, NOBODY)
    with public_dir() as pub:
        mnt_dir = pub / "mnt"
        mnt_dir.mkdir()
        with foreground_mounted(s.std()[:2] + [mnt_dir], mnt_dir) as mnt:
            info = mount_info(mnt)
            assert "allow_other" in info.super_options, info
            assert "default_permissions" in info.super_options, info
            assert try_as_nobody("read", mnt / "public") == "ok public"
            assert try_as_nobody("read", mnt / "secret") == "errno EACCES"
            assert try_as_nobody("read", mnt / "own") == "ok own"
            assert try_as_nobody("create", mnt / "by-nobody") == "errno EACCES"
            assert try_as_nobody("listdir", mnt).startswith("ok ")
    assert not (s.upper / "by-nobody").exists()


FLAG_NAMES = ("ro", "nosuid", "nodev", "noexec")


def test_default_flags_match_overlayfs(pyunion, tmp_path: Path) -> None:
    """As root, no options: suid, dev and exec allowed, like a kernel overlay mount."""
    s = make_stack(tmp_path / "stack")
    kwork, kmnt = s.base / "kwork", s.base / "kmnt"
    kwork.mkdir()
    kmnt.mkdir()
    with mounts.overlay_mounted([s.l1, s.l2], s.upper, kwork, kmnt):
        kernel = {f for f in mount_info(kmnt).mount_options if f in FLAG_NAMES}
    mnt = pyunion([s.l1, s.l2], s.upper)
    ours = {f for f in mount_info(mnt).mount_options if f in FLAG_NAMES}
    assert ours == kernel == set(), f"pyunion {ours}, kernel overlay {kernel}"


def test_given_flags_show_in_mountinfo(pyunion, tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    mnt = pyunion([s.l1, s.l2], s.upper, options=["nosuid", "nodev", "noexec", "noatime"])
    flags = mount_info(mnt).mount_options
    for flag in ("nosuid", "nodev", "noexec", "noatime"):
        assert flag in flags, f"{flag} missing from mount options {flags}"
    assert (mnt / "a").read_text() == "a from l1\n"


# --------------------------------------------------------------------------- workdir and writes


def test_default_workdir_next_to_upper_and_invisible(pyunion, tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    work = default_workdir(s.upper)
    assert not work.exists()
    mnt = pyunion([s.l1, s.l2], s.upper)
    assert work.is_dir(), f"default workdir {work} not created"
    assert work.stat().st_dev == s.upper.stat().st_dev
    (mnt / "a").write_text("changed\n")  # a copy-up, which goes through the workdir
    (mnt / "fresh").write_text("fresh\n")
    assert sorted(os.listdir(mnt)) == ["a", "b", "dir", "fresh", "link", "opaque"]
    assert sorted(os.listdir(mnt / "dir")) == ["low", "mid", "up"]
    assert sorted(os.listdir(s.upper)) == ["a", "dir", "fresh", "gone", "opaque"]


def test_relative_paths_and_trailing_slashes(tmp_path: Path) -> None:
    """Paths relative to the caller's cwd, with trailing slashes: the daemon must resolve them
    before it changes directory, and the default workdir is still ``<parent>/.upper.work``."""
    s = make_stack(tmp_path / "stack")
    mnt_arg = f"mnt-{uuid.uuid4().hex}/"  # unique: the daemon is found by this argument
    s.mnt = s.base / mnt_arg
    s.mnt.mkdir()
    pids: set[int] = set()
    try:
        result = run_helper(["l1/:l2/", "upper/", mnt_arg], cwd=s.base)
        assert result.returncode == 0, f"mount failed: {result.stderr}"
        pids = pids_with_arg(mnt_arg)
        assert mounts.mount_type(s.mnt) == "fuse.pyunion"
        assert (s.mnt / "dir" / "low").read_text() == "low\n"
        (s.mnt / "fresh").write_text("fresh\n")
        assert (s.upper / "fresh").read_text() == "fresh\n"
        assert default_workdir(s.upper).is_dir()
        assert sorted(os.listdir(s.upper)) == ["dir", "fresh", "gone", "opaque"]
    finally:
        if mounts.is_mounted(s.mnt):
            mounts.unmount(s.mnt)
        kill_leftovers(wait_gone(pids, DAEMON_EXIT_TIMEOUT))


def test_explicit_workdir_is_used(pyunion, tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    work = s.base / "mywork"
    work.mkdir()
    mnt = pyunion([s.l1, s.l2], s.upper, options=[f"workdir={work}"])
    (mnt / "a").write_text("changed\n")
    assert not default_workdir(s.upper).exists(), "default workdir made although one was given"
    assert os.listdir(work), f"nothing of pyunion's in the given workdir {work}"
    assert "mywork" not in os.listdir(mnt)


def test_writes_land_in_upper_and_lowers_stay(pyunion, tmp_path: Path) -> None:
    s = make_stack(tmp_path / "stack")
    lowers_before = {d: (snapshot(d, times=True), tree_shape(d)) for d in (s.l1, s.l2)}
    mnt = pyunion([s.l1, s.l2], s.upper)
    (mnt / "new.txt").write_text("new\n")
    with open(mnt / "a", "a") as f:
        f.write("appended\n")
    with open(mnt / "dir" / "low", "w") as f:
        f.write("rewritten\n")
    (mnt / "b").unlink()
    (mnt / "newdir").mkdir()
    assert (s.upper / "new.txt").read_text() == "new\n"
    assert (s.upper / "a").read_text() == "a from l1\nappended\n"
    assert (s.upper / "dir" / "low").read_text() == "rewritten\n"
    st = os.lstat(s.upper / "b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), "no whiteout for b"
    assert (s.upper / "newdir").is_dir()
    for d, (snap, shape) in lowers_before.items():
        assert_same_tree(snap, snapshot(d, times=True), f"lower {d.name} before/after")
        assert tree_shape(d) == shape, f"lower {d.name} changed (xattrs/modes)"
