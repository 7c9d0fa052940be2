"""Copy-up: the one place that moves an object from a lower layer into the upper.

Ancestors first, then the object. Each object is built under a temporary name in the workdir
(same filesystem as the upper) with its data, xattrs, owner, mode and times, then renamed into
place, so no process and no crash ever sees a partial copy. The data copy runs in a worker
thread (reflink, else ``copy_file_range``), so other requests keep being served.
A lower file with several hard links is copied once and every visible name of it is linked to
the copy, which keeps it one file for us and for any other overlay implementation that later
mounts the upper.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable, Iterator

from unionfs.fs import lazy, offload, ondisk, override, syscalls
from unionfs.fs.inodes import Node
from unionfs.fs.layers import join, open_lower
from unionfs.fs.state import UnionFS

CHUNK = 16 << 20
INLINE_COPY = 256 << 10  # files smaller than this are copied up without a thread hop


async def copy_up(fs: UnionFS, node: Node, *, with_data: bool = True,
                  metadata_only: bool = False) -> None:
    """Makes the upper hold ``node`` (and every ancestor of it).

    ``with_data=False``: the data is about to be truncated away, copy none of it.
    ``metadata_only``: the change concerns attributes only; with ``metacopy=on`` a regular
    file then gets a kernel-form metacopy upper (attributes, no data) and keeps reading its
    lower data until it is opened for writing.
    """
    if with_data and not metadata_only:
        await lazy.ensure_present(fs, node)
    if node.upper:
        if node.metacopy and not metadata_only:
            await _copy_up_data(fs, node, with_data=with_data)
        return
    fs.check_writable()
    chain = []
    walk: Node | None = node
    while walk is not None and not walk.upper:
        chain.append(walk)
        walk = walk.parent
    if walk is None:  # no name leads to this object any more
        if node.parent is None and node.kind == stat.S_IFREG:
            await _copy_up_unnamed(fs, node, with_data=with_data)
            return
        raise OSError(errno.ESTALE, "object has no name to copy up to")
    for item in reversed(chain):
        is_target = item is node
        await _copy_up_one(fs, item, with_data=with_data or not is_target,
                           metadata_only=metadata_only and is_target)


async def _copy_up_one(fs: UnionFS, node: Node, *, with_data: bool,
                       metadata_only: bool) -> None:
    path = fs.path(node)
    layer, lower_path = node.lowers[0]
    src = fs.stack.real(layer, lower_path)
    st = os.lstat(src)
    metacopy = (metadata_only and fs.config.metacopy and stat.S_ISREG(st.st_mode)
                and st.st_nlink == 1 and st.st_size > 0)

    async def build(tmp: str) -> None:
        if metacopy:
            _make_metacopy(fs, tmp, st)
        else:
            await _make_copy(fs, src, tmp, st, with_data=with_data)

    hard_linked = stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and not metacopy
    index = os.path.join(fs.index_dir, f"{layer}-{st.st_ino}") if hard_linked else None
    dest = await _install(fs, path, build, xattrs_from=src, attrs=st, index=index)
    _now_in_upper(fs, node, dest, metacopy=metacopy)
    if index is not None:
        await _link_siblings(fs, layer, st.st_ino, fs.stack.upper_path(path),
                             written=lower_path)
        os.unlink(index)
    fs.stats["copy_up"] += 1


async def _copy_up_unnamed(fs: UnionFS, node: Node, *, with_data: bool) -> None:
    """A lower file whose last name went while a process may still write to it: files used
    without open requests are copied up at their first change (inode_io.py), and this one
    has no name left to copy up to. Its copy is made in the workdir and unlinked at once; it
    lives on through ``Node.kept_fd``, as an upper file whose name went does, and goes when
    the kernel forgets the file."""
    src = fs.stack.real(*node.lowers[0])
    st = os.lstat(src)
    tmp = fs.temp_path()
    try:
        await copy_file_off_loop(fs, src, tmp, st.st_size if with_data else 0)
        _give_metadata(fs, tmp, src, st)
        node.kept_fd = os.open(tmp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    finally:
        _remove_quietly(tmp)
    node.upper = True
    node.metacopy = False
    fs.invalidate_attrs(node, None)
    fs.stats["copy_up"] += 1


async def finish_interrupted_copy_ups(fs: UnionFS) -> None:
    """At mount: a lower hard link whose copy-up a crash interrupted has its copy in the
    index (see ``_install``); every visible name of it that is still the lower file's is
    linked to that copy now, so the names stay one file (kernel overlayfs keeps them one
    through its index in the same way)."""
    for entry in sorted(os.listdir(fs.index_dir)):
        copy = os.path.join(fs.index_dir, entry)
        layer, _, ino = entry.partition("-")
        if layer.isdigit() and ino.isdigit() and 1 <= int(layer) <= fs.stack.lower_count:
            await _link_siblings(fs, int(layer), int(ino), copy, written=None)
        os.unlink(copy)


async def _copy_up_data(fs: UnionFS, node: Node, *, with_data: bool) -> None:
    """Completes a metacopy upper file: its lower data under its upper attributes."""
    path = fs.path(node)
    current = fs.stack.upper_path(path)
    meta = os.lstat(current)
    size = meta.st_size if with_data else 0

    async def build(tmp: str) -> None:
        await copy_file_off_loop(fs, fs.data_path(node), tmp, size)

    dest = await _install(fs, path, build, xattrs_from=current, attrs=meta)
    fs.table.unalias(meta)
    _now_in_upper(fs, node, dest, metacopy=False)
    fs.stats["copy_up_data"] += 1


async def _install(fs: UnionFS, path: str, build: Callable[[str], Awaitable[None]], *,
                   xattrs_from: str, attrs: os.stat_result,
                   index: str | None = None) -> os.stat_result:
    """Builds an object under a temporary name in the workdir (``build(tmp)``), gives it the
    xattrs of ``xattrs_from`` and the owner, mode and times of ``attrs``, and renames it to
    ``path`` in the upper. Nothing partial is ever at ``path``. Returns its lstat.

    ``index``: the finished copy is also linked there before the rename, until every name
    of a lower hard link is linked to it (``finish_interrupted_copy_ups`` after a crash)."""
    tmp = fs.temp_path()
    try:
        await build(tmp)
        _give_metadata(fs, tmp, xattrs_from, attrs)
        if index is not None:
            _remove_quietly(index)  # (one left by a read-only mount after a crash)
            os.link(tmp, index)
        _rename_into_upper(fs, tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return os.lstat(fs.stack.upper_path(path))


def _give_metadata(fs: UnionFS, tmp: str, xattrs_from: str, attrs: os.stat_result) -> None:
    """The xattrs of ``xattrs_from`` and the owner, mode and times of ``attrs`` (recorded in
    the override xattr with ``override_stat``) for the new copy ``tmp``."""
    copy_xattrs(xattrs_from, tmp)
    if fs.config.override_stat:
        copy_recorded_metadata(fs, tmp, attrs, xattrs_from)
    else:
        copy_metadata(tmp, attrs)


def _now_in_upper(fs: UnionFS, node: Node, dest: os.stat_result, *, metacopy: bool) -> None:
    """Bookkeeping once the upper holds ``node``: same inode number, fresh attributes,
    readdir snapshots told, open files re-pointed at the upper copy (if it has the data)."""
    fs.table.alias(dest, node.ino)
    node.upper = True
    node.metacopy = metacopy
    fs.generation += 1  # before any further await: readdir snapshots must see it
    fs.invalidate_attrs(node, node.parent)
    if stat.S_ISREG(dest.st_mode) and not metacopy:
        fs.handles.repoint(node, fs.upper_path(node))


def _make_metacopy(fs: UnionFS, tmp: str, st: os.stat_result) -> None:
    """An upper file of the lower's size with no data in it, marked as the kernel does."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, st.st_size)
    finally:
        os.close(fd)
    fs.format.set_metacopy(tmp)


async def _make_copy(fs: UnionFS, src: str, tmp: str, st: os.stat_result, *,
                     with_data: bool) -> None:
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        os.mkdir(tmp, 0o700)
    elif kind == stat.S_IFREG:
        size = st.st_size if with_data else 0
        await copy_file_off_loop(fs, src, tmp, size)
    elif kind == stat.S_IFLNK:
        os.symlink(os.readlink(src), tmp)
    else:
        os.mknod(tmp, st.st_mode, st.st_rdev)


async def copy_file_off_loop(fs: UnionFS, src: str, dst: str, size: int) -> None:
    """``copy_file`` in a worker thread, so other requests are served meanwhile; a small
    file is copied inline, where the thread hop would cost more than the copy."""
    if size < INLINE_COPY:
        copy_file(src, dst, size, fs.config.fsync)
    else:
        await offload.run_sync(copy_file, src, dst, size, fs.config.fsync)


def copy_file(src: str, dst: str, size: int, fsync: bool) -> None:
    """Copies ``size`` bytes of ``src`` into the new file ``dst`` (runs in a worker thread)."""
    src_fd = open_lower(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if size and not syscalls.clone_file(src_fd, dst_fd):
                _copy_range(src_fd, dst_fd, size)
            if fsync:
                os.fsync(dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _copy_range(src_fd: int, dst_fd: int, size: int) -> None:
    """Copies the data extents of the first ``size`` bytes; holes stay holes (as the kernel's
    copy-up, which skips them with SEEK_DATA), the size is set last."""
    for start, end in _data_extents(src_fd, size):
        _copy_extent(src_fd, dst_fd, start, end)
    os.ftruncate(dst_fd, size)


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, end = pos, size  # no SEEK_DATA on this filesystem: all of it is data
        if start >= size:
            return
        pos = min(end, size)
        yield start, pos


def _copy_extent(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    copied = start
    try:
        while copied < end:
            n = os.copy_file_range(src_fd, dst_fd, min(CHUNK, end - copied), copied, copied)
            if n == 0:
                break
            copied += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while copied < end:
        chunk = os.pread(src_fd, min(1 << 20, end - copied), copied)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:  # a short write (the disk filling up) is retried: it then raises ENOSPC
            written = os.pwrite(dst_fd, view, copied)
            copied += written
            view = view[written:]
    if copied != end:
        raise OSError(errno.EIO, f"copy-up read {copied} of {end} bytes")


def copy_xattrs(src: str, dst: str) -> None:
    """Every xattr but overlay bookkeeping; those the upper refuses are skipped (as the kernel)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if ondisk.is_private_xattr(name):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOVERFLOW, errno.EINVAL):
                raise


def copy_metadata(dst: str, st: os.stat_result) -> None:
    """Owner, then mode (chown clears set-id bits), then times last."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_recorded_metadata(fs: UnionFS, dst: str, st: os.stat_result, src: str) -> None:
    """``copy_metadata`` with ``override_stat``: the source's owner and mode (its recorded
    ones, else its real ones) are recorded on the copy, which its owner can always use."""
    if not stat.S_ISLNK(st.st_mode):
        mode, uid, gid, rdev = fs.to_record(st, override.read(src))
        override.write(dst, uid, gid, mode, rdev)
        os.chmod(dst, override.stored_mode(mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _rename_into_upper(fs: UnionFS, tmp: str, path: str) -> None:
    """Moves a finished copy into place, keeping the parent's times as they were."""
    parent = fs.stack.upper_path(os.path.dirname(path))
    parent_st = os.lstat(parent)
    os.rename(tmp, fs.stack.upper_path(path))
    os.utime(parent, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))


async def _link_siblings(fs: UnionFS, layer: int, ino: int, dest: str, *,
                         written: str | None) -> None:
    """Links the visible names of the hard-linked lower file ``ino`` that still show it
    (other than ``written``, the one just copied up) to its upper copy ``dest``."""
    for other in fs.hardlink_paths(layer, ino):
        if other == written:
            continue
        parent_path, _, name = fs.merged_path_of_lower(other).rpartition("/")
        parent = fs.node_at(parent_path)
        if parent is None or not parent.is_dir:
            continue
        found = fs.stack.resolve(parent_path, parent.upper, parent.lowers, name)
        if found is None or found.upper or found.lowers != ((layer, other),):
            continue
        await copy_up(fs, parent)
        target = fs.stack.upper_path(join(parent_path, name))
        parent_upper = fs.stack.upper_path(parent_path)
        parent_st = os.lstat(parent_upper)
        os.link(dest, target)
        os.utime(parent_upper, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
        fs.invalidate_attrs(parent)


def _remove_quietly(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass
