"""FUSE passthrough: the kernel reads, writes and maps an open file's real file itself.

With passthrough (Linux 6.9, libfuse 3.17, the pyfuse3 extension's fourth patch) ``open``
registers the real file as a *backing file* and answers with its id; reads, writes and mmap
of the open file then go to that file's own page cache, shared by every mount and every
process that reads the same lower file, and never reach the daemon. A base layer read by N
containers is then held once in memory, as with kernel overlayfs.

The kernel's rules shape what pyunion does:

- every open of one FUSE inode must name the same backing file while any is open, and opens
  in passthrough and in cached mode cannot be mixed on one inode. So a node has at most one
  ``Backing`` at a time, shared by all its opens; a node opened in cached mode (a file whose
  registration was refused) stays in cached mode until its last open is released.
- a backing file cannot be switched under open files. A write to a lower file copies it up
  (at the write open, as kernel overlayfs), but the readers of the lower file keep their
  backing: a write open (or truncation) of a file that is open read-only on its lower file
  waits a moment for those readers to be released (a close reaches the daemon as a release
  request a little after the program closed the file), then is refused with ETXTBSY, the
  kernel's answer for a file busy in a conflicting mode.
  ``passthrough=off`` keeps the kernel ≥4.19 behaviour instead (readers see the copy).
- the kernel wants CAP_SYS_ADMIN for registration (an ordinary user never gets it), and a
  backing file that is not on a stacked filesystem (overlayfs, another passthrough mount):
  the first EPERM turns passthrough off for the mount; any other refusal only for that file,
  which is then served through the daemon.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass

import pyfuse3
import trio

log = logging.getLogger("pyunion")

MIN_KERNEL = (6, 9)
# How long a write open waits for the readers of the lower file to be released.
RELEASE_WAIT = 1.0

# The pyfuse3 extension's passthrough (patches/README.md); PyPI's pyfuse3 lacks it.
PYFUSE3_PASSTHROUGH = bool(getattr(pyfuse3, "PASSTHROUGH_BUILT", False))


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release.split("-")[0].split(".")
    try:
        return int(release[0]), int(release[1])
    except (IndexError, ValueError):
        return (0, 0)


def _in_initial_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def unavailable_because() -> str | None:
    """Why this process cannot mount with passthrough, or None if it may try."""
    if not PYFUSE3_PASSTHROUGH:
        return "pyfuse3 was built without it (libfuse 3.17 and the pyfuse3 extension)"
    if _kernel_version() < MIN_KERNEL:
        return f"the kernel is older than {'.'.join(map(str, MIN_KERNEL))}"
    if os.geteuid() != 0 or not _in_initial_user_namespace():
        return "not root: the kernel lets only CAP_SYS_ADMIN register backing files"
    return None


def describe(mode: str = "auto") -> str:
    """One line for ``pyunion info`` and the mount's debug output."""
    if mode == "off":
        return "off (-o passthrough=off): reads and writes go through the daemon"
    reason = unavailable_because()
    if reason:
        return f"off ({reason}): reads and writes go through the daemon"
    return "on: open files are read, written and mapped by the kernel from their real files"


@dataclass
class Backing:
    """A real file registered with the kernel for one node's passthrough opens."""

    backing_id: int
    of_lower: bool  # registered on the lower (or metacopy data) file, not the upper one
    opens: int = 0
    # Set when opens drops to 0; made only for a writer that waits for it (check_writable):
    # most opens are never waited for, and an Event costs more than the rest of an open.
    released: trio.Event | None = None


class Backings:
    """The backing files of the nodes opened in passthrough mode, kept while the kernel
    knows the node (until it forgets it, as it does under memory pressure): a file opened
    again (a library, a header, a script) then costs no registration, and a read-only open
    of it no file descriptor here."""

    def __init__(self, roots: list[str | None]) -> None:
        self.enabled = False  # set at init, once the kernel has granted passthrough
        self.roots = roots    # the layers' roots, upper first (see layers.LayerStack)
        self.by_node: dict[int, Backing] = {}
        self._views: dict[int, int] = {}  # layer -> fd of its read-only view (-1: none)

    async def check_writable(self, ino: int) -> None:
        """Refuses to change the data of a node whose readers read its lower file (their
        backing cannot follow the copy-up), once they had a moment to be released. A lower
        backing with no open left is dropped."""
        backing = self.by_node.get(ino)
        if backing is None or not backing.of_lower:
            return
        if backing.opens:
            if backing.released is None:
                backing.released = trio.Event()
            with trio.move_on_after(RELEASE_WAIT):
                await backing.released.wait()
        self._drop_lower_for_writer(ino)

    def _drop_lower_for_writer(self, ino: int) -> None:
        """A writer is about to change ``ino``'s data: a lower file's backing may not serve it
        any more. ETXTBSY while readers still have it open; released otherwise."""
        backing = self.by_node.get(ino)
        if backing is not None and backing.of_lower:
            if backing.opens:
                raise pyfuse3.FUSEError(errno.ETXTBSY)
            self.forget(ino)

    def reuse(self, ino: int) -> int:
        """The backing id of ``ino`` for a read-only open, if it has one (open or idle)."""
        backing = self.by_node.get(ino) if self.enabled else None
        if backing is None:
            return 0
        self._opened(ino, backing)
        return backing.backing_id

    def attach(self, ino: int, fd: int, lower: tuple[int, str] | None, writing: bool,
               cached_opens: int) -> int:
        """The backing id for a new open of ``ino``: its data file is ``lower``, a (layer,
        path) pair, if not the upper file, open here as ``fd`` (-1: not open here, so only a
        lower file can be registered). 0 for an open in cached mode (passthrough off or
        refused, cached opens exist, or no file to register). A write open never gets a
        lower file's backing (a reader may have opened the file while the writer waited for
        the copy-up): ETXTBSY then."""
        if not self.enabled:
            return 0
        if writing:
            self._drop_lower_for_writer(ino)
        backing = self.by_node.get(ino)
        if backing is None:
            if cached_opens:
                return 0
            backing_id = self._register_lower(*lower) if lower else None
            if backing_id is None and fd >= 0:
                backing_id = self._register(fd)
            if not backing_id:
                return 0
            backing = self.by_node[ino] = Backing(backing_id, lower is not None)
        self._opened(ino, backing)
        return backing.backing_id

    def _opened(self, ino: int, backing: Backing) -> None:
        backing.opens += 1

    def detach(self, ino: int) -> None:
        """A passthrough open of ``ino`` was released (its backing stays, for the next)."""
        backing = self.by_node[ino]
        backing.opens -= 1
        if backing.opens == 0 and backing.released is not None:
            backing.released.set()
            backing.released = None  # (the next writer to wait makes a new one)

    def forget(self, ino: int) -> None:
        """Releases the backing of ``ino`` if none of its opens is left (the node is gone,
        or its lower file's backing may not serve it any more)."""
        backing = self.by_node.get(ino)
        if backing is None or backing.opens:
            return
        del self.by_node[ino]
        try:
            pyfuse3.passthrough_close(backing.backing_id)
        except OSError as e:
            log.warning("releasing backing file %d: %s", backing.backing_id, e.strerror)
        except RuntimeError:  # the session is closed: the kernel has let go of it already
            pass

    def _register_lower(self, layer: int, path: str) -> int | None:
        """Registers a lower file from the read-only view of its layer: its backing id, 0 if
        refused, None if there is no view or the file is out of its reach (a path too long
        for one system call)."""
        view = self._view(layer)
        if view < 0:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=view)
        except OSError:
            return None
        try:
            return self._register(fd)
        finally:
            os.close(fd)

    def _view(self, layer: int) -> int:
        fd = self._views.get(layer)
        if fd is None:
            root = self.roots[layer]
            try:
                fd = readonly_view(root) if root else -1
            except OSError as e:
                log.debug("no read-only view of %s (%s): its files back opens as they are",
                          root, e.strerror)
                fd = -1
            self._views[layer] = fd
        return fd

    def _register(self, fd: int) -> int:
        try:
            return pyfuse3.passthrough_open(fd)
        except OSError as e:
            if e.errno == errno.EPERM:
                log.warning("passthrough refused by the kernel (EPERM): off for this mount")
                self.enabled = False
            else:
                log.debug("passthrough refused for one file (%s): served by the daemon",
                          e.strerror)
            return 0


# --- read-only, noatime views of the lowers -------------------------------------------------
#
# The kernel opens a backing file anew for every passthrough open, with the open's own flags
# and on the mount the registered fd was on. A lower file registered from a private, detached
# clone of its mount that is read-only and noatime can then never be written through a
# passthrough open, and its atime stays as it was (kernel overlayfs opens lower files with
# O_NOATIME; union-semantics.md 3.11).

_SYS_OPEN_TREE = 428     # the same number on every architecture (asm-generic)
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOATIME = 0x10
_MOUNT_ATTR_ATIME_MASK = 0x70


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def readonly_view(root: str) -> int:
    """An fd of the root of a detached, read-only, noatime clone of the mount tree at
    ``root``, private to this process (freed with the fd). Needs CAP_SYS_ADMIN."""
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, -100, os.fsencode(root),
                              _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE), "open_tree")
    attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOATIME, _MOUNT_ATTR_ATIME_MASK, 0, 0)
    try:
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH | _AT_RECURSIVE,
                             ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")
    except OSError:
        os.close(fd)
        raise
    return fd
