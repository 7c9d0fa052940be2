"""An ordinary user is held to the same checks through pyunion as through kernel overlayfs.

The same lower (files of root and of other users: a 0600 file, a 0700 directory, a sticky
directory, a group directory, set-id files, a file and a directory with POSIX ACLs) is
mounted by kernel overlayfs and by pyunion (``allow_other``, as root mounts by default);
tests/permission_ops.py then tries each operation as uid 1000 (in group 4242 only) on both,
and every outcome, errno and resulting mode must be the same, as must the trees afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import mounts, treesnap
from tests.cli_helpers import public_dir
from unionfs.fs.operations import PYFUSE3_DONT_MASK

USER, GROUP, OTHER_GROUP, OTHER_USER = 1000, 4242, 4343, 2000
AS_USER = ["setpriv", f"--reuid={USER}", f"--regid={USER}", f"--groups={GROUP}"]


def _file(path: Path, mode: int, owner: tuple[int, int] = (0, 0), data: bytes = b"data\n"
          ) -> None:
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)


def _dir(path: Path, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    path.mkdir()
    os.chown(path, *owner)
    os.chmod(path, mode)


def build_lower(lower: Path) -> None:
    lower.mkdir()
    _file(lower / "secret", 0o600, data=b"root only\n")
    _dir(lower / "private", 0o700)
    _file(lower / "private" / "inside", 0o644)
    _dir(lower / "rootdir", 0o755)
    _file(lower / "rootdir" / "file", 0o644)
    _file(lower / "mine", 0o644, (USER, USER))
    _file(lower / "mine_othergroup", 0o644, (USER, OTHER_GROUP))
    _file(lower / "setid", 0o6777)
    _file(lower / "setid2", 0o6766)
    _dir(lower / "sticky", 0o1777)
    _file(lower / "sticky" / "others", 0o666, (OTHER_USER, OTHER_USER))
    _dir(lower / "groupdir", 0o770, (0, GROUP))
    os.symlink("secret", lower / "link_to_secret")
    _file(lower / "acl_file", 0o600, data=b"acl\n")
    _set_acl(lower / "acl_file", "system.posix_acl_access", user_perm=4)
    _dir(lower / "acl_dir", 0o777)
    _set_acl(lower / "acl_dir", "system.posix_acl_default", user_perm=6, other_perm=4)


def _set_acl(path: Path, name: str, user_perm: int, other_perm: int = 0) -> None:
    """An ACL in the kernel's xattr form: owner rw, USER ``user_perm``, group and mask as
    ``user_perm``, others ``other_perm`` (what `setfacl -m u:USER:...` writes)."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, user_perm, USER), (0x04, 0, 0xFFFFFFFF),
               (0x10, user_perm, 0xFFFFFFFF), (0x20, other_perm, 0xFFFFFFFF)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, name, value)


def as_user(root: Path) -> dict[str, list]:
    result = subprocess.run([*AS_USER, sys.executable, "-m", "tests.permission_ops", str(root)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@contextlib.contextmanager
def both_mounted(base: Path) -> Iterator[tuple[Path, Path]]:
    lower = base / "lower"
    build_lower(lower)
    dirs = {name: base / name for name in ("k-upper", "k-work", "k-mnt", "p-upper", "p-mnt")}
    for path in dirs.values():
        path.mkdir()
    with mounts.overlay_mounted([lower], dirs["k-upper"], dirs["k-work"], dirs["k-mnt"]) as k, \
            mounts.pyunion_mounted([lower], dirs["p-upper"], dirs["p-mnt"]) as p:
        yield k, p


@pytest.mark.timeout(120)
def test_an_ordinary_user_meets_the_kernels_checks() -> None:
    with public_dir("pyunion-perms-") as base, both_mounted(base) as (kernel, pyunion):
        expected = as_user(kernel)
        got = as_user(pyunion)
        if not PYFUSE3_DONT_MASK:  # the kernel applies the umask for a plain pyfuse3
            del got["create under a default ACL"], expected["create under a default ACL"]
            for root in (kernel, pyunion):
                (root / "acl_dir" / "new").unlink()
        differing = {op: (got[op], expected[op]) for op in expected if got[op] != expected[op]}
        assert not differing, f"(pyunion, kernel) differ: {differing}"
        # The checks are really made: root's file stays unread, the sticky file in place.
        assert expected["read root's 0600 file"] == ["err", "EACCES"]
        assert expected["unlink another's file in sticky dir"] == ["err", "EPERM"]
        assert expected["create in group dir"][0] == "ok"
        treesnap.assert_same_tree(treesnap.snapshot(pyunion), treesnap.snapshot(kernel),
                                  "trees after the user's operations (pyunion, kernel)")
