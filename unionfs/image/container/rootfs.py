"""A container's rootfs: a pyunion mount of its image's layers under the container's upper.

The mount daemon is left running in its own session when the command that mounted it exits;
its pid is recorded, and a mount whose daemon died (or that someone unmounted) is noticed and
cleaned up by the next command that looks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

from unionfs.api import Mount
from unionfs.fs.options import MountError
from unionfs.image.container import records
from unionfs.image.container.idmap import rootless_id_map
from unionfs.image.container.records import Container
from unionfs.image.daemons import mount_is_live, mounted_points, unmount_daemon
from unionfs.image.errors import ImageError
from unionfs.image.mounts import layer_dirs
from unionfs.image.store import Store, syncfs


def is_mounted(container: Container) -> bool:
    return bool(container.mountpoint and container.mount_pid
                and mount_is_live(container.mountpoint, container.mount_pid))


def upper_dir(store: Store, container: Container) -> str:
    return os.path.join(records.container_dir(store, container.id), "upper")


def image_lowers(store: Store, container: Container) -> list[str]:
    """The image's layer dirs, top-most first (as overlayfs's lowerdir)."""
    return list(reversed(layer_dirs(store, container.image_id)))


def init_dir(store: Store, container: Container) -> str:
    return os.path.join(records.container_dir(store, container.id), "init")


def lowers(store: Store, container: Container) -> list[str]:
    """The rootfs's lowers: the container's init layer over the image's layers."""
    init = init_dir(store, container)
    return ([init] if os.path.isdir(init) else []) + image_lowers(store, container)


def mount_options(store: Store, container: Container) -> list[str]:
    """In an ordinary user's store, recorded owners are shown as the host ids the
    container's user namespace maps them to (idmap.py)."""
    options = [f"fsname=pyunion-container:{container.name}"]
    if store.records_owners:
        options += rootless_id_map().mount_options()
    return options


def mount(store: Store, container: Container, target: str | None = None,
          extra_options: list[str] | None = None) -> str:
    """Mounts the container's rootfs (if not mounted already) and returns where;
    ``extra_options``: more mount options (``open_log=`` for ``push --prefetch-from``)."""
    if is_mounted(container):
        assert container.mountpoint is not None
        if target and os.path.realpath(target) != container.mountpoint:
            raise ImageError(f"container {container.name} is already mounted at "
                             f"{container.mountpoint}")
        return container.mountpoint
    _forget_dead_mount(store, container)
    directory = records.container_dir(store, container.id)
    point = os.path.realpath(target or os.path.join(directory, "merged"))
    if not os.path.isdir(point):
        raise ImageError(f"mount point {target} is not a directory")
    if point in mounted_points():
        raise ImageError(f"{point} is already a mount point")
    union = Mount(lowers(store, container), os.path.join(directory, "upper"), point,
                  workdir=os.path.join(directory, "work"),
                  options=mount_options(store, container) + (extra_options or []))
    try:
        union.start()
    except MountError as e:
        raise ImageError(f"mounting the rootfs of {container.name} failed: {e}") from None
    assert union._proc is not None
    records.update(store, container.id, mountpoint=point, mount_pid=union._proc.pid)
    container.mountpoint, container.mount_pid = point, union._proc.pid
    return point


def unmount(store: Store, container: Container, *, daemon_wait: float = 10.0) -> None:
    """Unmounts the rootfs (flushing it first) and waits (at most ``daemon_wait`` seconds) for
    its daemon to exit."""
    if container.mountpoint is None:
        return
    point = container.mountpoint
    if is_mounted(container):
        with contextlib.suppress(OSError):
            syncfs(point)
        unmount_daemon(point, container.mount_pid, f"the rootfs of {container.name} at {point}",
                       wait=daemon_wait)
    _forget_dead_mount(store, container)


def unmount_unrecorded(store: Store, container: Container) -> None:
    """Unmounts the container's own mount point if a mount is there that its record does not
    know: one a command killed while it mounted left (its daemon exits when unmounted)."""
    point = os.path.realpath(os.path.join(records.container_dir(store, container.id),
                                          "merged"))
    if point != container.mountpoint and point in mounted_points():
        result = subprocess.run(["umount", point], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _forget_dead_mount(store: Store, container: Container) -> None:
    """A mount whose daemon died is taken away (lazily) and forgotten."""
    if container.mountpoint is None:
        return
    if container.mountpoint in mounted_points() and not is_mounted(container):
        subprocess.run(["umount", "-l", container.mountpoint], capture_output=True)
    records.update(store, container.id, mountpoint=None, mount_pid=None)
    container.mountpoint = container.mount_pid = None

