"""The inode table: FUSE node ids for merged objects, their names, lookup counts.

A node id (which is also the ``st_ino`` users see) is derived from the identity of the object
that backs it: when every layer is on one filesystem, the real inode number, as kernel
overlayfs reports it; otherwise ``device tag << 48 | st_ino`` with the tags given in layer
order (the kernel's ``xino`` idea). So the same object always gets the same number, even after
the kernel forgot it and across remounts, and hard links (same real inode) are one node. A
copy-up gives the object a new real identity; the table maps that identity back to the node's
original number, so ``st_ino`` never changes under a user for the life of the mount.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import pyfuse3

from unionfs.fs.layers import Found, LowerRef

INO_BITS = 48

# Bumped whenever a directory's parent or name changes: a merged path cached
# (``NodeTable.path_of``) under an older value may be wrong. (A file's change drops only its
# own.) Renames are rare beside the requests that need a path.
_names_epoch = 0


class Node:
    """One merged object as the kernel knows it."""

    __slots__ = ("ino", "kind", "_parent", "_name", "upper", "lowers", "lookups", "open_count",
                 "dead", "metacopy", "kept_fd", "next_read", "_path", "_path_epoch")

    def __init__(self, ino: int, kind: int, parent: Node | None, name: str) -> None:
        self.ino = ino
        self.kind = kind
        self._parent = parent         # a directory this object is reachable from (None: no name)
        self._name = name             # its name there
        self._path: str | None = None  # its merged path, as of ...
        self._path_epoch = -1          # ... this _names_epoch
        self.upper = False            # the upper holds this object at its merged path
        self.lowers: tuple[LowerRef, ...] = ()
        self.lookups = 0
        self.open_count = 0
        self.dead = False             # its last name is gone; only open files still reach it
        self.metacopy = False         # upper has the metadata, the data is lowers[0]'s
        self.kept_fd = -1             # O_PATH fd of its upper object once its name went
        self.next_read = -1           # where a sequential reader's next read starts (no_open)

    @property
    def parent(self) -> Node | None:
        return self._parent

    @parent.setter
    def parent(self, parent: Node | None) -> None:
        self._names_changed()
        self._parent = parent

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._names_changed()
        self._name = name

    def _names_changed(self) -> None:
        """Drops the merged paths cached of this node, and of those below it."""
        global _names_epoch
        if self.kind == stat.S_IFDIR:
            _names_epoch += 1
        else:
            self._path_epoch = -1

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def data_in_lower(self) -> bool:
        """Its data is its lower file's: not copied up, or copied up as metadata only."""
        return not self.upper or self.metacopy

    @property
    def merged(self) -> bool:
        """A directory with lower content below it (renaming it needs a redirect)."""
        return self.is_dir and bool(self.lowers)

    def __repr__(self) -> str:
        return f"Node({self.ino:#x}, {self.name!r}, upper={self.upper}, lowers={self.lowers})"


class NodeTable:
    def __init__(self, layer_devices: list[int]) -> None:
        """``layer_devices``: st_dev of each layer's root, upper first, then the lowers."""
        self.nodes: dict[int, Node] = {}
        self._dev_tags: dict[int, int] = {}
        for dev in layer_devices:
            self._dev_tags.setdefault(dev, len(self._dev_tags) + 1)
        self._single_dev = len(self._dev_tags) == 1
        self._aliases: dict[tuple[int, int], int] = {}  # real identity -> node id (copy-ups)
        self._big_inos: dict[tuple[int, int], int] = {}
        self._fresh_count = 0
        self._alias_keys: dict[int, list[tuple[int, int]]] = {}
        self.root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR, None, "")
        self.root.lookups = 1
        self.nodes[self.root.ino] = self.root
        # Told the number of each node that leaves the table (its number may come back for
        # another object): what is kept for it elsewhere goes too (passthrough.Backings).
        self.on_drop: Callable[[int], None] = lambda ino: None

    # --- identities --------------------------------------------------------------------------

    def ino_for(self, st: os.stat_result) -> int:
        key = (st.st_dev, st.st_ino)
        alias = self._aliases.get(key)
        if alias is not None:
            return alias
        if st.st_dev not in self._dev_tags:  # a mount inside a layer
            self._single_dev = False
            self._dev_tags[st.st_dev] = len(self._dev_tags) + 1
        if self._single_dev and st.st_ino > pyfuse3.ROOT_INODE and st.st_ino < (1 << 62):
            return st.st_ino
        tag = self._dev_tags[st.st_dev]
        if st.st_ino < (1 << INO_BITS) and tag < (1 << (62 - INO_BITS)):
            return (tag << INO_BITS) | st.st_ino
        return self._big_inos.setdefault(key, (1 << 63) | len(self._big_inos))

    def alias(self, st: os.stat_result, ino: int) -> None:
        """The real object ``st`` now backs node ``ino`` (after a copy-up)."""
        key = (st.st_dev, st.st_ino)
        self._aliases[key] = ino
        self._alias_keys.setdefault(ino, []).append(key)

    # --- nodes -------------------------------------------------------------------------------

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def node_for(self, found: Found, parent: Node, name: str) -> Node:
        """The node for a freshly resolved name, created or refreshed."""
        ino = self.ino_for(found.st)
        node = self.nodes.get(ino)
        kind = stat.S_IFMT(found.st.st_mode)
        if node is not None and (node.dead or node.kind != kind):
            # The real inode number was reused while the kernel still knows the old object:
            # give the new one a number of its own.
            ino = self._fresh_ino()
            self.alias(found.st, ino)
            node = None
        if node is None:
            node = Node(ino, kind, parent, name)
            self.nodes[ino] = node
        if node._parent is not parent or node._name != name:
            node.parent, node.name = parent, name
        node.upper = found.upper
        node.lowers = found.lowers
        node.metacopy = found.metacopy
        return node

    def _fresh_ino(self) -> int:
        self._fresh_count += 1
        return (1 << 62) | self._fresh_count

    def mark_dead(self, node: Node) -> None:
        """``node`` has no name left; its number may come back for another object."""
        node.dead = True
        node.parent = None
        self.unalias_node(node)
        self.drop_if_unused(node)

    def unalias(self, st: os.stat_result) -> None:
        """``st`` (a replaced upper file) no longer backs anything."""
        self._aliases.pop((st.st_dev, st.st_ino), None)

    def unalias_node(self, node: Node) -> None:
        for key in self._alias_keys.pop(node.ino, ()):
            if self._aliases.get(key) == node.ino:
                del self._aliases[key]

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self.drop_if_unused(node)

    def drop_if_unused(self, node: Node) -> None:
        if node.lookups == 0 and node.open_count == 0 and node is not self.root:
            if self.nodes.get(node.ino) is node:
                del self.nodes[node.ino]
                self.on_drop(node.ino)
            if node.kept_fd >= 0:
                os.close(node.kept_fd)
                node.kept_fd = -1

    def path_of(self, node: Node) -> str | None:
        """The merged path of ``node`` (which is also its path in the upper), None if unnamed.
        Cached in the node until a name changes anywhere (``_names_epoch``)."""
        if node._path_epoch == _names_epoch:
            return node._path
        path = self._walk_path(node)
        node._path, node._path_epoch = path, _names_epoch
        return path

    def _walk_path(self, node: Node) -> str | None:
        """The path of ``node`` from its names up to the nearest ancestor whose path is
        cached, or up to the root."""
        names = []
        while node._path_epoch != _names_epoch:
            parent = node._parent
            if parent is None:
                if node is not self.root:
                    return None
                break
            names.append(node._name)
            node = parent
        else:
            if node._path is None:
                return None
            if node._path:
                names.append(node._path)
        names.reverse()
        return "/".join(names)
