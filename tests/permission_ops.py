"""Operations an ordinary user tries on a mount, run as that user (tests/test_permissions.py).

``python -m tests.permission_ops ROOT`` runs every op in ``OPS`` below under ROOT and prints
one JSON object: op name -> ``["ok", value]`` or ``["err", "EACCES"]``. The test runs it with
``setpriv`` as an ordinary user on kernel overlayfs and on pyunion and compares the two.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import Any


def _write(path: str, data: bytes = b"x", flags: int = os.O_WRONLY) -> int:
    fd = os.open(path, flags)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _mode_after(action: Callable[[], Any], path: str) -> str:
    action()
    return oct(stat.S_IMODE(os.stat(path).st_mode))


def _create_mode(path: str, umask: int | None = None) -> str:
    """Creates ``path`` asking for mode 0666 (under ``umask`` if given); its mode after."""
    old = os.umask(umask) if umask is not None else None
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    finally:
        if old is not None:
            os.umask(old)
    return oct(stat.S_IMODE(os.stat(path).st_mode))


OPS: dict[str, Callable[[str], Any]] = {
    "read root's 0600 file": lambda r: open(f"{r}/secret", "rb").read(),
    "write root's 0600 file": lambda r: _write(f"{r}/secret"),
    "list root's 0700 dir": lambda r: sorted(os.listdir(f"{r}/private")),
    "stat in root's 0700 dir": lambda r: os.stat(f"{r}/private/inside").st_size,
    "create in root's 0755 dir": lambda r: _write(f"{r}/rootdir/new", flags=os.O_CREAT
                                                  | os.O_WRONLY),
    "unlink in root's 0755 dir": lambda r: os.unlink(f"{r}/rootdir/file"),
    "rename in root's 0755 dir": lambda r: os.rename(f"{r}/rootdir/file", f"{r}/rootdir/f2"),
    "mkdir in root's 0755 dir": lambda r: os.mkdir(f"{r}/rootdir/d"),
    "chmod root's file": lambda r: os.chmod(f"{r}/secret", 0o777),
    "chown own file away": lambda r: os.chown(f"{r}/mine", 0, 0),
    "write clears set-id bits": lambda r: _mode_after(lambda: _write(f"{r}/setid"),
                                                      f"{r}/setid"),
    "truncate clears set-uid": lambda r: _mode_after(lambda: os.truncate(f"{r}/setid2", 1),
                                                     f"{r}/setid2"),
    "chmod g+s outside the group": lambda r: _mode_after(
        lambda: os.chmod(f"{r}/mine_othergroup", 0o2755), f"{r}/mine_othergroup"),
    "write world-writable file": lambda r: _write(f"{r}/sticky/others"),
    "unlink another's file in sticky dir": lambda r: os.unlink(f"{r}/sticky/others"),
    "rename another's file in sticky dir": lambda r: os.rename(f"{r}/sticky/others",
                                                               f"{r}/sticky/moved"),
    "create in sticky dir": lambda r: _write(f"{r}/sticky/mine", flags=os.O_CREAT
                                             | os.O_WRONLY),
    "unlink own file in sticky dir": lambda r: os.unlink(f"{r}/sticky/mine"),
    "create in group dir": lambda r: _write(f"{r}/groupdir/g", flags=os.O_CREAT | os.O_WRONLY),
    "utime another's file": lambda r: os.utime(f"{r}/sticky/others", ns=(10**18, 10**18)),
    "touch another's writable file": lambda r: os.utime(f"{r}/sticky/others"),
    "setxattr on another's 0644 file": lambda r: os.setxattr(f"{r}/rootdir/file", "user.x",
                                                             b"1"),
    "setxattr on a writable file": lambda r: os.setxattr(f"{r}/sticky/others", "user.x", b"1"),
    "trusted xattr": lambda r: os.setxattr(f"{r}/mine", "trusted.x", b"1"),
    "read symlink to root's file": lambda r: open(f"{r}/link_to_secret", "rb").read(),
    "hard link root's file": lambda r: os.link(f"{r}/secret", f"{r}/sticky/stolen"),
    "read a 0600 file an ACL lets the user read": lambda r: open(f"{r}/acl_file", "rb").read(),
    "write a 0600 file an ACL lets the user read": lambda r: _write(f"{r}/acl_file"),
    "create under a default ACL": lambda r: _create_mode(f"{r}/acl_dir/new", 0o077),
    "create with umask 027": lambda r: _create_mode(f"{r}/sticky/masked", 0o027),
    "dotdot at the root": lambda r: sorted(os.listdir(f"{r}/..")) == sorted(
        os.listdir(os.path.dirname(r))),
}


def run(root: str) -> dict[str, list[Any]]:
    results = {}
    for name, op in OPS.items():
        try:
            value = op(root)
            results[name] = ["ok", value.hex() if isinstance(value, bytes) else value]
        except OSError as e:
            results[name] = ["err", errno.errorcode.get(e.errno, str(e.errno))]
    return results


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
