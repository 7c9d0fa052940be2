"""Where a lazily pulled layer keeps its state, for the mount (``fs/lazy.py``) and for the
store's commands (``image/lazy.py``; ``images`` and ``df`` show how much is present) alike,
without importing the mount's code (pyfuse3, trio: 0.1 s of every such command).

A lazy layer's root and each file still to fetch carry the xattr ``MARK`` (the root's value
``LAYER_MARK``, a file's its name in the TOC); the layer's record (its blob's digest, size,
diff_id, TOC entries) is ``record_path(layer_root)``.
"""

from __future__ import annotations

import os

MARK = "user.pyunion.lazy"
LAYER_MARK = "layer"  # MARK's value on the root of a lazy layer (its files': their TOC name)


def record_path(layer_root: str) -> str:
    """Where the lazy record of the layer directory ``<store>/layers/<hex>`` is."""
    layers_dir, name = os.path.split(os.path.normpath(layer_root))
    return os.path.join(os.path.dirname(layers_dir), "lazy", name + ".json")
