"""The FUSE request handlers: a thin layer that turns requests into calls on the modules.

Handlers decode names, take the namespace lock for changes, count kernel lookups, and turn
``OSError`` into the errno the kernel expects. What they mean lives in ``dirops``, ``copyup``,
``attrs``, ``readdir`` and ``layers``.
"""

from __future__ import annotations

import bisect
import errno
import functools
import hashlib
import inspect
import logging
import os
import stat
import sys
from collections.abc import Callable

import pyfuse3

from unionfs.fs import (
    attrs,
    dirops,
    inode_io,
    lazy,
    longpaths,
    offload,
    ondisk,
    override,
    passthrough,
)
from unionfs.fs.copyup import copy_up
from unionfs.fs.handles import Caller, FileHandle
from unionfs.fs.inodes import Node
from unionfs.fs.readdir import merged_listing
from unionfs.fs.state import UnionFS

# The pyfuse3 extension's no_open mode and umask hand-over (patches/README.md); the PyPI
# release lacks both.
PYFUSE3_NO_OPEN = hasattr(pyfuse3.Operations, "enable_no_open")
PYFUSE3_DONT_MASK = hasattr(pyfuse3.Operations, "enable_dont_mask")
# ... and handlers that are plain functions, called inline (the PyPI release awaits them all)
PYFUSE3_PLAIN_METHODS = getattr(pyfuse3, "PLAIN_METHODS", False)

FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

log = logging.getLogger("pyunion")
BIG_IO = 1 << 20  # reads and writes at least this large run in a worker thread


async def read_without_blocking(fd: int, size: int, off: int) -> bytes:
    """Reads what the page cache has inline (cheaper than a thread hop); only a read that
    would wait for the disk goes to a worker thread, so other requests are served meanwhile."""
    data = b""
    if size < BIG_IO:
        buf = bytearray(size)
        try:
            n = os.preadv(fd, [buf], off, os.RWF_NOWAIT)
        except BlockingIOError:
            n = 0
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == size or off + n >= os.fstat(fd).st_size:  # all of it, or up to the end
            return bytes(buf[:n])
        data = bytes(buf[:n])
    rest = await offload.run_sync(os.pread, fd, size - len(data), off + len(data))
    return data + rest


def _handler(fn: Callable) -> Callable:
    """Counts the request and maps OSError to FUSEError; anything else is a bug: EIO, logged.

    A handler that never waits is a plain function, which the pyfuse3 extension calls inline
    (on PyPI's pyfuse3 it is wrapped in a coroutine); one that may wait (for the namespace
    lock, a thread) is a coroutine, so that other requests are served meanwhile."""
    name = fn.__name__

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(self: UnionOperations, *args):
            self.fs.stats[name] += 1
            scope = longpaths.begin_request()
            try:
                return await fn(self, *args)
            except pyfuse3.FUSEError:
                raise
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
            except Exception as e:
                raise _fuse_error(e, name, args) from None
            finally:
                longpaths.end_request(scope)

        return wrapper

    @functools.wraps(fn)
    def plain(self: UnionOperations, *args):
        self.fs.stats[name] += 1
        inline = longpaths.INLINE
        inline.active = True
        try:
            return fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:  # (ENODATA from getxattr: the most frequent answer of all)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception as e:
            raise _fuse_error(e, name, args) from None
        finally:
            inline.active = False
            if inline.fds:
                inline.close_fds()

    if PYFUSE3_PLAIN_METHODS:
        return plain

    @functools.wraps(fn)
    async def awaitable(self: UnionOperations, *args):
        return plain(self, *args)

    return awaitable


def _fuse_error(e: Exception, name: str, args: tuple) -> pyfuse3.FUSEError:
    """The FUSEError to answer a request that raised ``e`` with."""
    if isinstance(e, pyfuse3.FUSEError):
        return e
    if isinstance(e, OSError):
        return pyfuse3.FUSEError(e.errno or errno.EIO)
    log.error("internal error in %s%r", name, args, exc_info=e)
    return pyfuse3.FUSEError(errno.EIO)


def readdir_cookie(name: str) -> int:
    """A directory offset that names a place in any listing of the directory: a hash of the
    name (above 2, the offsets of "." and ".."), listings being in hash order, as ext4's."""
    cookie = _cookies.get(name)
    if cookie is None:
        digest = hashlib.blake2b(os.fsencode(name), digest_size=8).digest()
        cookie = (int.from_bytes(digest, "big") >> 2) + 3
        if len(_cookies) >= MAX_CACHED_COOKIES:
            _cookies.clear()
        _cookies[name] = cookie
    return cookie


# Names' cookies, computed once: the same names are listed again and again (every listing a
# kernel dropped, every directory of a tree that has the same names).
_cookies: dict[str, int] = {}
MAX_CACHED_COOKIES = 100_000


def backing_flags(flags: int) -> int:
    """Open flags for the real file behind a FUSE open."""
    return (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)) | os.O_NOFOLLOW


class UnionOperations(pyfuse3.Operations):
    """FUSE requests -> union operations.

    No writeback cache (``enable_writeback_cache``): measured, it saved no requests for small
    files, and it would report ENOSPC only at close or fsync and keep its own file times.
    """

    supports_dot_lookup = True

    def __init__(self, fs: UnionFS) -> None:
        super().__init__()
        self.fs = fs
        # Read by pyfuse3 at init (with the extension; patches/README.md): one readlink per
        # symlink instead of one per resolution. Symlink targets never change under a name's
        # inode number (a new object gets a new number), so nothing needs invalidating.
        self.enable_cache_symlinks = fs.cache_symlinks
        # FUSE passthrough (passthrough.py), read by pyfuse3 at init and set back to False
        # there if the kernel does not offer it. It needs open requests, so no_open is off.
        self.enable_passthrough = (fs.config.passthrough != "off"
                                   and passthrough.unavailable_because() is None)
        # Read by pyfuse3 at init too, and set back to False there if the kernel cannot do
        # it: open and create then answer ENOSYS, and files are used without handles
        # (inode_io.py).
        self.enable_no_open = PYFUSE3_NO_OPEN and not self.enable_passthrough
        # Directories are listed without opendir requests in either case (where listings
        # may be cached, see _no_opendir); with passthrough files are still opened.
        self.enable_no_opendir = self.enable_passthrough and fs.cache_listings
        # POSIX ACLs (as kernel overlayfs): the kernel enforces and caches them, and with the
        # extension leaves the umask to us (see _creation_mode). Not with override_stat: the
        # ids in an ACL are the layers' own, not mapped like the recorded owners.
        self.enable_acl = not fs.config.override_stat
        self.enable_dont_mask = self.enable_acl

    def init(self) -> None:
        """Called by pyfuse3 once the kernel's capabilities are known."""
        self.fs.backings.enabled = self.enable_passthrough
        if self.enable_passthrough:
            log.debug("passthrough: %s", passthrough.describe())
        elif self.fs.config.passthrough != "off" and not passthrough.unavailable_because():
            log.debug("passthrough: off (the kernel does not offer it)")
        else:
            log.debug("passthrough: %s", passthrough.describe(self.fs.config.passthrough))

    @property
    def _no_opendir(self) -> bool:
        """Directories are listed without opendir requests: with no_open, or no_opendir alone
        (with passthrough; pyfuse3 may have turned either off at init), and only where the
        kernel may keep listings, which it then always does."""
        return (self.enable_no_open or self.enable_no_opendir) and self.fs.cache_listings

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that gives the kernel a new reference to ``node``."""
        node.lookups += 1
        return attrs.getattr_(self.fs, node)

    # --- lookup and attributes ---------------------------------------------------------------

    @_handler
    def lookup(self, parent_inode, name, ctx):
        fs = self.fs
        parent = fs.node(parent_inode)
        text = name.decode(FS_ENCODING, FS_ERRORS)  # (os.fsdecode, without its checks)
        if text == ".":
            return self._entry(parent)
        if text == "..":
            return self._entry(parent.parent or fs.table.root)
        fs.check_name(text)
        if ondisk.is_internal_name(text):
            return attrs.negative_entry(fs)
        found = fs.resolve(parent, text)
        if found is None:
            return attrs.negative_entry(fs)
        node = fs.table.node_for(found, parent, text)
        node.lookups += 1
        return attrs.entry_attributes(fs, node, found.st)

    @_handler
    def forget(self, inode_list):
        for ino, count in inode_list:
            self.fs.table.forget(ino, count)

    @_handler
    def getattr(self, inode, ctx):
        return attrs.getattr_(self.fs, self.fs.node(inode))

    @_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            await self.fs.backings.check_writable(inode)
        async with self.fs.changing():
            return await attrs.setattr_(self.fs, self.fs.node(inode), attr, fields, fh, ctx)

    @_handler
    def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self.fs.real_path(self.fs.node(inode))))

    @_handler
    def statfs(self, ctx):
        return attrs.statfs(self.fs)

    # --- namespace -----------------------------------------------------------------------------

    def _creation_mode(self, parent_inode: int, mode: int, ctx: pyfuse3.RequestContext) -> int:
        """The mode asked for a new object, less the caller's umask (the kernel leaves that to
        us with ``enable_dont_mask``), unless the parent has a default ACL: the upper's
        filesystem applies that instead when the object is made, as for kernel overlayfs.
        (A plain pyfuse3 cannot ask: the kernel then takes the umask away in every case.)
        The parent is looked at only when the umask takes something away."""
        masked = mode & ~(ctx.umask & 0o777)
        if masked == mode or not self.enable_acl:
            return mode
        return mode if attrs.has_default_acl(self.fs, self.fs.node(parent_inode)) else masked

    async def _create(self, parent_inode, name, ctx, mode: int, make,
                      rdev: int = 0) -> pyfuse3.EntryAttributes:
        fs = self.fs
        parent = fs.node(parent_inode)
        async with fs.changing(parent):
            node = await dirops.create_object(fs, parent, os.fsdecode(name), ctx, mode, make,
                                              rdev)
            return self._entry(node)

    @_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        mode = self._creation_mode(parent_inode, mode, ctx)

        def make(path: str) -> None:
            os.mknod(path, mode, rdev)

        stand_in = self.fs.config.override_stat and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode))
        return await self._create(parent_inode, name, ctx, mode,
                                  override.make_device_stand_in if stand_in else make, rdev)

    @_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        mode = stat.S_IFDIR | stat.S_IMODE(self._creation_mode(parent_inode, mode, ctx))
        return await self._create(parent_inode, name, ctx, mode,
                                  lambda path: os.mkdir(path, stat.S_IMODE(mode)))

    @_handler
    async def symlink(self, parent_inode, name, target, ctx):
        return await self._create(parent_inode, name, ctx, stat.S_IFLNK | 0o777,
                                  lambda path: os.symlink(os.fsdecode(target), path))

    @_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        fs = self.fs
        new_parent = fs.node(new_parent_inode)
        async with fs.changing(new_parent):
            node = await dirops.link(fs, fs.node(inode), new_parent, os.fsdecode(new_name))
            return self._entry(node)

    @_handler
    async def unlink(self, parent_inode, name, ctx):
        parent = self.fs.node(parent_inode)
        async with self.fs.changing(parent):
            await dirops.unlink(self.fs, parent, os.fsdecode(name))

    @_handler
    async def rmdir(self, parent_inode, name, ctx):
        parent = self.fs.node(parent_inode)
        async with self.fs.changing(parent):
            await dirops.rmdir(self.fs, parent, os.fsdecode(name))

    @_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        fs = self.fs
        old_parent, new_parent = fs.node(parent_inode_old), fs.node(parent_inode_new)
        async with fs.changing(old_parent, new_parent):
            await dirops.rename(fs, old_parent, os.fsdecode(name_old), new_parent,
                                os.fsdecode(name_new), flags)

    # --- files ---------------------------------------------------------------------------------

    @_handler
    async def open(self, inode, flags, ctx):
        if self.enable_no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fs = self.fs
        node = fs.node(inode)
        await lazy.ensure_present(fs, node)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        caller = attrs.caller_of(ctx)
        if writing:
            fs.check_writable()
            await fs.backings.check_writable(node.ino)
            async with fs.changing():
                await copy_up(fs, node, with_data=not flags & os.O_TRUNC)
        elif info := self._passthrough_read(node, flags, caller):
            return info
        # (If its name went between the caller's lookup and this open: what it named.)
        fd = fs.open_data(node, backing_flags(flags))
        if flags & os.O_TRUNC:
            attrs.clear_setid(fd, caller)
        return self._file_info(node, fd, flags, caller)

    def _passthrough_read(self, node: Node, flags: int,
                          caller: Caller) -> pyfuse3.FileInfo | None:
        """A read-only open in passthrough mode that needs no descriptor here: of a node
        whose backing is registered already, or of a lower file (registered from its
        layer's read-only view). None where that cannot be done."""
        fs = self.fs
        if not fs.backings.enabled:
            return None
        backing_id = fs.backings.reuse(node.ino)
        if not backing_id and node.data_in_lower and not node.open_count:
            backing_id = fs.backings.attach(node.ino, -1, node.lowers[0], False, 0)
        if not backing_id:
            return None
        return self._open_reply(node, -1, flags, caller, backing_id)

    def _file_info(self, node: Node, fd: int, flags: int,
                   caller: Caller) -> pyfuse3.FileInfo:
        """The reply to an open of ``node`` whose real file is open as ``fd``: in passthrough
        mode where the kernel takes it, else served here (and kept in the page cache)."""
        fs = self.fs
        cached_opens = sum(not h.passthrough for h in fs.handles.of_node(node))
        lower = node.lowers[0] if node.data_in_lower else None
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        try:
            backing_id = fs.backings.attach(node.ino, fd, lower, writing, cached_opens)
        except BaseException:
            os.close(fd)
            raise
        return self._open_reply(node, fd, flags, caller, backing_id)

    def _open_reply(self, node: Node, fd: int, flags: int, caller: Caller,
                    backing_id: int) -> pyfuse3.FileInfo:
        """A handle for a new open and the reply naming it: in passthrough mode with a
        backing id (the kernel refuses keep_cache there), else kept in the page cache."""
        handle = self.fs.handles.open_file(node, fd, flags, caller)
        if not backing_id:
            return pyfuse3.FileInfo(fh=handle.fh, keep_cache=True)
        handle.passthrough = True
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=False, backing_id=backing_id)

    @_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        if self.enable_no_open:
            # The kernel then makes the file with mknod and uses it without opening it here;
            # a handle from create would be the only one, and handles are inodes now.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fs = self.fs
        fds: list[int] = []
        mode = self._creation_mode(parent_inode, mode, ctx)

        def make(path: str) -> None:
            open_flags = backing_flags(flags & ~os.O_TRUNC) | os.O_CREAT | os.O_EXCL
            fds.append(os.open(path, open_flags, stat.S_IMODE(mode)))

        parent = fs.node(parent_inode)
        async with fs.changing(parent):
            try:
                node = await dirops.create_object(fs, parent, os.fsdecode(name), ctx,
                                                  stat.S_IFREG | stat.S_IMODE(mode), make)
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
            info = self._file_info(node, fds[0], flags, attrs.caller_of(ctx))
            return info, self._entry(node)

    @_handler
    async def read(self, fh, off, size):
        if self.enable_no_open:  # fh is the inode
            node = self.fs.node(fh)
            await lazy.ensure_present(self.fs, node)
            fd = self.fs.open_data(node, os.O_RDONLY)
            try:
                return await self._read(node, fd, off, size)
            finally:
                os.close(fd)
        handle = self.fs.handles.files[fh]
        return await self._read(handle, handle.fd, off, size)

    @staticmethod
    async def _read(reader: FileHandle | Node, fd: int, off: int, size: int) -> bytes:
        if off and off == reader.next_read and size < BIG_IO:
            # A sequential reader: the lower file's readahead is ahead of it; reading inline
            # costs less than any hop (measured: 0.2 s against 0.7 s for 256 MiB cold).
            data = os.pread(fd, size, off)
        else:
            data = await read_without_blocking(fd, size, off)
        reader.next_read = off + len(data)
        return data

    @_handler
    async def write(self, fh, off, buf):
        if self.enable_no_open:  # fh is the inode; set-id bits went at setattr (inode_io)
            return await inode_io.write(self.fs, self.fs.node(fh), off, buf, BIG_IO)
        handle = self.fs.handles.files[fh]
        if len(buf) >= BIG_IO:
            written = await offload.run_sync(os.pwrite, handle.fd, buf, off)
        else:
            written = os.pwrite(handle.fd, buf, off)
        attrs.clear_setid(handle.fd, handle.caller)
        return written

    @_handler
    def release(self, fh):
        if self.enable_no_open:  # (not sent for files opened without open)
            return
        handle = self.fs.handles.close_file(fh)
        if handle.passthrough:
            self.fs.backings.detach(handle.node.ino)
        self.fs.table.drop_if_unused(handle.node)

    @_handler
    async def fsync(self, fh, datasync):
        if self.enable_no_open:  # fh is the inode
            await inode_io.fsync(self.fs, self.fs.node(fh), datasync)
            return
        handle = self.fs.handles.files[fh]
        if handle.fd >= 0:
            await offload.run_sync(os.fdatasync if datasync else os.fsync, handle.fd)
        else:  # a read-only passthrough open holds no descriptor here
            await inode_io.fsync(self.fs, handle.node, datasync)

    # --- directories ---------------------------------------------------------------------------

    @_handler
    def opendir(self, inode, ctx):
        if self._no_opendir:
            # The kernel then lists directories without opendir and releasedir requests, and
            # keeps their listings as with cache_readdir.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self.fs.node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self.fs.handles.open_dir(node).fh
        if self.fs.cache_listings:
            # The kernel keeps the listing readdir gives and serves later reads from it until
            # a create, unlink or rename in the directory (or fs.invalidate_listing) drops it.
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

    @_handler
    def readdir(self, fh, start_id, token):
        fs = self.fs
        if self._no_opendir:  # fh is the inode
            handle = fs.handles.listing_of(fs.node(fh))
        else:
            handle = fs.handles.dirs[fh]
        directory = handle.node
        if start_id == 0 or handle.names is None:
            names, handle.in_upper = merged_listing(fs, directory)
            in_order = sorted([(readdir_cookie(name), name) for name in names])
            handle.names = [".", "..", *(name for _, name in in_order)]
            handle.encoded = [os.fsencode(name) for name in handle.names]
            handle.cookies = [1, 2, *(cookie for cookie, _ in in_order)]
            handle.generation = fs.generation
        names, encoded, cookies = handle.names, handle.encoded, handle.cookies
        path = fs.path(directory)
        upper_known = handle.generation == fs.generation
        # The offset is the last cookie the kernel got, perhaps from a listing of another
        # handle (a cached listing it dropped part way): go on after it in name-hash order.
        for index in range(bisect.bisect_right(cookies, start_id), len(names)):
            name = names[index]
            if index < 2:  # "." and "..": the kernel takes no reference for these
                node = directory if index == 0 else (directory.parent or directory)
                attr = attrs.getattr_(fs, node)
                if not pyfuse3.readdir_reply(token, encoded[index], attr, cookies[index]):
                    break
                continue
            look_in_upper = directory.upper and (not upper_known or name in handle.in_upper)
            found = fs.stack.resolve(path, look_in_upper, directory.lowers, name)
            if found is None:
                continue
            node = fs.table.node_for(found, directory, name)
            attr = attrs.entry_attributes(fs, node, found.st)
            if not pyfuse3.readdir_reply(token, encoded[index], attr, cookies[index]):
                break
            node.lookups += 1
        else:
            if self._no_opendir:
                fs.handles.end_listing(directory)

    @_handler
    def releasedir(self, fh):
        if not self._no_opendir:  # (not sent without opendir)
            self.fs.handles.close_dir(fh)

    @_handler
    async def fsyncdir(self, fh, datasync):
        if self._no_opendir:  # fh is the inode
            node = self.fs.node(fh)
        else:
            node = self.fs.handles.dirs[fh].node
        if node.upper:
            fd = os.open(self.fs.upper_path(node), os.O_RDONLY | os.O_DIRECTORY)
            try:
                await offload.run_sync(os.fsync, fd)
            finally:
                os.close(fd)

    # --- extended attributes -------------------------------------------------------------------

    @_handler
    def getxattr(self, inode, name, ctx):
        return attrs.getxattr(self.fs, self.fs.node(inode), name)

    @_handler
    def listxattr(self, inode, ctx):
        return attrs.listxattr(self.fs, self.fs.node(inode))

    @_handler
    async def setxattr(self, inode, name, value, ctx):
        async with self.fs.changing():
            await attrs.setxattr(self.fs, self.fs.node(inode), name, value)

    @_handler
    async def removexattr(self, inode, name, ctx):
        async with self.fs.changing():
            await attrs.removexattr(self.fs, self.fs.node(inode), name)
