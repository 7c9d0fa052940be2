"""System calls the os module lacks: renameat2 (RENAME_NOREPLACE/EXCHANGE/WHITEOUT), FICLONE,
umount2."""

from __future__ import annotations

import ctypes
import fcntl
import os

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2
_AT_FDCWD = -100
_FICLONE = 0x40049409

# The C library already loaded into this process (find_library would run ldconfig: a
# child process at every start of the daemon).
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def renameat2(src: str, dst: str, flags: int) -> None:
    """rename(2) with flags; raises OSError like os.rename."""
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int


def umount(point: str, flags: int = 0) -> None:
    """umount2(2): what ``umount`` runs, without its process (root only); raises OSError."""
    if _umount2(os.fsencode(point), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), point)


def clone_file(src_fd: int, dst_fd: int) -> bool:
    """Reflink ``src_fd``'s data into ``dst_fd``; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
        return True
    except OSError:
        return False
