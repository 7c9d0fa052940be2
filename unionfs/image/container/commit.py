"""``commit``: a container's upper becomes a new top layer of a new image.

The upper is written as an OCI layer (kernel whiteouts become ``.wh.NAME``, opaque directories
``.wh..wh..opq``, a redirected directory its whole merged contents, overlay-private xattrs
dropped), gzip-compressed into a blob; the same entries, as they are written, are applied by the
unpacker every loaded layer goes through, so the layer is in the store without reading the blob
back (one pass over the upper's data). The new config is the old one with the layer, a history
entry and the ``--change`` instructions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
from dataclasses import dataclass
from typing import BinaryIO

from unionfs.fs.ondisk import read_redirect
from unionfs.image import mediatypes as mt
from unionfs.image.archive import estargz
from unionfs.image.archive.compression import HashingGzipFile
from unionfs.image.archive.formats import ImageSpec, LayerSpec
from unionfs.image.archive.generate import write_layer_entries, write_layer_tar
from unionfs.image.archive.sources import DirectorySource
from unionfs.image.archive.tarwriter import Entry, as_tarinfo
from unionfs.image.archive.unpack import LayerDigests, LayerWriter
from unionfs.image.config_changes import apply_changes
from unionfs.image.container import rootfs, runtime, session
from unionfs.image.container.idmap import rootless_id_map
from unionfs.image.container.records import Container
from unionfs.image.errors import ImageError
from unionfs.image.progress import Progress
from unionfs.image.store import Store, Workspace, syncfs
from unionfs.image.store.adding import ImageAdder


@dataclass
class UpperLayer:
    """A container's upper written out as a layer: the gzip blob and the layer directory
    unpacked from the same entries (both in a workspace; ``ImageAdder.prepared`` installs the
    directory), and their digests."""

    blob: str
    directory: str
    digests: LayerDigests

    @property
    def spec(self) -> LayerSpec:
        """The layer's descriptor for an ``ImageSpec`` whose source is the workspace."""
        return LayerSpec(os.path.basename(self.blob), mt.OCI_LAYER_GZIP,
                         self.digests.blob_digest, self.digests.blob_size, self.digests.diff_id)


def write_upper_layer(store: Store, container: Container, space: Workspace,
                      merged: str | None, layer_format: str = "gzip") -> UpperLayer:
    """Writes the upper as a layer blob (``layer_format`` gzip, or estargz: each file its own
    gzip member, a TOC, as ``push --format estargz`` writes) and, from the same entries as
    they are written, its layer directory (one pass over the upper: the blob is never read
    back). ``merged``: the container's mounted view, needed where the upper holds a
    redirected directory."""
    upper = rootfs.upper_dir(store, container)

    def replace_dir(rel: str, path: str) -> str | None:
        if read_redirect(path) is None:
            return None
        if merged is None:
            raise ImageError("internal: a redirected directory needs the merged view")
        return os.path.join(merged, rel)

    blob = space.new_path("upper.tar.gz")
    directory = space.new_path("upper-layer")
    os.mkdir(directory, 0o755)
    below = store.db.execute("SELECT chain_id FROM image_layers WHERE image_id = ? "
                             "ORDER BY position DESC", (container.image_id,)).fetchall()
    unpacker = LayerWriter(directory, store.whiteout_format, store.limits,
                           [store.layer_path(r["chain_id"]) for r in below])

    def unpack(entry: Entry, data: BinaryIO | None) -> None:
        unpacker.add(as_tarinfo(entry), lambda: data)

    options = {"convert_whiteouts": True, "replace_dir": replace_dir, "mirror": unpack,
               "real_owner": rootless_id_map().container_ids if store.records_owners else None}
    try:
        with open(blob, "wb") as out:
            if layer_format == "estargz":
                digests = _write_estargz(upper, out, unpacker, options)
            else:
                sink = HashingGzipFile(out)
                entries = write_layer_tar(upper, sink, **options)  # type: ignore[arg-type]
                sink.finish()
                digests = LayerDigests(
                    blob_digest="sha256:" + sink.compressed.hexdigest(),
                    blob_size=sink.compressed_size, diff_id="sha256:" + sink.plain.hexdigest(),
                    tar_size=sink.plain_size, compression="gzip", entries=entries)
        unpacker.finish()
    finally:
        unpacker.close()
    return UpperLayer(blob, directory, digests)


def _write_estargz(upper: str, out: BinaryIO, unpacker: LayerWriter,
                   options: dict) -> LayerDigests:
    """The upper as an eStargz blob; the landmark and the TOC, entries of its tar too, go
    to the unpacker as well (the layer directory is what a pull of the blob unpacks)."""
    writer = estargz.EstargzWriter(out)
    landmark = writer.add_landmark(prefetched=False)
    unpacker.add(landmark, lambda: io.BytesIO(estargz.LANDMARK_CONTENT))
    entries = write_layer_entries(upper, writer, **options)
    layer = writer.finish()
    unpacker.add(estargz.toc_member(writer.toc_json), lambda: io.BytesIO(writer.toc_json))
    return LayerDigests(blob_digest=layer.digest, blob_size=layer.size, diff_id=layer.diff_id,
                        tar_size=layer.tar_size, compression="gzip", entries=entries + 2)


def _needs_merged_view(upper: str) -> bool:
    for dirpath, dirnames, _ in os.walk(upper):
        for name in dirnames:
            if read_redirect(os.path.join(dirpath, name)) is not None:
                return True
    return False


def upper_layer(store: Store, container: Container, space: Workspace,
                layer_format: str = "gzip") -> UpperLayer | None:
    """The (unmounted) container's upper as a layer in ``space`` (``write_upper_layer``);
    None when the upper is empty (nothing changed). What ``build`` makes of a step."""
    upper = rootfs.upper_dir(store, container)
    if not os.listdir(upper):
        return None
    merged = rootfs.mount(store, container) if _needs_merged_view(upper) else None
    try:
        return write_upper_layer(store, container, space, merged, layer_format)
    finally:
        if merged is not None:
            rootfs.unmount(store, container)


def commit(store: Store, container: Container, names: list[str], *, message: str,
           author: str, changes: list[str], pause: bool,
           progress: Progress | None = None, layer_format: str = "gzip") -> str:
    """The new image's id. ``layer_format``: the new layer's blob, gzip or estargz."""
    container = session.refresh(store, container)
    running = container.state == "running"
    paused = False
    if running and pause:
        runtime.pause(store, container, True)
        paused = True
    try:
        return _commit(store, container, names, message, author, changes, progress,
                       layer_format)
    finally:
        if paused:
            with contextlib.suppress(ImageError):
                runtime.pause(store, container, False)


def _commit(store: Store, container: Container, names: list[str], message: str, author: str,
            changes: list[str], progress: Progress | None, layer_format: str) -> str:
    upper = rootfs.upper_dir(store, container)
    merged = None
    mounted_here = False
    if rootfs.is_mounted(container):
        merged = container.mountpoint
        assert merged is not None
        syncfs(merged)  # what the kernel still caches reaches the upper
    elif _needs_merged_view(upper):
        merged = rootfs.mount(store, container)
        mounted_here = True
    try:
        with store.adding() as space:
            upper_layer_ = write_upper_layer(store, container, space, merged, layer_format)
            diff_id = upper_layer_.digests.diff_id
            with open(store.blob_path(container.image_id), "rb") as f:
                config = json.load(f)
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            config["created"] = now
            if author:
                config["author"] = author
            inner = dict(config.get("config") or {})
            apply_changes(inner, changes)
            config["config"] = inner
            config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            config["rootfs"]["diff_ids"] = list(config["rootfs"].get("diff_ids", [])) + [diff_id]
            history = list(config.get("history") or [])
            entry = {"created": now, "created_by": "pyunion commit " + container.name}
            if message:
                entry["comment"] = message
            if author:
                entry["author"] = author
            config["history"] = history + [entry]
            config_bytes = json.dumps(config, separators=(",", ":")).encode()
            layers = [LayerSpec("", r["media_type"], r["blob_digest"], None, r["diff_id"])
                      for r in store.db.execute(
                          "SELECT diff_id, blob_digest, media_type FROM image_layers "
                          "WHERE image_id = ? ORDER BY position", (container.image_id,))]
            spec = ImageSpec(config_bytes, config, [*layers, upper_layer_.spec], names)
            adder = ImageAdder(store, space, progress, prepared={
                diff_id: (upper_layer_.directory, upper_layer_.digests)})
            return adder.add_image(spec, DirectorySource(space.path),
                                   f"commit of {container.name}")
    finally:
        if mounted_here:
            rootfs.unmount(store, container)
