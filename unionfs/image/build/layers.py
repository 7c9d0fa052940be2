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
import os
from collections.abc import Iterator

from unionfs.fs.ondisk import read_redirect
from unionfs.image.archive import estargz
from unionfs.image.archive.compression import HashingGzipFile
from unionfs.image.archive.generate import write_layer_tar
from unionfs.image.archive.unpack import LayerDigests
from unionfs.image.store import Store, Workspace

METACOPY = "trusted.overlay.metacopy"


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
    """The upper as a gzip layer blob in ``space`` (compressed on every CPU), and its
    digests."""
    blob = space.new_path("step.tar.gz")
    with open(blob, "wb") as out:
        sink = HashingGzipFile(out, parallel=True)
        try:
            entries = write_layer_tar(upper, sink, convert_whiteouts=True)
        finally:
            sink.finish()
    digests = LayerDigests("sha256:" + sink.compressed.hexdigest(), sink.compressed_size,
                           sink.diff_id, sink.plain_size, "gzip", entries)
    return blob, digests


class _PlainTar:
    """A tar written as it comes, to be rewritten as eStargz (``layer_blob``)."""

    def __init__(self, out) -> None:
        self._out = out
        self.diff_id = ""

    def write(self, data: bytes) -> int:
        return self._out.write(data)


@contextlib.contextmanager
def layer_blob(path: str, layer_format: str) -> Iterator[HashingGzipFile | _PlainTar]:
    """A sink for a layer tar written as a stream (COPY's, ``--squash``'s), whose blob is
    at ``path`` when the block ends and whose ``diff_id`` is set then: gzip (compressed on
    every CPU), or eStargz, the tar rewritten by the eStargz writer (``estargz.convert``: a
    layer written as a tar stream is not cut at its entries)."""
    if layer_format != "estargz":
        with open(path, "wb") as out:
            sink = HashingGzipFile(out, parallel=True)
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
