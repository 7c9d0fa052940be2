"""Adding an image to the store: blobs verified and kept, layers unpacked once, then one row set.

Layers are kept by chain id (the layer and everything below it), as docker does: a directory
the layer's tar never names, made only as the parent of an entry, takes its attributes from the
layers below, so the unpacked form depends on the stack. A base layer has the same chain id in
every image and is stored once. Layers are unpacked concurrently (a few at a time), each under
its own lock so that two commands that need the same layer unpack it once. Every layer is
unpacked into the command's workspace, verified (blob digest and size against the descriptor,
diff_id against the config), flushed and renamed into place; the image's rows are written
last, in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from unionfs.image import mediatypes as mt
from unionfs.image.archive import estargz
from unionfs.image.archive.formats import ImageSpec, LayerSpec
from unionfs.image.archive.sources import Source
from unionfs.image.archive.unpack import LayerDigests, unpack_layer
from unionfs.image.errors import ImageError
from unionfs.image.progress import Progress
from unionfs.image.store import Store, Workspace, digest_hex, fsync_dir, syncfs

MAX_PARALLEL_LAYERS = 3
COMPRESSION_MEDIA_TYPES = {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD,
                           "none": mt.OCI_LAYER}


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L1) = DiffID(L1); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain = chain_ids_above(chain, diff_id)
    return chain


def chain_ids_above(chain_below: list[str], diff_id: str) -> list[str]:
    """The chain ids of a stack (base first) with one more layer on top."""
    if not chain_below:
        return [diff_id]
    top = "sha256:" + hashlib.sha256(f"{chain_below[-1]} {diff_id}".encode()).hexdigest()
    return [*chain_below, top]


@dataclass
class AddedLayer:
    chain_id: str
    diff_id: str
    blob_digest: str
    media_type: str
    blob_size: int


class _TeeReader:
    """Reads ``source`` and writes every byte read to ``sink`` (the blob's copy in the
    workspace), reporting progress."""

    def __init__(self, source: BinaryIO, sink: BinaryIO | None,
                 advanced: Callable[[int], None]) -> None:
        self._source, self._sink, self._advanced = source, sink, advanced

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            if self._sink is not None:
                self._sink.write(data)
            self._advanced(len(data))
        return data


class ImageAdder:
    def __init__(self, store: Store, workspace: Workspace, progress: Progress | None = None,
                 prepared: dict[str, tuple[str, LayerDigests]] | None = None):
        self.store = store
        self.space = workspace
        self.progress = progress or Progress()
        # diff_id -> a layer directory the caller made (in the workspace) and its digests,
        # installed as the layer instead of unpacking its blob: ``commit`` and ``build`` make
        # them from an upper, as it is written out. The entry goes once installed.
        self.prepared = prepared if prepared is not None else {}

    # ------------------------------------------------------------------ blobs

    def _place_blob(self, temp_path: str, digest: str) -> None:
        """Renames a verified blob into place (keeping an existing copy: same content)."""
        target = self.store.blob_path(digest)
        if os.path.exists(target):
            os.unlink(temp_path)
            return
        os.rename(temp_path, target)

    def _place_json_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not os.path.exists(self.store.blob_path(digest)):
            temp = self.space.new_path("json-" + digest[7:])
            with open(temp, "wb") as f:  # flushed by record()'s syncfs, before any row
                f.write(data)
            self._place_blob(temp, digest)
        return digest

    # ------------------------------------------------------------------ layers

    def add_layer(self, source: Source, layer: LayerSpec, chain: list[str], what: str,
                  wait_for_parents: Callable[[], None] | None = None) -> AddedLayer:
        """Makes ``layer`` (whose chain ids, base first, end with its own) present in the
        store, unpacked once, and keeps its blob."""
        short = layer.diff_id[7:19]
        chain_id = chain[-1]
        if layer.diff_id in self.prepared:
            return self._install_prepared(source, layer, chain, what, wait_for_parents)
        with self.store.layer_lock(chain_id):
            if self.store.layer_recorded(chain_id):
                blob = self._keep_blob_only(source, layer, chain_id, what)
                self.progress.layer_done(layer.diff_id, "Already exists")
                return blob
            total = layer.size if layer.size is not None else _source_size(source, layer.path)
            self.progress.layer_started(layer.diff_id, total)
            target = self.space.new_path("layer-" + layer.diff_id[7:])
            blob_temp = self.space.new_path("blob-" + layer.diff_id[7:])
            os.mkdir(target, 0o755)
            with source.open(layer.path) as raw, open(blob_temp, "wb") as sink:
                reader = _TeeReader(raw, sink, lambda n: self.progress.layer_advanced(
                    layer.diff_id, n))
                parents = [self.store.layer_path(c) for c in reversed(chain[:-1])]
                digests = unpack_layer(reader, target,  # type: ignore[arg-type]
                                       whiteout_format=self.store.whiteout_format,
                                       limits=self.store.limits, what=f"{what} layer {short}",
                                       parents=parents, before_finish=wait_for_parents)
            self.verify(layer, digests, what)
            syncfs(target)
            self._install_layer(chain, layer.diff_id, target, digests)
            self._place_blob(blob_temp, digests.blob_digest)
            self.progress.layer_done(layer.diff_id, "Loaded")
            return AddedLayer(chain_id, layer.diff_id, digests.blob_digest,
                              _layer_media_type(layer, digests.compression), digests.blob_size)

    def _install_prepared(self, source: Source, layer: LayerSpec, chain: list[str], what: str,
                          wait_for_parents: Callable[[], None] | None) -> AddedLayer:
        """Installs the directory the caller made for ``layer`` (see ``prepared``) and keeps
        its blob (``layer.path`` in the workspace); the same chain already in the store wins."""
        directory, digests = self.prepared[layer.diff_id]
        chain_id = chain[-1]
        with self.store.layer_lock(chain_id):
            if self.store.layer_recorded(chain_id):
                return self._keep_blob_only(source, layer, chain_id, what)
            if wait_for_parents is not None:
                wait_for_parents()
            syncfs(directory)
            self._install_layer(chain, layer.diff_id, directory, digests)
            self._place_blob(os.path.join(self.space.path, layer.path), digests.blob_digest)
            del self.prepared[layer.diff_id]
        self.progress.layer_done(layer.diff_id, "Written")
        return AddedLayer(chain_id, layer.diff_id, digests.blob_digest,
                          _layer_media_type(layer, digests.compression), digests.blob_size)

    def _keep_blob_only(self, source: Source, layer: LayerSpec, chain_id: str,
                        what: str) -> AddedLayer:
        """The layer is unpacked already; this image's blob may still be new to the store.
        (A lazy layer's blob is not here until the layer is complete: its row stands for it.)"""
        if layer.digest and (os.path.exists(self.store.blob_path(layer.digest))
                             or self._is_lazy(chain_id)):
            row = self.store.db.execute("SELECT media_type, size FROM blobs WHERE digest = ?",
                                        (layer.digest,)).fetchone()
            if row is not None:
                return AddedLayer(chain_id, layer.diff_id, layer.digest, row["media_type"],
                                  row["size"])
        blob_temp = self.space.new_path("blob-" + layer.diff_id[7:])
        digest, size, compression = _copy_hashing(source, layer.path, blob_temp)
        self._check_blob(layer, digest, size, what)
        if compression == "none":  # an uncompressed blob is its own diff
            self._check_diff_id(layer, digest, what)
        self._place_blob(blob_temp, digest)
        return AddedLayer(chain_id, layer.diff_id, digest, _layer_media_type(layer, compression),
                          size)

    def verify(self, layer: LayerSpec, digests: LayerDigests, what: str) -> None:
        """ImageError unless the measured blob is the descriptor's and its diff_id the
        config's."""
        self._check_blob(layer, digests.blob_digest, digests.blob_size, what)
        self._check_diff_id(layer, digests.diff_id, what)

    @staticmethod
    def _check_blob(layer: LayerSpec, digest: str, size: int, what: str) -> None:
        """The blob as stored against its descriptor (when the archive gave one)."""
        if layer.digest and digest != layer.digest:
            raise ImageError(f"{what}: layer blob digest mismatch (expected {layer.digest}, "
                             f"got {digest})")
        if layer.size is not None and size != layer.size:
            raise ImageError(f"{what}: layer {layer.digest} is {size} bytes, its descriptor "
                             f"says {layer.size}")

    @staticmethod
    def _check_diff_id(layer: LayerSpec, diff_id: str, what: str) -> None:
        if diff_id != layer.diff_id:
            raise ImageError(f"{what}: layer diff_id mismatch (the config says {layer.diff_id}, "
                             f"the layer's content is {diff_id})")

    def _install_layer(self, chain: list[str], diff_id: str, unpacked: str,
                       digests: LayerDigests) -> None:
        final = self.store.layer_path(chain[-1])
        if os.path.lexists(final):  # left by a command killed before it recorded the layer
            self.store._remove_tree(final)
        os.rename(unpacked, final)
        fsync_dir(self.store.layers_dir)
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (chain[-1], diff_id, chain[-2] if len(chain) > 1 else None,
                        digests.tar_size, digests.entries, self.store.whiteout_format,
                        time.time()))

    def _annotations(self, layer: AddedLayer) -> dict[str, str]:
        """The descriptor annotations of an eStargz layer (none for others), for a manifest
        the store writes (``commit``, ``build``, archives without one). The store keeps no
        annotations: the TOC digest is read from the blob itself, its one source (for a lazy
        layer whose blob is not here yet: from the TOC its directory holds, which the pull
        checked against the annotation of its manifest)."""
        if _compression_of(layer.media_type) != "gzip":
            return {}
        toc_json = estargz.read_toc(self.store.blob_path(layer.blob_digest))
        if toc_json is not None:  # (the layer's tar_size is then its real tar's)
            row = self.store.db.execute("SELECT tar_size FROM layers WHERE chain_id = ?",
                                        (layer.chain_id,)).fetchone()
            return {estargz.TOC_DIGEST_ANNOTATION: _sha256(toc_json),
                    estargz.UNCOMPRESSED_SIZE_ANNOTATION: str(row["tar_size"])}
        if self._is_lazy(layer.chain_id):
            with contextlib.suppress(OSError), open(os.path.join(
                    self.store.layer_path(layer.chain_id), estargz.TOC_NAME), "rb") as f:
                return {estargz.TOC_DIGEST_ANNOTATION: _sha256(f.read())}
        return {}

    def _is_lazy(self, chain_id: str) -> bool:
        """Whether the layer was pulled lazily and is not complete: its record is there
        (``unionfs.image.lazy.is_incomplete``, which imports this module)."""
        return os.path.exists(os.path.join(self.store.root, "lazy",
                                           digest_hex(chain_id) + ".json"))

    # ------------------------------------------------------------------ images

    def add_image(self, spec: ImageSpec, source: Source, what: str) -> str:
        """Adds one image (layers concurrently) and records it; returns its id."""
        workers = min(MAX_PARALLEL_LAYERS, max(1, len(spec.layers)))
        chain = chain_ids([layer.diff_id for layer in spec.layers])
        futures: list[Future] = []
        failed = threading.Event()

        def parents_done(position: int) -> Callable[[], None]:
            def wait() -> None:
                for future in futures[:position]:
                    if failed.is_set():
                        raise ImageError("stopped: another layer of the image failed")
                    future.result()
            return wait

        # Submitted base first: a worker only ever waits for layers submitted before its
        # own, which are running or done, so the pool cannot deadlock.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, layer in enumerate(spec.layers):
                futures.append(pool.submit(self.add_layer, source, layer, chain[:i + 1], what,
                                           parents_done(i)))
            try:
                added = [f.result() for f in futures]
            except BaseException:
                failed.set()
                for f in futures:
                    f.cancel()
                raise
        if spec.manifest_bytes is None or not _manifest_matches(spec.manifest_bytes, added):
            spec.manifest_bytes = build_manifest(spec.config_bytes, spec.config, added,
                                                 [self._annotations(a) for a in added])
            spec.manifest_media_type = mt.OCI_MANIFEST
        return self.record(spec, added)

    def record(self, spec: ImageSpec, added: list[AddedLayer]) -> str:
        image_id = spec.image_id
        self._place_json_blob(spec.config_bytes)
        assert spec.manifest_bytes is not None
        manifest_digest = self._place_json_blob(spec.manifest_bytes)
        syncfs(self.store.blobs_dir)
        config = spec.config
        size = sum(self.store.db.execute("SELECT tar_size FROM layers WHERE chain_id = ?",
                                         (a.chain_id,)).fetchone()[0] for a in added)
        now = time.time()
        with self.store.transaction() as db:
            config_type = mt.OCI_CONFIG if spec.manifest_media_type == mt.OCI_MANIFEST \
                else mt.DOCKER_CONFIG
            blob_rows = [(image_id, len(spec.config_bytes), config_type, now),
                         (manifest_digest, len(spec.manifest_bytes), spec.manifest_media_type,
                          now)]
            blob_rows += [(a.blob_digest, a.blob_size, a.media_type, now) for a in added]
            db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", blob_rows)
            exists = db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone()
            if not exists:
                db.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                    image_id, manifest_digest, spec.manifest_media_type,
                    _text(config.get("created")), _text(config.get("os")),
                    _text(config.get("architecture")), _text(config.get("variant")), size, now))
                db.executemany("INSERT INTO image_layers VALUES (?, ?, ?, ?, ?, ?)", [
                    (image_id, i, a.chain_id, a.diff_id, a.blob_digest, a.media_type)
                    for i, a in enumerate(added)])
            db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                           [(name, image_id, now) for name in spec.names])
        return image_id


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _source_size(source: Source, path: str) -> int | None:
    with contextlib.suppress(Exception):
        return source.size(path)
    return None


def _copy_hashing(source: Source, path: str, target: str) -> tuple[str, int, str]:
    from unionfs.image.archive.compression import detect

    h = hashlib.sha256()
    size = 0
    head = b""
    with source.open(path) as f, open(target, "wb") as out:
        while chunk := f.read(1 << 20):
            if not head:
                head = chunk[:8]
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size, detect(head)


def _layer_media_type(layer: LayerSpec, compression: str) -> str:
    """The media type of the blob as stored: the descriptor's, unless the bytes disagree."""
    declared = layer.media_type
    if declared in (mt.DOCKER_LAYER_GZIP,) and compression == "gzip":
        return declared
    if declared in mt.LAYERS and _compression_of(declared) == compression:
        return declared
    return COMPRESSION_MEDIA_TYPES[compression]


def _compression_of(media_type: str) -> str:
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return "none"


def _manifest_matches(manifest_bytes: bytes, added: list[AddedLayer]) -> bool:
    try:
        manifest = json.loads(manifest_bytes)
        return [d["digest"] for d in manifest["layers"]] == [a.blob_digest for a in added]
    except (ValueError, KeyError, TypeError):
        return False


def build_manifest(config_bytes: bytes, config: dict, added: list[AddedLayer],
                   annotations: list[dict[str, str]] | None = None) -> bytes:
    """An OCI manifest for blobs the store holds (for archives that carry none), each layer
    with its ``annotations`` (if any)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG,
                   "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": a.media_type, "digest": a.blob_digest, "size": a.blob_size}
                   for a in added],
    }
    for descriptor, found in zip(manifest["layers"], annotations or [], strict=False):
        if found:
            descriptor["annotations"] = found
    return json.dumps(manifest, separators=(",", ":")).encode()
