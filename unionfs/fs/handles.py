"""Open files and directories.

A file handle keeps one real file descriptor. When its object is copied up, every handle open
on the lower file is re-pointed at the upper copy in place (``dup2`` onto the same fd number),
so a reader that opened the file before another process wrote to it sees the new data.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from itertools import count

from unionfs.fs.inodes import Node

MAX_OPEN_LISTINGS = 256


@dataclass(frozen=True, slots=True)
class Caller:
    """Who opened a file or asked for a change: what clearing set-id bits on a write depends
    on (``attrs.caller_of`` makes one from a request)."""

    uid: int
    groups: frozenset[int]


ROOT = Caller(0, frozenset({0}))


class FileHandle:
    """An open file: ``fd`` is its real file's descriptor here, or -1 for a read-only open in
    passthrough mode that needs none (the kernel reads the backing file itself)."""

    __slots__ = ("fh", "node", "fd", "flags", "caller", "next_read", "passthrough")

    def __init__(self, fh: int, node: Node, fd: int, flags: int, caller: Caller) -> None:
        self.fh = fh
        self.node = node
        self.fd = fd
        self.flags = flags    # the flags the real file was opened with
        self.caller = caller  # who opened it (an unprivileged writer clears set-id bits)
        self.next_read = -1   # where a sequential reader's next read starts
        self.passthrough = False  # the kernel reads and writes its backing file itself

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY


class DirHandle:
    __slots__ = ("fh", "node", "names", "encoded", "cookies", "in_upper", "generation")

    def __init__(self, fh: int, node: Node) -> None:
        self.fh = fh
        self.node = node
        self.names: list[str] | None = None  # snapshot taken at offset 0, in cookie order
        self.encoded: list[bytes] = []       # the same names as the kernel gets them
        self.cookies: list[int] = []         # their offsets (operations.readdir_cookie)
        self.in_upper: set[str] = set()      # the names of it that the upper has ...
        self.generation = -1                 # ... as long as the upper has not changed since


class HandleTable:
    def __init__(self) -> None:
        self._ids = count(1)
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        # Directories listed without opendir requests (no_opendir): a snapshot per directory,
        # from the readdir at offset 0 to the one that reaches the end.
        self.listings: dict[int, DirHandle] = {}
        self._by_node: dict[int, set[FileHandle]] = defaultdict(set)

    def open_file(self, node: Node, fd: int, flags: int, caller: Caller) -> FileHandle:
        handle = FileHandle(next(self._ids), node, fd, flags, caller)
        self.files[handle.fh] = handle
        self._by_node[node.ino].add(handle)
        node.open_count += 1
        return handle

    def close_file(self, fh: int) -> FileHandle:
        handle = self.files.pop(fh)
        if handle.fd >= 0:
            os.close(handle.fd)
        handles = self._by_node[handle.node.ino]
        handles.discard(handle)
        if not handles:
            del self._by_node[handle.node.ino]
        handle.node.open_count -= 1
        return handle

    def of_node(self, node: Node) -> list[FileHandle]:
        return list(self._by_node.get(node.ino, ()))

    def any_fd(self, node: Node) -> int | None:
        for handle in self._by_node.get(node.ino, ()):
            if handle.fd >= 0:
                return handle.fd
        return None

    def repoint(self, node: Node, real_path: str) -> None:
        """After a copy-up: make every handle of ``node`` read the upper copy."""
        for handle in self.of_node(node):
            if handle.fd < 0:
                continue
            flags = handle.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
            new_fd = os.open(real_path, flags | os.O_NOFOLLOW)
            try:
                os.dup2(new_fd, handle.fd)
            finally:
                os.close(new_fd)

    def open_dir(self, node: Node) -> DirHandle:
        handle = DirHandle(next(self._ids), node)
        self.dirs[handle.fh] = handle
        return handle

    def close_dir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    def listing_of(self, node: Node) -> DirHandle:
        """The snapshot a listing of ``node`` without a handle goes on in (made at need)."""
        handle = self.listings.get(node.ino)
        if handle is None:
            if len(self.listings) >= MAX_OPEN_LISTINGS:  # listings abandoned part way
                del self.listings[next(iter(self.listings))]
            handle = self.listings[node.ino] = DirHandle(0, node)
        return handle

    def end_listing(self, node: Node) -> None:
        self.listings.pop(node.ino, None)
