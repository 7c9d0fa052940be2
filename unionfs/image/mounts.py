"""Read-only mounts of an image's rootfs (``mount-image``): a pyunion mount of its layer dirs.

The daemon is ``mount.pyunion`` run through the library (``unionfs.api.Mount``), left running
in its own session when the command exits; its pid and mountpoint are recorded so that the
store keeps the image's layers while the mount lives and forgets it once it is gone.
"""

from __future__ import annotations

import os
import time

from unionfs.api import Mount
from unionfs.fs.options import MountError
from unionfs.image.daemons import mounted_points, unmount_daemon
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store


def layer_dirs(store: Store, image_id: str) -> list[str]:
    """The image's layer directories, base first."""
    rows = store.db.execute(
        "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position",
        (image_id,)).fetchall()
    return [store.layer_path(r["chain_id"]) for r in rows]


def mount_image(store: Store, image_id: str, short_name: str, mountpoint: str,
                nonempty: bool = False, lazy_timeout: float | None = None,
                lazy_rate: int | None = None) -> str:
    target = os.path.realpath(mountpoint)
    if not os.path.isdir(target):
        raise ImageError(f"mount point {mountpoint} is not a directory")
    if target in mounted_points():
        raise Conflict(f"{mountpoint} is already a mount point")
    lowers = list(reversed(layer_dirs(store, image_id)))
    if not lowers:
        raise ImageError(f"image {short_name} has no layers to mount")
    fsname = "pyunion-image:" + short_name.replace(",", "_")
    options = [f"fsname={fsname}"] + (["override_stat"] if store.records_owners else []) + (
        ["nonempty"] if nonempty else [])
    if lazy_timeout is not None:
        options.append(f"lazy_timeout={lazy_timeout}")
    if lazy_rate is not None:
        options.append(f"lazy_rate={lazy_rate}")
    mount = Mount(lowers, None, target, readonly=True, options=options)
    try:
        mount.start()
    except MountError as e:
        raise ImageError(f"mounting {short_name} at {mountpoint} failed: {e}") from None
    assert mount._proc is not None
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO mounts VALUES (?, ?, ?, ?)",
                   (target, image_id, mount._proc.pid, time.time()))
    return target


def unmount_image(store: Store, mountpoint: str) -> None:
    target = os.path.realpath(mountpoint)
    row = store.db.execute("SELECT pid FROM mounts WHERE mountpoint = ?", (target,)).fetchone()
    if row is None and target not in mounted_points():
        raise ImageError(f"{mountpoint} is not mounted")
    unmount_daemon(target, row["pid"] if row else None, mountpoint)
    with store.transaction() as db:
        db.execute("DELETE FROM mounts WHERE mountpoint = ?", (target,))
