"""The overlay on-disk format: whiteouts, opaque directories, redirects, private xattrs.

What we write is exactly what kernel overlayfs writes (char-device 0/0 whiteouts,
``<ns>.overlay.opaque=y``, ``<ns>.overlay.redirect``), so the kernel mounts our uppers.
What we read is every variant found in the wild: kernel form, OCI/AUFS ``.wh.`` files,
fuse-overlayfs's opaque xattr and ``.wh..wh..opq`` marker.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

WHITEOUT_PREFIX = ".wh."
OCI_OPAQUE_MARKER = ".wh..wh..opq"
# The longest absolute redirect the kernel writes (its ``redirect_max`` module parameter's
# default); a move that would need a longer one fails with EXDEV there, and here.
REDIRECT_MAX = 256

# Namespaces whose overlay markers we read; we write only the mount's own namespace.
_OPAQUE_XATTRS = (
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
)
_PRIVATE_XATTR_PREFIXES = (
    "trusted.overlay.",
    "user.overlay.",
    "user.fuseoverlayfs.",
    "security.fuseoverlayfs.",
    "trusted.pyunion.",
    "user.pyunion.",
)


def is_whiteout(st: os.stat_result) -> bool:
    """A kernel-form whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_private_xattr(name: str) -> bool:
    """Overlay bookkeeping that must never be shown, set or copied through the mount."""
    return name.startswith(_PRIVATE_XATTR_PREFIXES)


def is_internal_name(name: str) -> bool:
    """Names that are format markers, never user entries (``.wh.*``)."""
    return name.startswith(WHITEOUT_PREFIX)


@dataclass(frozen=True, slots=True)
class DirMarkers:
    """What a layer's directory says about the layers below it."""

    opaque: bool = False
    redirect: str | None = None


NO_MARKERS = DirMarkers()


def read_dir_markers(path: str, *, follow_redirects: bool) -> DirMarkers:
    """Opaque flag and redirect xattrs of the directory at ``path`` (one listxattr in the
    common case). The OCI ``.wh..wh..opq`` marker is read from lower listings instead."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.ENODATA):
            raise
        names = []
    opaque = False
    redirect = None
    for name in names:
        if name in _OPAQUE_XATTRS:
            value = _getxattr(path, name)
            opaque = opaque or (value is not None and value.startswith(b"y"))
        elif follow_redirects and name in ("trusted.overlay.redirect", "user.overlay.redirect"):
            value = _getxattr(path, name)
            if value:
                redirect = os.fsdecode(value)
    if not opaque and redirect is None:
        return NO_MARKERS
    return DirMarkers(opaque=opaque, redirect=redirect)


def read_redirect(path: str | int) -> str | None:
    """The ``overlay.redirect`` of a directory (a path, or an fd of it)."""
    for name in ("trusted.overlay.redirect", "user.overlay.redirect"):
        value = _getxattr(path, name)
        if value:
            return os.fsdecode(value)
    return None


def is_metacopy(path: str) -> bool:
    """An upper file written by a metadata-only copy-up (its data is still in a lower)."""
    for name in ("trusted.overlay.metacopy", "user.overlay.metacopy"):
        if _getxattr(path, name) is not None:
            return True
    return False


def _getxattr(path: str | int, name: str) -> bytes | None:
    try:
        if isinstance(path, int):
            return os.getxattr(path, name)
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


class Format:
    """The markers this mount writes into its upper, in one xattr namespace.

    ``trusted.`` when the daemon may set trusted xattrs (root), else ``user.`` (the kernel's
    ``userxattr`` form).
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.opaque_xattr = f"{namespace}.overlay.opaque"
        self.redirect_xattr = f"{namespace}.overlay.redirect"
        self.metacopy_xattr = f"{namespace}.overlay.metacopy"

    def set_metacopy(self, path: str) -> None:
        """Marks an upper file that has the metadata but not the data of its lower file."""
        os.setxattr(path, self.metacopy_xattr, b"", follow_symlinks=False)

    def make_whiteout(self, path: str) -> None:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def set_opaque(self, path: str) -> None:
        os.setxattr(path, self.opaque_xattr, b"y", follow_symlinks=False)

    def set_redirect(self, path: str, redirect: str) -> None:
        """Record where the directory at ``path`` continues below: ``/lower/path`` from the
        root of the lowers, or a name in its parent's lower directories."""
        os.setxattr(path, self.redirect_xattr, os.fsencode(redirect), follow_symlinks=False)


def probe_namespace(workdir: str) -> str:
    """``trusted`` if a trusted xattr can be set on the workdir's filesystem, else ``user``."""
    probe = os.path.join(workdir, f"xattr-probe-{os.getpid()}")
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        os.setxattr(probe, "trusted.overlay.pyunion-probe", b"1")
        return "trusted"
    except OSError:
        return "user"
    finally:
        os.unlink(probe)
