"""pyunion: an overlayfs-compatible union filesystem over FUSE, and an image manager.

``unionfs.mount()`` mounts a throw-away copy-on-write tree; see ``unionfs.api``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~8 ms) at every start

__all__ = ["Mount", "MountError", "mount", "mount_async"]

if TYPE_CHECKING:
    from unionfs.api import Mount, MountError, mount, mount_async


def __getattr__(name: str):
    """The library API, imported on first use (the command-line tools start faster)."""
    if name in __all__:
        import unionfs.api

        return getattr(unionfs.api, name)
    raise AttributeError(f"module 'unionfs' has no attribute {name!r}")
