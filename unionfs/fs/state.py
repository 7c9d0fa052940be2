"""The state of one mounted union: config, layers, inode table, handles, workdir, locks.

The operation modules (copyup, dirops, attrs, readdir) take a ``UnionFS`` and act on it;
``operations.py`` only translates FUSE requests into calls on them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import Counter
from itertools import count

import pyfuse3
import trio

from unionfs.fs import ondisk, override
from unionfs.fs.handles import HandleTable
from unionfs.fs.inodes import Node, NodeTable
from unionfs.fs.layers import UPPER, Found, LayerStack, join, open_lower
from unionfs.fs.options import MountConfig
from unionfs.fs.passthrough import Backings

PRIVATE_DIR = "pyunion"
NAME_MAX = 255

# What the installed pyfuse3 lets us ask the kernel to cache (patches/README.md): the PyPI
# release cannot ask for either; `make setup` builds one with the extension.
PYFUSE3_CACHE_READDIR = hasattr(pyfuse3.FileInfo(), "cache_readdir")
PYFUSE3_CACHE_SYMLINKS = hasattr(pyfuse3.Operations, "enable_cache_symlinks")


class NamespaceLock:
    """The lock changes to the namespace take (``UnionFS.changing``): a flag while free,
    trio's parking lot only when contended. ``trio.Lock`` records and checks its owner task
    at every acquire and release, which costs more than most changes; here every holder is
    a request handler that releases what it took. Handed over in arrival order."""

    __slots__ = ("held", "_waiters")

    def __init__(self) -> None:
        self.held = False
        self._waiters = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        """Takes the lock; without a trip through trio's scheduler when it is free (a
        checkpoint costs more than most changes, and handlers are never cancelled)."""
        if not self.held and not self._waiters:
            self.held = True
            return
        await self._waiters.park()  # woken by release, which hands the lock over held

    def release(self) -> None:
        if self._waiters:
            self._waiters.unpark()  # (still held: now by the task it wakes)
        else:
            self.held = False


class Changing:
    """What ``UnionFS.changing`` returns: a class rather than an ``asynccontextmanager``
    (every change request enters one; a generator-based one costs several times as much)."""

    __slots__ = ("fs", "directories")

    def __init__(self, fs: UnionFS, directories: tuple[Node, ...]) -> None:
        self.fs = fs
        self.directories = directories

    async def __aenter__(self) -> None:
        await self.fs.ns_lock.acquire()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: object) -> None:
        fs = self.fs
        try:
            if error is not None:
                for directory in self.directories:
                    fs.invalidate_listing(directory)
        finally:
            fs.generation += 1
            fs.ns_lock.release()


class UnionFS:
    def __init__(self, config: MountConfig) -> None:
        self.config = config
        self.stack = LayerStack(config.upper, config.lowers,
                                follow_redirects=config.follow_redirects,
                                cache_lowers=config.timeout > 0,
                                metacopy=config.metacopy)
        self.table = NodeTable([os.stat(r).st_dev for r in self.stack.roots if r is not None])
        self.handles = HandleTable()
        self.backings = Backings(self.stack.roots)  # FUSE passthrough (passthrough.py)
        self.table.on_drop = self.backings.forget
        self.ns_lock = NamespaceLock()
        self.stats: Counter[str] = Counter()
        # The kernel may keep directory listings and symlink targets (for as long as it likes:
        # only invalidation drops them) where nothing changes underneath: not with timeout=0.
        self.cache_listings = PYFUSE3_CACHE_READDIR and config.timeout > 0
        self.cache_symlinks = PYFUSE3_CACHE_SYMLINKS and config.timeout > 0
        self.generation = 0  # bumped by every change to the upper (see readdir snapshots)
        self.kernel_attached = False  # mounted: invalidations reach the kernel from now on
        self._temp_ids = count()
        self.private_dir = ""
        self.temp_dir = ""
        self.index_dir = ""  # copies of lower hard links whose names are being linked
        self.format = ondisk.Format("trusted")
        self._hardlinks: dict[int, dict[int, list[str]]] = {}
        self._redirects: dict[str, str] | None = None  # lower dir path -> merged dir path
        found = self.stack.resolve_root()
        self.table.root.upper = found.upper
        self.table.root.lowers = found.lowers
        self.table.alias(found.st, self.table.root.ino)

    # --- workdir ----------------------------------------------------------------------------

    def prepare_workdir(self) -> None:
        """Creates ``<workdir>/pyunion/tmp`` and removes what a crash left there."""
        if not self.config.writable:
            return
        assert self.config.workdir
        self.private_dir = os.path.join(self.config.workdir, PRIVATE_DIR)
        self.temp_dir = os.path.join(self.private_dir, "tmp")
        self.index_dir = os.path.join(self.private_dir, "index")
        os.makedirs(self.private_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.index_dir, mode=0o700, exist_ok=True)
        if os.path.isdir(self.temp_dir):
            shutil.rmtree(self.temp_dir)
        os.mkdir(self.temp_dir, 0o700)
        namespace = "user" if self.config.userxattr else ondisk.probe_namespace(self.temp_dir)
        self.format = ondisk.Format(namespace)

    def temp_path(self) -> str:
        """A fresh name in the workdir, on the upper's filesystem (for atomic renames)."""
        return os.path.join(self.temp_dir, f"t{next(self._temp_ids)}")

    def changing(self, *directories: Node) -> Changing:
        """Serializes changes to the namespace and the upper; counts them for readdir
        (``async with fs.changing(...)``).

        ``directories``: those whose names the change is about. The kernel drops its cached
        listings of them only when the request succeeds; one that fails may have changed them
        part way (a rename whose whiteout could not be made), so they are dropped here then.
        """
        return Changing(self, directories)

    # --- checks ------------------------------------------------------------------------------

    def check_writable(self) -> None:
        if not self.config.writable:
            raise pyfuse3.FUSEError(errno.EROFS)

    @staticmethod
    def check_name(name: str) -> None:
        # (A name of n characters encodes to at most 4n bytes: most need no encoding here.)
        if len(name) * 4 > NAME_MAX and len(os.fsencode(name)) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    @staticmethod
    def check_new_name(name: str) -> None:
        """Names we refuse to create: they would read back as whiteouts."""
        UnionFS.check_name(name)
        if ondisk.is_internal_name(name):
            raise pyfuse3.FUSEError(errno.EINVAL)

    # --- nodes and paths -----------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.table.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def path(self, node: Node) -> str:
        path = self.table.path_of(node)
        if path is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return path

    def upper_path(self, node: Node) -> str:
        return self.stack.upper_path(self.path(node))

    def real_path(self, node: Node) -> str:
        """Where the top-most object of ``node`` lives now."""
        if node.upper:
            return self.stack.real(UPPER, self.path(node))
        if not node.lowers:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return self.stack.real(*node.lowers[0])

    def data_path(self, node: Node) -> str:
        """Where the data of ``node`` is read from (a metacopy file's is in the lower)."""
        if node.metacopy:
            return self.stack.real(*node.lowers[0])
        return self.real_path(node)

    def stat_of(self, node: Node) -> os.stat_result:
        if node.upper and self.table.path_of(node) is None:
            return os.fstat(self.unnamed_fd(node))
        return os.lstat(self.real_path(node))

    def open_data(self, node: Node, flags: int) -> int:
        """A new fd of the object ``node`` reads its data from, or (copied up) is written to:
        its lower, or metacopy data, file, its upper file, or what its upper name named."""
        if not node.data_in_lower and self.table.path_of(node) is None:
            return self.reopen_unnamed(node, flags)
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if node.data_in_lower:
            return open_lower(self.data_path(node), flags)
        return os.open(self.upper_path(node), flags)

    def reopen_unnamed(self, node: Node, flags: int) -> int:
        """A new fd, opened with ``flags``, of an upper object that lost its name (see
        ``unnamed_fd``; the /proc link is followed whatever ``flags`` say)."""
        return os.open(f"/proc/self/fd/{self.unnamed_fd(node)}",
                       (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)

    def unnamed_fd(self, node: Node) -> int:
        """An fd of an upper object that lost its name (unlinked, renamed over) while the
        kernel still knows it: an open file's, or the one kept when the name went."""
        fd = self.handles.any_fd(node)
        if fd is None:
            fd = node.kept_fd
        if fd < 0:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return fd

    def keep_while_known(self, node: Node, real: str) -> int:
        """Before an upper file's name goes: an O_PATH fd of it if the kernel knows it (a
        process that looked the name up may still open it, as on any filesystem), else -1.
        Given to ``Node.kept_fd`` if the name was its last (see dirops._forget_name)."""
        if node.is_dir or not node.upper or node.lookups == 0:
            return -1
        return os.open(real, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)

    def visible_attrs(self, node: Node, st: os.stat_result) -> tuple[int, int, int, int]:
        """(st_mode, uid, gid, rdev) users see: with ``override_stat`` the recorded ones,
        shown through the id mappings; else, and where nothing is recorded, the real ones
        (a real owner is already a host id: the user's, for an ordinary user's layers)."""
        found = self.recorded(node) if self.config.override_stat else None
        if found is None:
            return st.st_mode, st.st_uid, st.st_gid, st.st_rdev
        mode, uid, gid, rdev = override.effective(st, found)
        return (mode, self.config.uid_mapping.shown(uid), self.config.gid_mapping.shown(gid),
                rdev)

    def to_record(self, st: os.stat_result, found: override.Override | None
                  ) -> tuple[int, int, int, int]:
        """What to record for an object: its recorded values, or its real ones with the
        owner translated from a host id (the same object, shown the same way)."""
        if found is not None:
            return override.effective(st, found)
        return (st.st_mode, self.config.uid_mapping.stored(st.st_uid),
                self.config.gid_mapping.stored(st.st_gid), st.st_rdev)

    def recorded(self, node: Node) -> override.Override | None:
        """The override xattr of the top-most object of ``node`` (None for a symlink)."""
        if node.kind == stat.S_IFLNK:
            return None
        if node.upper and self.table.path_of(node) is None:
            return override.read(self.unnamed_fd(node))
        return override.read(self.real_path(node))

    def resolve(self, parent: Node, name: str) -> Found | None:
        if parent.kind != stat.S_IFDIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        parent_path = self.path(parent)
        return self.stack.resolve(parent_path, parent.upper, parent.lowers, name)

    def lookup(self, parent: Node, name: str) -> Node | None:
        """The node at ``name`` in ``parent``, without counting a kernel lookup."""
        found = self.resolve(parent, name)
        if found is None:
            return None
        return self.table.node_for(found, parent, name)

    def child(self, parent: Node, name: str) -> Node:
        node = self.lookup(parent, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def lower_has(self, parent: Node, name: str) -> bool:
        """A lower layer shows ``name`` in ``parent``: removing it needs a whiteout."""
        return bool(parent.lowers) and self.stack.lower_has(parent.lowers, name)

    def node_at(self, path: str) -> Node | None:
        """Walks a merged path from the root (used for hard-link siblings)."""
        node = self.table.root
        for name in filter(None, path.split("/")):
            if not node.is_dir:
                return None
            found = self.stack.resolve(self.path(node), node.upper, node.lowers, name)
            if found is None:
                return None
            node = self.table.node_for(found, node, name)
        return node

    def merged_path_of_lower(self, lower_path: str) -> str:
        """Where a lower path shows in the merged tree: under the directory that now carries
        a redirect to its deepest redirected ancestor, else at the same path."""
        redirects = self._redirect_map()
        prefix = lower_path
        while prefix:
            prefix = prefix.rpartition("/")[0]
            if prefix in redirects:
                return redirects[prefix] + lower_path[len(prefix):]
        return lower_path

    def redirects_changed(self) -> None:
        self._redirects = None

    def _redirect_map(self) -> dict[str, str]:
        """Lower paths of redirected upper directories -> their merged paths, read once per
        change (an upper walk, parents before children, dirs only).

        A relative redirect names a directory in the parent's lower directory, so each
        directory's lower path is worked out from its parent's. The walks here go by
        directory fds (``os.fwalk``): a path deeper than PATH_MAX is walked like any other.
        """
        if self._redirects is None:
            self._redirects = {}
            lower_of = {"": ""}  # merged path of an upper dir -> the lower path it continues
            root = self.stack.roots[UPPER]
            for dirpath, _dirs, _files, dir_fd in os.fwalk(root) if root else ():
                merged = os.path.relpath(dirpath, root)
                if merged == ".":
                    continue
                parent, _, name = merged.rpartition("/")
                parent_lower = lower_of.get(parent, parent)
                target = ondisk.read_redirect(dir_fd)
                if target is None:
                    lower_of[merged] = join(parent_lower, name)
                    continue
                lower = target.strip("/") if target.startswith("/") else join(
                    parent_lower, target)
                lower_of[merged] = lower
                self._redirects[lower] = merged
        return self._redirects

    def hardlink_paths(self, layer: int, ino: int) -> list[str]:
        """Every path in lower ``layer`` that is a hard link of its file ``ino`` (cached
        walk)."""
        if layer not in self._hardlinks:
            by_ino: dict[int, list[str]] = {}
            root = self.stack.roots[layer]
            assert root is not None
            for dirpath, _dirs, files, dir_fd in os.fwalk(root):
                rel = os.path.relpath(dirpath, root)
                for name in files:
                    fst = os.lstat(name, dir_fd=dir_fd)
                    if fst.st_nlink > 1 and stat.S_ISREG(fst.st_mode):
                        by_ino.setdefault(fst.st_ino, []).append(
                            name if rel == "." else f"{rel}/{name}")
            self._hardlinks[layer] = by_ino
        return self._hardlinks[layer].get(ino, [])

    def invalidate_attrs(self, *nodes: Node | None) -> None:
        """Tells the kernel to drop cached attributes we changed behind its back (ctime after
        a copy-up, a parent directory's times)."""
        if not self.kernel_attached:
            return
        for node in nodes:
            if node is None:
                continue
            try:
                pyfuse3.invalidate_inode(node.ino, attr_only=True)
            except OSError:
                pass  # the kernel does not know this inode (any more): nothing cached

    def invalidate_listing(self, directory: Node) -> None:
        """Tells the kernel to drop its cached listing of ``directory`` (and its attributes),
        which changed without a create, unlink or rename request on it (those the kernel
        handles itself)."""
        if not self.cache_listings or not self.kernel_attached:
            return
        try:
            pyfuse3.invalidate_inode(directory.ino)  # not attr_only: the listing is its "data"
        except OSError:
            pass  # the kernel does not know this inode (any more): nothing cached
