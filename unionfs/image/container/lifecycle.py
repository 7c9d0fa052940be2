"""Creating and removing containers (the steps ``create``, ``run --rm`` and ``rm`` share)."""

from __future__ import annotations

import shutil

from unionfs.image import events
from unionfs.image.container import records, restart, rootfs, runtime
from unionfs.image.container.initlayer import build_init_layer, restore_parent_times
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.errors import Conflict, ImageError
from unionfs.image.store import Store


def create(store: Store, image_id: str, image_name: str, name: str | None,
           spec: RunSpec) -> Container:
    """A new container record, its empty upper, and its init layer."""
    container = records.create_record(store, image_id, image_name, name, spec)
    image = rootfs.image_lowers(store, container)
    init = rootfs.init_dir(store, container)
    try:
        build_init_layer(init, image, spec)
        restore_parent_times(init, image)
    except OSError as e:
        remove(store, container, force=True, quiet=True)
        raise ImageError(f"cannot prepare the container's init layer: {e}") from None
    events.record_container(store, container, "create")
    return container


def remove(store: Store, container: Container, *, force: bool, quiet: bool = False) -> None:
    """Removes a container: refused while it runs unless forced (then it is killed)."""
    container = runtime.refresh(store, container)
    if container.state == "running":
        if not force:
            raise Conflict(f"cannot remove container {container.name}: it is running "
                           "(stop it first, or use rm -f)")
        restart.mark_stopped(store, container)
        runtime.send_signal(store, container, 9)
        runtime.thaw(store, container)
        runtime.wait(store, container)
        container = records.get(store, container.id)
    rootfs.unmount(store, container)
    rootfs.unmount_unrecorded(store, container)  # before the directory's removal below
    runtime.delete_runtime_state(store, container)
    runtime.detach_network(store, container)  # a run killed with its monitor leaves it
    records.delete_record(store, container.id)  # a leftover directory is garbage from now on
    shutil.rmtree(records.container_dir(store, container.id), ignore_errors=True)
    if not quiet:
        events.record_container(store, container, "destroy")
