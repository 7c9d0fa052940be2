"""Creating containers (``create``, ``run``, ``build``'s steps); removing one is
``Session.remove``'s (session.py)."""

from __future__ import annotations

from unionfs.image import events
from unionfs.image.container import records, rootfs
from unionfs.image.container.initlayer import build_init_layer, restore_parent_times
from unionfs.image.container.records import Container, RunSpec
from unionfs.image.container.session import Session
from unionfs.image.errors import ImageError
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
        Session(store, container).remove(force=True, quiet=True)
        raise ImageError(f"cannot prepare the container's init layer: {e}") from None
    events.record_container(store, container, "create")
    return container
