"""``-o override_stat``: owners, modes and device nodes kept in user.containers.override_stat.

The layers here are written as an ordinary user's unpacker writes them (real files the
user's, true values in the xattr; fuse-overlayfs's older ``user.fuseoverlayfs`` form too);
what the mount shows is checked against those recorded values, and what it writes against
the xattr in the upper and against a remount.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import mounts
from tests.cli_helpers import public_dir

XATTR = "user.containers.override_stat"


def shown(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode, st.st_rdev


def recorded(path: Path) -> str:
    return os.getxattr(path, XATTR, follow_symlinks=False).decode()


@pytest.fixture
def base() -> Iterator[Path]:
    """A scratch dir other users can reach (they create files through the mount)."""
    with public_dir("pyunion-override-") as path:
        yield path


@pytest.fixture
def lower(base: Path) -> Path:
    lower = base / "lower"
    lower.mkdir()
    (lower / "shadow").write_text("secret\n")
    os.setxattr(lower / "shadow", XATTR, b"0:42:0640:file")
    (lower / "tty").touch()
    os.setxattr(lower / "tty", XATTR, b"0:5:0620:char-5-0")
    (lower / "legacy").write_text("old form\n")
    os.setxattr(lower / "legacy", "user.fuseoverlayfs.override_stat", b"7:8:0104755")
    (lower / "tmp").mkdir()
    os.setxattr(lower / "tmp", XATTR, b"0:0:01777:dir")
    (lower / "plain").write_text("no xattr\n")
    os.chown(lower / "plain", 1234, 1234)
    os.symlink("shadow", lower / "link")
    return lower


def test_recorded_values_are_shown(base: Path, lower: Path) -> None:
    upper, mnt = base / "upper", base / "mnt"
    upper.mkdir(), mnt.mkdir()
    with mounts.pyunion_mounted([lower], upper, mnt, ["override_stat"]):
        assert shown(mnt / "shadow") == (0, 42, stat.S_IFREG | 0o640, 0)
        assert shown(mnt / "tty") == (0, 5, stat.S_IFCHR | 0o620, os.makedev(5, 0))
        assert shown(mnt / "legacy") == (7, 8, stat.S_IFREG | 0o4755, 0)
        assert shown(mnt / "tmp") == (0, 0, stat.S_IFDIR | 0o1777, 0)
        assert shown(mnt / "plain")[:2] == (1234, 1234)  # nothing recorded: the real owner
        assert stat.S_ISLNK(os.lstat(mnt / "link").st_mode)
        # The bookkeeping xattr is not part of what users see or change.
        assert XATTR not in os.listxattr(mnt / "shadow")
        with pytest.raises(OSError) as caught:
            os.getxattr(mnt / "shadow", XATTR)
        assert caught.value.errno == errno.ENODATA
        with pytest.raises(OSError) as caught:
            os.setxattr(mnt / "shadow", XATTR, b"0:0:0777:file")
        assert caught.value.errno == errno.EPERM


def test_changes_are_recorded_in_the_upper(base: Path, lower: Path) -> None:
    upper, mnt = base / "upper", base / "mnt"
    upper.mkdir(), mnt.mkdir()
    with mounts.pyunion_mounted([lower], upper, mnt, ["override_stat"]):
        os.chown(mnt / "shadow", 99, 98)
        os.chmod(mnt / "legacy", 0o700)
        old_umask = os.umask(0)
        try:
            os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        finally:
            os.umask(old_umask)
        os.mkdir(mnt / "locked", 0o500)
        (mnt / "locked" / "inside").write_text("the daemon can still write here\n")
        subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                        "sh", "-c", 'umask 022 && touch "$1"', "-", str(mnt / "tmp" / "users")],
                       check=True)
        before = {name: shown(mnt / name) for name in ("shadow", "legacy", "null", "locked",
                                                      "tmp/users")}
    assert recorded(upper / "shadow") == "99:98:0640:file"
    assert recorded(upper / "legacy") == "7:8:0700:file"
    assert recorded(upper / "null") == "0:0:0666:char-1-3"
    assert stat.S_ISREG(os.lstat(upper / "null").st_mode)  # a stand-in, not a device
    assert recorded(upper / "locked") == "0:0:0500:dir"
    assert stat.S_IMODE(os.lstat(upper / "locked").st_mode) == 0o700
    assert recorded(upper / "tmp" / "users") == "1000:1000:0644:file"
    assert before["null"] == (0, 0, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with mounts.pyunion_mounted([lower], upper, mnt, ["override_stat"]):
        assert {name: shown(mnt / name) for name in before} == before


def test_chown_clears_set_id_bits(base: Path, lower: Path) -> None:
    upper, mnt = base / "upper", base / "mnt"
    upper.mkdir(), mnt.mkdir()
    with mounts.pyunion_mounted([lower], upper, mnt, ["override_stat"]):
        os.chown(mnt / "legacy", 0, 0)
        assert stat.S_IMODE(os.lstat(mnt / "legacy").st_mode) == 0o755


def test_id_mappings_show_recorded_ids_as_others(base: Path, lower: Path) -> None:
    """uidmapping=0:1000:1: what is recorded as root is shown as uid 1000, as a rootless
    container's user namespace needs it; what 1000 makes is recorded as root."""
    upper, mnt = base / "upper", base / "mnt"
    upper.mkdir(), mnt.mkdir()
    with mounts.pyunion_mounted([lower], upper, mnt,
                                ["uidmapping=0:1000:1", "gidmapping=0:1000:1"]):
        assert shown(mnt / "shadow")[:2] == (1000, 42)
        assert shown(mnt / "legacy")[:2] == (7, 8)
        subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                        "sh", "-c", 'umask 022 && touch "$1"', "-", str(mnt / "tmp" / "made")],
                       check=True)
        assert shown(mnt / "tmp" / "made")[:2] == (1000, 1000)
        os.chown(mnt / "shadow", 1000, 1000)
    assert recorded(upper / "tmp" / "made") == "0:0:0644:file"
    assert recorded(upper / "shadow") == "0:0:0640:file"


@pytest.mark.parametrize("option", ["uidmapping=0:1000", "xattr_permissions=1"])
def test_bad_override_options_fail_before_mounting(base: Path, lower: Path,
                                                   option: str) -> None:
    upper, mnt = base / "upper", base / "mnt"
    upper.mkdir(), mnt.mkdir()
    result = subprocess.run(mounts.pyunion_command([lower], upper, mnt, [option]),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert option.partition("=")[0] in result.stderr
    assert not mounts.is_mounted(mnt)
