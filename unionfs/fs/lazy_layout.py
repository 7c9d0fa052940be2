"""Where a lazily pulled layer keeps its state, for the mount (``fs/lazy.py``) and for the
store's commands (``image/lazy.py``; ``images`` and ``df``, through ``presence``, show how
much is present) alike, without importing the mount's code (pyfuse3, trio: 0.1 s of every
such command) nor the pull's (``image/lazy.py``: httpx, the unpacker: 0.05 s).

A lazy layer's root and each file still to fetch carry the xattr ``MARK`` (the root's value
``LAYER_MARK``, a file's its name in the TOC); the layer's record (its blob's digest, size,
diff_id, TOC entries) is ``record_path(layer_root)``; ``fill_placeholder`` puts a fetched
file's verified data in its placeholder.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unionfs.image.store import Store

MARK = "user.pyunion.lazy"
LAYER_MARK = "layer"  # MARK's value on the root of a lazy layer (its files': their TOC name)


def record_path(layer_root: str) -> str:
    """Where the lazy record of the layer directory ``<store>/layers/<hex>`` is."""
    layers_dir, name = os.path.split(os.path.normpath(layer_root))
    return os.path.join(records_dir(layers_dir), name + ".json")


def records_dir(layers_dir: str) -> str:
    """Where the lazy records of the layers in ``layers_dir`` (``<store>/layers``) are."""
    return os.path.join(os.path.dirname(os.path.normpath(layers_dir)), "lazy")


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


def presence(store: Store, chain_id: str) -> tuple[int, int] | None:
    """(bytes present, bytes in all) of the files a lazy layer fetches on demand; None for an
    ordinary layer."""
    try:
        with open(record_path(store.layer_path(chain_id))) as f:
            total = int(json.load(f).get("bytes", 0))
    except (OSError, ValueError):
        return None
    missing = 0
    for top, _, names in os.walk(store.layer_path(chain_id)):
        for name in names:
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                os.getxattr(path, MARK, follow_symlinks=False)
                missing += os.lstat(path).st_size
    return max(total - missing, 0), total


def has_lazy_layers(store: Store) -> bool:
    """Whether any layer of the store is lazy and not yet whole (has a record): when none is,
    a listing need not ask each image."""
    try:
        with os.scandir(records_dir(store.layers_dir)) as records:
            return any(True for _ in records)
    except FileNotFoundError:
        return False


def image_presence(store: Store, image_id: str) -> tuple[int, int] | None:
    """(bytes present, bytes in all) of the image's lazy layers' files; None for an image
    with no lazy layer."""
    rows = store.db.execute("SELECT DISTINCT chain_id FROM image_layers WHERE image_id = ?",
                            (image_id,)).fetchall()
    found = [p for r in rows if (p := presence(store, r["chain_id"])) is not None]
    if not found:
        return None
    return sum(p for p, _ in found), sum(t for _, t in found)
