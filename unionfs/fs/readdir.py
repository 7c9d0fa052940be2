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
from unionfs.fs.layers import UPPER, WHITEOUT
from unionfs.fs.state import UnionFS


def merged_names(fs: UnionFS, node: Node) -> list[str]:
    return merged_listing(fs, node)[0]


def merged_listing(fs: UnionFS, node: Node) -> tuple[list[str], set[str]]:
    """The sorted visible names, and which of them the upper has (no need to look there for
    the others)."""
    visible: set[str] = set()
    hidden: set[str] = set()
    in_upper: set[str] = set()
    if node.upper:
        names, whiteouts = _list_upper(fs.stack.real(UPPER, fs.path(node)))
        in_upper.update(names)
        visible.update(names)
        hidden.update(whiteouts)
    for layer, path in node.lowers:
        listing = fs.stack.listing(layer, path)
        if listing is None:
            continue
        for name, kind in listing.kinds.items():
            if name in hidden:
                continue
            if kind == WHITEOUT:
                hidden.add(name)
            else:
                visible.add(name)
        hidden.update(listing.oci_whiteouts)
    return sorted(visible), in_upper


def _list_upper(real: str) -> tuple[list[str], list[str]]:
    """(names, whited-out names) of an upper directory; ``.wh.`` names are never shown."""
    names: list[str] = []
    whiteouts: list[str] = []
    with os.scandir(real) as entries:
        for entry in entries:
            if ondisk.is_internal_name(entry.name):
                continue
            if _is_whiteout_entry(entry):
                whiteouts.append(entry.name)
            else:
                names.append(entry.name)
    return names, whiteouts


def _is_whiteout_entry(entry: os.DirEntry) -> bool:
    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
        return False
    if entry.is_symlink():
        return False
    return ondisk.is_whiteout(entry.stat(follow_symlinks=False))
