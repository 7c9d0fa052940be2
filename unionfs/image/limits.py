"""Bounds on untrusted input, each settable from the environment.

An archive or a registry can declare anything; these bounds turn a hostile or broken input into
one clear error before it costs much disk, memory or time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        from unionfs.image.errors import ImageError

        raise ImageError(f"{name}={value!r} is not a whole number") from None
    return number


@dataclass(frozen=True)
class Limits:
    max_layer_bytes: int = 32 * GiB       # uncompressed bytes of one layer (decompression bombs)
    max_layer_entries: int = 2_000_000    # tar entries in one layer (directory bombs)
    max_layers: int = 500                 # layers in one image (the kernel's overlay cap)
    max_json_bytes: int = 4 * MiB         # one manifest, index or config
    max_images_per_archive: int = 1000

    @classmethod
    def from_environment(cls) -> Limits:
        defaults = cls()
        return cls(
            max_layer_bytes=_env_int("PYUNION_MAX_LAYER_BYTES", defaults.max_layer_bytes),
            max_layer_entries=_env_int("PYUNION_MAX_LAYER_ENTRIES", defaults.max_layer_entries),
            max_layers=_env_int("PYUNION_MAX_LAYERS", defaults.max_layers),
            max_json_bytes=_env_int("PYUNION_MAX_JSON_BYTES", defaults.max_json_bytes),
        )
