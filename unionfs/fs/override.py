"""Owners, modes and device numbers kept in an xattr, for layers an ordinary user wrote.

An ordinary user cannot give files to other users, nor make device nodes. Layers unpacked by
one (and uppers written by an ordinary user's mount with ``-o override_stat``) keep each
object's real owner, permission bits and, for a device node stored as an empty regular file,
its type, in the xattr containers/storage and fuse-overlayfs use:
``user.containers.override_stat = "UID:GID:0MODE[:TYPE]"``, TYPE one of ``file``, ``dir``,
``symlink``, ``pipe``, ``socket``, ``char-MAJOR-MINOR``, ``block-MAJOR-MINOR``. fuse-overlayfs
before 1.14 wrote ``user.fuseoverlayfs.override_stat = "UID:GID:0MODE"`` with the type bits
inside MODE; that is read too.

The real file keeps a mode its owner (the user) can always read and write, so the daemon can
copy it up and the store can delete it; the permissions users see are the recorded ones.
Symlinks cannot carry ``user.`` xattrs: theirs are the real owner's.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

XATTR = "user.containers.override_stat"
LEGACY_XATTR = "user.fuseoverlayfs.override_stat"
NAMES = (XATTR, LEGACY_XATTR)

_TYPES = {
    "file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
    "pipe": stat.S_IFIFO, "socket": stat.S_IFSOCK,
}
_TYPE_NAMES = {kind: name for name, kind in _TYPES.items()}
_DEVICE_NAMES = {stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


@dataclass(frozen=True, slots=True)
class Override:
    uid: int
    gid: int
    mode: int            # permission and set-id bits (07777)
    kind: int | None     # S_IFMT type, when recorded
    rdev: int = 0        # device number of a device node


def parse(value: bytes) -> Override | None:
    """An xattr value, in either form; None if it is not one."""
    parts = value.decode("ascii", "replace").strip("\0").split(":")
    if len(parts) not in (3, 4):
        return None
    try:
        uid, gid, mode = int(parts[0]), int(parts[1]), int(parts[2], 8)
    except ValueError:
        return None
    kind = stat.S_IFMT(mode) or None  # the legacy form's type bits
    rdev = 0
    if len(parts) == 4:
        kind, rdev = _parse_type(parts[3])
    if uid < 0 or gid < 0:
        return None
    return Override(uid, gid, stat.S_IMODE(mode), kind, rdev)


def _parse_type(text: str) -> tuple[int | None, int]:
    if text in _TYPES:
        return _TYPES[text], 0
    name, _, numbers = text.partition("-")
    major, _, minor = numbers.partition("-")
    for kind, device_name in _DEVICE_NAMES.items():
        if name == device_name and major.isdigit() and minor.isdigit():
            return kind, os.makedev(int(major), int(minor))
    return None, 0


def format_value(uid: int, gid: int, mode: int, rdev: int = 0) -> bytes:
    """The xattr value for an object of type and permissions ``mode`` (an st_mode)."""
    kind = stat.S_IFMT(mode)
    if kind in _DEVICE_NAMES:
        type_name = f"{_DEVICE_NAMES[kind]}-{os.major(rdev)}-{os.minor(rdev)}"
    else:
        type_name = _TYPE_NAMES.get(kind, "file")
    return f"{uid}:{gid}:0{stat.S_IMODE(mode):o}:{type_name}".encode()


def read(target: str | int) -> Override | None:
    """The override of a path (not following a symlink) or an open fd; None if it has none."""
    for name in NAMES:
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                continue
            raise
        return parse(value)
    return None


def write(target: str | int, uid: int, gid: int, mode: int, rdev: int = 0) -> None:
    """Records owner, type and permissions; a symlink (no ``user.`` xattrs) is skipped."""
    if stat.S_ISLNK(mode):
        return
    value = format_value(uid, gid, mode, rdev)
    if isinstance(target, int):
        os.setxattr(target, XATTR, value)
    else:
        os.setxattr(target, XATTR, value, follow_symlinks=False)


def make_device_stand_in(path: str, dir_fd: int | None = None) -> None:
    """The empty regular file that stands for a device node (its xattr says which)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(path, flags, 0o600, dir_fd=dir_fd))


def stored_mode(mode: int) -> int:
    """The real permission bits of an object whose true ones are recorded: its owner may
    always read and write it (and search a directory), nothing is set-id."""
    perm = stat.S_IMODE(mode) & 0o777 | 0o600
    if stat.S_ISDIR(mode) or perm & 0o111:
        perm |= 0o100
    return perm


def effective(st: os.stat_result, found: Override | None) -> tuple[int, int, int, int]:
    """(st_mode, uid, gid, rdev) as recorded, over the real ones. Only a device node is
    stored as another type (an empty regular file)."""
    if found is None:
        return st.st_mode, st.st_uid, st.st_gid, st.st_rdev
    kind, rdev = stat.S_IFMT(st.st_mode), st.st_rdev
    if kind == stat.S_IFREG and found.kind in _DEVICE_NAMES:
        kind, rdev = found.kind, found.rdev
    return kind | found.mode, found.uid, found.gid, rdev


class IdMapping:
    """``uidmapping=``/``gidmapping=`` (fuse-overlayfs's form ``STORED:SHOWN:COUNT[:...]``):
    recorded ids shown as other ids, as a user namespace's mapping would show them (the
    recorded root shown as the user who runs a rootless container). Ids outside every range
    are shown as they are."""

    def __init__(self, ranges: tuple[tuple[int, int, int], ...] = ()) -> None:
        self.ranges = ranges

    @classmethod
    def parse(cls, text: str) -> IdMapping:
        numbers = text.split(":")
        if len(numbers) % 3 or not all(n.isdigit() for n in numbers):
            raise ValueError(f"'{text}': expected STORED:SHOWN:COUNT[:STORED:SHOWN:COUNT...]")
        values = [int(n) for n in numbers]
        return cls(tuple((values[i], values[i + 1], values[i + 2])
                         for i in range(0, len(values), 3)))

    def shown(self, stored: int) -> int:
        for first_stored, first_shown, count in self.ranges:
            if first_stored <= stored < first_stored + count:
                return first_shown + stored - first_stored
        return stored

    def stored(self, shown: int) -> int:
        for first_stored, first_shown, count in self.ranges:
            if first_shown <= shown < first_shown + count:
                return first_stored + shown - first_shown
        return shown
