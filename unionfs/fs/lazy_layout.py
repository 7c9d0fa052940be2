"""Where a lazily pulled layer keeps its state, for the mount (``fs/lazy.py``) and for the
store's commands (``image/lazy.py``; ``images`` and ``df`` show how much is present) alike,
without importing the mount's code (pyfuse3, trio: 0.1 s of every such command).

A lazy layer's root and each file still to fetch carry the xattr ``MARK`` (the root's value
``LAYER_MARK``, a file's its name in the TOC); the layer's record (its blob's digest, size,
diff_id, TOC entries) is ``record_path(layer_root)``; ``fill_placeholder`` puts a fetched
file's verified data in its placeholder.
"""

from __future__ import annotations

import os
import stat

MARK = "user.pyunion.lazy"
LAYER_MARK = "layer"  # MARK's value on the root of a lazy layer (its files': their TOC name)


def record_path(layer_root: str) -> str:
    """Where the lazy record of the layer directory ``<store>/layers/<hex>`` is."""
    layers_dir, name = os.path.split(os.path.normpath(layer_root))
    return os.path.join(os.path.dirname(layers_dir), "lazy", name + ".json")


def fill_placeholder(real: str, chunks, pieces: list[bytes]) -> None:
    """Writes the verified ``pieces`` into the placeholder, keeping its mtime. Its mark is
    cleared by the caller once the data is flushed: a crash before leaves it to be fetched
    again."""
    before = os.stat(real, follow_symlinks=False)
    try:
        fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:  # an ordinary user's layer file without write permission
        os.chmod(real, before.st_mode | stat.S_IWUSR)
        fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for chunk, data in zip(chunks, pieces, strict=True):
            os.pwrite(fd, data, chunk.chunk_offset)
        os.fchmod(fd, stat.S_IMODE(before.st_mode))
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    finally:
        os.close(fd)
