"""Creating and removing containers (the steps ``create``, ``run --rm`` and ``rm`` share)."""

from __future__ import annotations

import shutil

from unionfs.image.container import records, rootfs, runtime
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.errors import Conflict
from unionfs.image.store import Store


def create(store: Store, image_id: str, image_name: str, name: str | None,
           spec: RunSpec) -> Container:
    return records.create_record(store, image_id, image_name, name, spec)


def remove(store: Store, container: Container, *, force: bool) -> None:
    """Removes a container: refused while it runs unless forced (then it is killed)."""
    container = runtime.refresh(store, container)
    if container.state == "running":
        if not force:
            raise Conflict(f"cannot remove container {container.name}: it is running "
                           "(stop it first, or use rm -f)")
        runtime.send_signal(store, container, 9)
        runtime.wait(store, container)
        container = records.get(store, container.id)
    rootfs.unmount(store, container)
    runtime.delete_runtime_state(store, container)
    records.delete_record(store, container.id)  # a leftover directory is garbage from now on
    shutil.rmtree(records.container_dir(store, container.id), ignore_errors=True)
