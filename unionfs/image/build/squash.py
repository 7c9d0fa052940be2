"""``build --squash``: the layers a build added, as one layer (the base image's stay).

The new layers' directories in the store (kernel overlay form, top-most first) are merged as
overlayfs would show them and written as one tar: for each name the top-most layer that has it
decides (a whiteout stays a whiteout, hiding the base's entry); a directory merges the layers
below it down to one where it is opaque or is not a directory, and is itself opaque when the
merge stopped there, so the base's contents stay hidden as they were.
"""

from __future__ import annotations

import os
import stat

from unionfs.fs.ondisk import is_whiteout, read_dir_markers
from unionfs.image.archive.generate import _add as add_entry
from unionfs.image.archive.tarwriter import Sink, TarWriter


def _is_opaque(path: str) -> bool:
    return read_dir_markers(path, follow_redirects=False).opaque


def write_squashed(layers_top_first: list[str], out: Sink) -> int:
    """Writes the merged layers as one layer tar to ``out``; returns the entry count."""
    count = 0
    links: dict[tuple[int, int], bytes] = {}
    with TarWriter(out) as tar:
        stack: list[tuple[str, list[str]]] = [("", layers_top_first)]
        while stack:
            rel, below = stack.pop()
            names: set[str] = set()
            for layer in below:
                names.update(os.listdir(os.path.join(layer, rel)))
            for name in sorted(names, reverse=True):
                child = f"{rel}/{name}" if rel else name
                count_here, directories = _merge(tar, child, below, links)
                count += count_here
                if directories:
                    stack.append((child, directories))
    return count


def _merge(tar: TarWriter, rel: str, below: list[str],
           links: dict[tuple[int, int], bytes]) -> tuple[int, list[str] | None]:
    """Writes entry ``rel`` from the top-most layer that has it; for a directory, also the
    layers whose contents merge into it."""
    present = []  # (layer, path, lstat) of every layer that has the entry, top-most first
    for layer in below:
        path = os.path.join(layer, rel)
        try:
            present.append((layer, path, os.lstat(path)))
        except FileNotFoundError:
            continue
    _, top_path, top = present[0]
    if is_whiteout(top) or not stat.S_ISDIR(top.st_mode):
        return add_entry(tar, os.fsencode(rel), top_path, top, links, True, False, None), None
    directories = []
    opaque = False
    for layer, path, st in present:
        if not stat.S_ISDIR(st.st_mode):
            opaque = True  # a directory made over a file or a whiteout hides what was below
            break
        directories.append(layer)
        if _is_opaque(path):
            opaque = True
            break
    written = add_entry(tar, os.fsencode(rel), top_path, top, links, True, opaque, None)
    return written, directories
