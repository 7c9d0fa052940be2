"""Merged directory listings (the kernel's ``readdir.c``).

A listing is the union of the names of every layer that contributes to the directory, each
once, whiteouts and ``.wh.`` markers removed. It is taken once per open directory (at offset
0) and sorted by name, so offsets are stable indexes into that snapshot: a listing read in
several calls never skips or repeats a name, however the directory changes meanwhile.
"""

from __future__ import annotations

import os

from unionfs.fs import ondisk
from unionfs.fs.inodes import Node
from unionfs.fs.layers import UPPER
from unionfs.fs.state import UnionFS


def merged_names(fs: UnionFS, node: Node) -> list[str]:
    layers = []
    if node.upper:
        layers.append((UPPER, fs.path(node)))
    layers.extend(node.lowers)
    visible: set[str] = set()
    hidden: set[str] = set()
    for layer, path in layers:
        names, whiteouts = _list_layer(fs.stack.real(layer, path), oci=layer != UPPER)
        visible.update(names - hidden)
        hidden.update(whiteouts)
    return sorted(visible)


def _list_layer(real: str, *, oci: bool) -> tuple[set[str], set[str]]:
    """(names, whited-out names) of one layer's directory."""
    names: set[str] = set()
    whiteouts: set[str] = set()
    with os.scandir(real) as entries:
        for entry in entries:
            name = entry.name
            if ondisk.is_internal_name(name):
                if oci and name != ondisk.OCI_OPAQUE_MARKER:
                    whiteouts.add(name[len(ondisk.WHITEOUT_PREFIX):])
                continue
            if _is_whiteout_entry(entry):
                whiteouts.add(name)
                continue
            names.add(name)
    return names, whiteouts


def _is_whiteout_entry(entry: os.DirEntry) -> bool:
    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
        return False
    if entry.is_symlink():
        return False
    return ondisk.is_whiteout(entry.stat(follow_symlinks=False))
