"""A RUN step's layer without unpacking it again: the container's upper is already a layer
directory in the store's form (as root: kernel whiteouts and opaque xattrs, what
``unpack_layer`` makes of a tar), so it becomes the layer directory (``ImageAdder.prepared``
installs it under its chain id), and the tar is written only for the blob and its digests.

An upper that holds a redirected directory or a metacopy file (data still in a lower) is not a
layer by itself: those, and ordinary users' stores, go the way ``commit`` goes
(``commit.write_upper_layer``: a new layer directory made from the entries as they are
written).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from unionfs.fs.ondisk import read_redirect
from unionfs.image.archive import estargz
from unionfs.image.archive.compression import compress_gzip
from unionfs.image.archive.generate import write_layer_tar
from unionfs.image.archive.unpack import LayerDigests
from unionfs.image.store import Store, Workspace

METACOPY = "trusted.overlay.metacopy"


class _Counting:
    """The compressed side of the blob: hashed and counted on the way to the file."""

    def __init__(self, out) -> None:
        self.out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)


class ParallelGzip:
    """A write-only file like ``HashingGzipFile`` (the plain tar hashed: ``plain``; gzip
    written to ``out``) that compresses on every CPU: the stream is cut into 4 MiB pieces,
    each compressed as its own gzip member (zlib releases the GIL), written in order. A gzip
    file may hold several members; every reader of layers (this store's, Go's) reads them.
    ``size``: the plain bytes."""

    PIECE = 4 << 20

    def __init__(self, out) -> None:
        self._out = out
        self.plain = hashlib.sha256()
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._queue: deque[Future[bytes]] = deque()
        self._limit = 2 * workers

    @staticmethod
    def _compress(data: bytes) -> bytes:
        z = compress_gzip(1)
        return z.compress(data) + z.flush()

    @property
    def diff_id(self) -> str:
        return "sha256:" + self.plain.hexdigest()

    def write(self, data: bytes) -> int:
        self.plain.update(data)
        self.size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self.PIECE:
            self._submit()
        return len(data)

    def _submit(self) -> None:
        piece = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self._queue.append(self._pool.submit(self._compress, piece))
        while len(self._queue) > self._limit:
            self._out.write(self._queue.popleft().result())

    def finish(self) -> None:
        try:
            if self._pending or not self._queue:
                self._submit()
            while self._queue:
                self._out.write(self._queue.popleft().result())
        finally:
            self._pool.shutdown(cancel_futures=True)


def movable(store: Store, upper: str) -> bool:
    """Whether the upper can be the layer directory itself."""
    if store.whiteout_format != "overlay":
        return False
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames:
            if read_redirect(os.path.join(dirpath, name)) is not None:
                return False
        for name in filenames:
            try:
                if METACOPY in os.listxattr(os.path.join(dirpath, name),
                                            follow_symlinks=False):
                    return False
            except OSError:
                continue
    return True


def write_blob(upper: str, space: Workspace) -> tuple[str, LayerDigests]:
    """The upper as a gzip layer blob in ``space``, and its digests."""
    blob = space.new_path("step.tar.gz")
    with open(blob, "wb") as out:
        compressed = _Counting(out)
        sink = ParallelGzip(compressed)
        try:
            entries = write_layer_tar(upper, sink, convert_whiteouts=True)
        finally:
            sink.finish()
    digests = LayerDigests("sha256:" + compressed.digest.hexdigest(), compressed.size,
                           "sha256:" + sink.plain.hexdigest(), sink.size, "gzip", entries)
    return blob, digests


class _PlainTar:
    """A tar written as it comes, to be rewritten as eStargz (``layer_blob``)."""

    def __init__(self, out) -> None:
        self._out = out
        self.diff_id = ""

    def write(self, data: bytes) -> int:
        return self._out.write(data)


@contextlib.contextmanager
def layer_blob(path: str, layer_format: str) -> Iterator[ParallelGzip | _PlainTar]:
    """A sink for a layer tar written as a stream (COPY's, ``--squash``'s), whose blob is
    at ``path`` when the block ends and whose ``diff_id`` is set then: gzip (``ParallelGzip``),
    or eStargz, the tar rewritten by the eStargz writer (``estargz.convert``: a layer
    written as a tar stream is not cut at its entries)."""
    if layer_format != "estargz":
        with open(path, "wb") as out:
            sink = ParallelGzip(out)
            try:
                yield sink
            finally:
                sink.finish()
        return
    tar_path = path + ".tar"
    try:
        with open(tar_path, "wb") as out:
            plain = _PlainTar(out)
            yield plain
        with open(path, "wb") as out:
            plain.diff_id = estargz.convert(tar_path, out).diff_id
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tar_path)
