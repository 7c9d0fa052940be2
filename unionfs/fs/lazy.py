"""Lazy lower files: the data of a file of an eStargz layer pulled with ``pull --lazy``.

Such a layer's directory holds the whole tree from the start (``unionfs.image.lazy``): every
regular file with content is a sparse placeholder of the right size and attributes, marked
with the ``MARK`` xattr (private: never shown through the mount). Its layer has a record
``<store>/lazy/<chain hex>.json`` beside the store's ``layers/`` (where to fetch the blob from,
and each file's chunks: their byte ranges in the blob and sha256).

``ensure_present`` is called before a lower file's data is first used (open, a read without
open, copy-up). For a marked file it fetches the file's gzip members with one HTTP Range
request, checks each chunk against its digest before a byte is written, writes them into the
placeholder, flushes it, puts its mtime back and clears the mark; from then on the file is an
ordinary lower file (passthrough and the rest work unchanged). A registry that does not answer
within the mount's ``lazy_timeout`` makes the open fail with EIO, never hang.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import weakref
from dataclasses import dataclass, field

import pyfuse3
import trio

from unionfs.fs.inodes import Node
from unionfs.fs.state import UnionFS

MARK = "user.pyunion.lazy"
DEFAULT_TIMEOUT = 30.0
log = logging.getLogger("pyunion")


def record_path(layer_root: str) -> str:
    """Where the lazy record of the layer directory ``<store>/layers/<hex>`` is."""
    layers_dir, name = os.path.split(os.path.normpath(layer_root))
    return os.path.join(os.path.dirname(layers_dir), "lazy", name + ".json")


@dataclass
class LazyLayer:
    record: dict
    locks: dict[str, trio.Lock] = field(default_factory=dict)
    client: object | None = None  # a RegistryClient, made on first use (in the event loop)

    async def _client(self):
        from unionfs.image.registry.client import RegistryClient

        if self.client is None:
            self.client = RegistryClient(self.record["registry"],
                                         insecure=self.record.get("insecure", False))
        return self.client

    async def fetch(self, real: str, name: str) -> None:
        """Fills the placeholder ``real`` with the file ``name``'s verified chunks."""
        from unionfs.image.archive.estargz import Chunk, EstargzError, chunk_bytes
        from unionfs.image.registry.client import RegistryError

        chunks = [Chunk(*c) for c in self.record["files"][name]]
        start, end = chunks[0].start, chunks[-1].end
        client = await self._client()
        path = f"/v2/{self.record['repository']}/blobs/{self.record['digest']}"
        scope = f"repository:{self.record['repository']}:pull"
        try:
            async with client.request("GET", path, scope=scope, ok=(206,),  # type: ignore[attr-defined]
                                      headers={"Range": f"bytes={start}-{end - 1}"}) as answer:
                raw = bytearray()
                async for piece in answer.aiter_bytes(1 << 20):
                    raw += piece
                    if len(raw) > end - start:
                        break
            raw = raw[:end - start]
            pieces = [chunk_bytes(bytes(raw[c.start - start:c.end - start]), c)
                      for c in chunks]
        except (RegistryError, EstargzError, OSError) as e:
            log.warning("lazy file %s of %s: %s", name, self.record["digest"][:19], e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as e:  # httpx's stream errors: the registry went away
            log.warning("lazy file %s of %s: %s", name, self.record["digest"][:19],
                        e or type(e).__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        _write_in_place(real, chunks, pieces)


def _write_in_place(real: str, chunks, pieces: list[bytes]) -> None:
    """Writes the verified ``pieces`` into the placeholder, keeping its mtime, then clears the
    mark (the last step: a crash before it leaves the file to be fetched again)."""
    before = os.stat(real, follow_symlinks=False)
    fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for chunk, data in zip(chunks, pieces, strict=True):
            os.pwrite(fd, data, chunk.chunk_offset)
        os.fsync(fd)
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.removexattr(fd, MARK)
    finally:
        os.close(fd)


_layers: weakref.WeakKeyDictionary[UnionFS, dict[int, LazyLayer | None]] = \
    weakref.WeakKeyDictionary()


def _lazy_layer(fs: UnionFS, layer: int) -> LazyLayer | None:
    known = _layers.setdefault(fs, {})
    if layer not in known:
        root = fs.stack.roots[layer]
        known[layer] = None
        if root is not None:
            try:
                with open(record_path(root)) as f:
                    known[layer] = LazyLayer(json.load(f))
            except (OSError, ValueError):
                pass
    return known[layer]


async def ensure_present(fs: UnionFS, node: Node) -> None:
    """Makes sure the lower file whose data ``node`` uses has its data (see the module)."""
    if not node.data_in_lower or not node.lowers:
        return
    layer, path = node.lowers[0]
    lazy = _lazy_layer(fs, layer)
    if lazy is None:
        return
    real = fs.stack.real(layer, path)
    name = _mark(real)
    if name is None:
        return
    lock = lazy.locks.setdefault(name, trio.Lock())
    async with lock:
        if _mark(real) is None:  # fetched while this open waited
            return
        with trio.move_on_after(fs.config.lazy_timeout) as scope:
            await lazy.fetch(real, name)
        if scope.cancelled_caught:
            log.warning("lazy file %s: the registry did not answer within %ss", name,
                        fs.config.lazy_timeout)
            raise pyfuse3.FUSEError(errno.EIO)


def _mark(real: str) -> str | None:
    try:
        return os.getxattr(real, MARK, follow_symlinks=False).decode()
    except OSError:
        return None
