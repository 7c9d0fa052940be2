"""An image of the store rewritten with eStargz layers, for ``push`` and ``save``.

Each layer's blob (as stored, in whatever compression) is decompressed to a tar in a workspace
and written again as eStargz (``estargz.convert``). The eStargz tar holds the TOC and a landmark
besides the layer's own entries, so its diff_id differs: the config gets the new diff_ids (and
so the image a new id), the manifest the new layers with the TOC digest annotation. The store
itself is not changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

from unionfs.image import mediatypes as mt
from unionfs.image.archive import estargz
from unionfs.image.archive.compression import DecompressingReader
from unionfs.image.store import Store


@dataclass
class ConvertedBlob:
    digest: str
    size: int
    path: str
    label: str  # what progress shows: the new diff_id for a layer


@dataclass
class ConvertedImage:
    manifest: bytes
    media_type: str
    config_digest: str
    blobs: list[ConvertedBlob]  # layers, base first, then the config

    def path_of(self, digest: str) -> str:
        return next(b.path for b in self.blobs if b.digest == digest)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_rows(store: Store, image_id: str):
    return store.db.execute(
        "SELECT blob_digest FROM image_layers WHERE image_id = ? ORDER BY position",
        (image_id,)).fetchall()


def convert_layer(store: Store, blob_digest: str, workdir: str,
                  prefetch: list[str] | None = None) -> tuple[estargz.EstargzLayer, str]:
    """The stored layer blob as an eStargz blob in ``workdir``: its description and path."""
    tar_path = os.path.join(workdir, "layer.tar")
    with open(store.blob_path(blob_digest), "rb") as raw, open(tar_path, "wb") as out:
        reader = DecompressingReader(raw)
        shutil.copyfileobj(reader, out, 1 << 20)  # type: ignore[misc]
    temp = os.path.join(workdir, "estargz.partial")
    try:
        with open(temp, "wb") as out:
            layer = estargz.convert(tar_path, out, prefetch or ())
    finally:
        os.unlink(tar_path)
    final = os.path.join(workdir, layer.digest[7:])
    os.rename(temp, final)
    return layer, final


def convert_image(store: Store, image_id: str, workdir: str,
                  prefetch: list[str] | None = None) -> ConvertedImage:
    """``image_id`` with every layer as eStargz, its blobs written under ``workdir``; the
    files of ``prefetch`` (paths in the image) first in each layer that has them, before its
    prefetch landmark."""
    with open(store.blob_path(image_id), "rb") as f:
        config = json.load(f)
    blobs: list[ConvertedBlob] = []
    descriptors = []
    diff_ids = []
    for row in _layer_rows(store, image_id):
        layer, path = convert_layer(store, row["blob_digest"], workdir, prefetch)
        blobs.append(ConvertedBlob(layer.digest, layer.size, path, layer.diff_id))
        descriptors.append({"mediaType": mt.OCI_LAYER_GZIP, "digest": layer.digest,
                            "size": layer.size, "annotations": layer.annotations()})
        diff_ids.append(layer.diff_id)
    config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_digest = _sha(config_bytes)
    config_path = os.path.join(workdir, config_digest[7:])
    with open(config_path, "wb") as f:
        f.write(config_bytes)
    blobs.append(ConvertedBlob(config_digest, len(config_bytes), config_path, config_digest))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": descriptors}, separators=(",", ":")).encode()
    return ConvertedImage(manifest, mt.OCI_MANIFEST, config_digest, blobs)
