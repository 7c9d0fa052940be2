"""pyunion: an overlayfs-compatible union filesystem over FUSE, and an image manager.

``unionfs.mount()`` mounts a throw-away copy-on-write tree; see ``unionfs.api``.
"""

from unionfs.api import Mount, MountError, mount, mount_async

__all__ = ["Mount", "MountError", "mount", "mount_async"]
