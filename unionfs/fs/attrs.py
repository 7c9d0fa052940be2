"""Attributes and extended attributes (the kernel's ``inode.c`` and ``xattrs.c``)."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from unionfs.fs import ondisk, override
from unionfs.fs.copyup import copy_up
from unionfs.fs.handles import ROOT, Caller
from unionfs.fs.inodes import Node
from unionfs.fs.state import UnionFS

SETID_BITS = stat.S_ISUID | stat.S_ISGID


def entry_attributes(fs: UnionFS, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = node.ino
    attr.generation = 0
    attr.entry_timeout = fs.config.timeout
    attr.attr_timeout = fs.config.timeout
    if fs.config.override_stat:
        attr.st_mode, attr.st_uid, attr.st_gid, attr.st_rdev = fs.visible_attrs(node, st)
    else:  # (what visible_attrs gives then, without the call: this runs for every entry)
        attr.st_mode, attr.st_uid, attr.st_gid, attr.st_rdev = (st.st_mode, st.st_uid,
                                                                st.st_gid, st.st_rdev)
    # A merged directory's real link count is unknown; report 1 as kernel overlayfs does.
    merged = node.kind == stat.S_IFDIR and (node.upper + len(node.lowers)) > 1
    attr.st_nlink = 1 if merged else (0 if node.dead else st.st_nlink)
    attr.st_size = st.st_size
    attr.st_blksize = st.st_blksize
    attr.st_blocks = st.st_blocks
    attr.st_atime_ns = st.st_atime_ns
    attr.st_mtime_ns = st.st_mtime_ns
    attr.st_ctime_ns = st.st_ctime_ns
    return attr


def negative_entry(fs: UnionFS) -> pyfuse3.EntryAttributes:
    """A cached "no such name" answer (``st_ino`` 0) for ``entry_timeout`` seconds."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = fs.config.timeout
    return attr


def getattr_(fs: UnionFS, node: Node) -> pyfuse3.EntryAttributes:
    attr = entry_attributes(fs, node, fs.stat_of(node))
    if node.metacopy:  # the blocks are the lower data's, as the kernel reports them
        attr.st_blocks = os.lstat(fs.data_path(node)).st_blocks
    return attr


async def setattr_(fs: UnionFS, node: Node, attr: pyfuse3.EntryAttributes,
                   fields: pyfuse3.SetattrFields, fh: int | None,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
    fs.check_writable()
    if fields.update_mode and stat.S_ISLNK(node.kind):
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
    truncating_to_zero = fields.update_size and attr.st_size == 0
    await copy_up(fs, node, with_data=not truncating_to_zero,
                  metadata_only=not fields.update_size)
    target, opened = _target(fs, node, fh)
    try:
        if fs.config.override_stat and not stat.S_ISLNK(node.kind):
            _record_owner_and_mode(fs, node, target, attr, fields)
        else:
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                _chown(target, uid, gid)
            if fields.update_mode:
                os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_size:
            # After any mode the kernel sent with it (it kills set-user-ID itself, but keeps
            # a set-group-ID bit that the file's group rules take away: see clear_setid).
            os.truncate(target, attr.st_size)
            clear_setid(target, caller_of(ctx))
        if fields.update_atime or fields.update_mtime:
            _set_times(target, attr, fields)
        if not _any_field(fields):
            # What the kernel sends before an unprivileged write to a set-id file (it leaves
            # the clearing of the bits to the file system; see inode_io.py).
            clear_setid(target, caller_of(ctx))
    finally:
        if opened:
            os.close(target)
    return getattr_(fs, node)


def _any_field(fields: pyfuse3.SetattrFields) -> bool:
    return (fields.update_uid or fields.update_gid or fields.update_mode or fields.update_size
            or fields.update_atime or fields.update_mtime)


def _record_owner_and_mode(fs: UnionFS, node: Node, target: str | int,
                           attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> None:
    """chown and chmod with ``override_stat``: the new values go to the xattr, the real file
    only gets a mode its owner can use (see override.py)."""
    st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
    mode, uid, gid, rdev = fs.to_record(st, override.read(target))
    if fields.update_uid or fields.update_gid:
        if fields.update_uid:
            uid = fs.config.uid_mapping.stored(attr.st_uid)
        if fields.update_gid:
            gid = fs.config.gid_mapping.stored(attr.st_gid)
        if not stat.S_ISDIR(mode):  # a chown clears set-id bits, as chown(2) does
            mode &= ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))
    if fields.update_mode:
        mode = stat.S_IFMT(mode) | stat.S_IMODE(attr.st_mode)
        if isinstance(target, int):
            os.fchmod(target, override.stored_mode(mode))
        else:
            os.chmod(target, override.stored_mode(mode))
    override.write(target, uid, gid, mode, rdev)


def _target(fs: UnionFS, node: Node, fh: int | None) -> tuple[str | int, bool]:
    """The upper path of ``node``, or an open fd of it when it has no name any more: an open
    file's, else one opened for the call from the fd kept for it (files used without
    handles, see inode_io.py). The flag says whether the fd was opened here (the caller
    closes it). (Not a context manager: every setattr asks for one.)"""
    if fs.table.path_of(node) is not None:
        return fs.upper_path(node), False
    handle = fs.handles.files.get(fh) if fh is not None else None
    fd = handle.fd if handle is not None else fs.handles.any_fd(node)
    if fd is not None:
        return fd, False
    if node.kind != stat.S_IFREG:
        raise pyfuse3.FUSEError(errno.ESTALE)
    try:
        return fs.reopen_unnamed(node, os.O_RDWR), True
    except PermissionError:  # (an ordinary user's daemon, a file its owner cannot write)
        return fs.reopen_unnamed(node, os.O_RDONLY), True


def _chown(target: str | int, uid: int, gid: int) -> None:
    if isinstance(target, int):
        os.fchown(target, uid, gid)
    else:
        os.chown(target, uid, gid, follow_symlinks=False)


def _set_times(target: str | int, attr: pyfuse3.EntryAttributes,
               fields: pyfuse3.SetattrFields) -> None:
    st = os.stat(target) if isinstance(target, int) else os.lstat(target)
    atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
    mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
    if isinstance(target, int):
        os.utime(target, ns=(atime, mtime))
    else:
        os.utime(target, ns=(atime, mtime), follow_symlinks=False)


def caller_of(ctx: pyfuse3.RequestContext) -> Caller:
    if ctx.uid == 0:
        return ROOT
    groups = {ctx.gid}
    try:
        groups.update(pyfuse3.get_sup_groups(ctx.pid))
    except (OSError, ValueError):
        pass  # the process is gone already: its primary group is what we know
    return Caller(ctx.uid, frozenset(groups))


def clear_setid(target: str | int, caller: Caller) -> None:
    """What a write or truncate by an unprivileged caller does to set-id bits, as the kernel:
    set-user-ID always goes; set-group-ID goes if group-executable or the caller is not in
    the file's group."""
    if caller.uid == 0:
        return
    st = os.stat(target) if isinstance(target, int) else os.lstat(target)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & SETID_BITS:
        return
    mode = st.st_mode & ~stat.S_ISUID
    if st.st_mode & stat.S_IXGRP or st.st_gid not in caller.groups:
        mode &= ~stat.S_ISGID
    if mode != st.st_mode:
        os.chmod(target, stat.S_IMODE(mode))


# --- extended attributes ---------------------------------------------------------------------


def has_default_acl(fs: UnionFS, directory: Node) -> bool:
    try:
        os.getxattr(fs.real_path(directory), "system.posix_acl_default")
    except OSError:  # ENODATA, or no ACLs on that filesystem
        return False
    return True


def _hidden(fs: UnionFS, name: str) -> bool:
    """Bookkeeping xattrs no user sees through the mount (nor sets, nor removes)."""
    return ondisk.is_private_xattr(name) or (fs.config.override_stat
                                             and name in override.NAMES)


def _xattr_name(fs: UnionFS, name: bytes) -> str:
    text = os.fsdecode(name)
    if _hidden(fs, text):
        raise pyfuse3.FUSEError(errno.EPERM)
    return text


def getxattr(fs: UnionFS, node: Node, name: bytes) -> bytes:
    # (The most frequent request of all: ``ls -l`` asks every entry's SELinux label. The
    # name goes to the system call as the kernel sent it, not decoded and encoded again.)
    key = (name, fs.config.override_stat)
    hidden = _hidden_names.get(key)
    if hidden is None:
        hidden = _hidden(fs, os.fsdecode(name))
        if len(_hidden_names) >= MAX_CACHED_NAMES:
            _hidden_names.clear()
        _hidden_names[key] = hidden
    if hidden:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
    return os.getxattr(fs.real_path(node), name, follow_symlinks=False)


# xattr names (as the kernel sends them, and whether override_stat is on) -> hidden or not
_hidden_names: dict[tuple[bytes, bool], bool] = {}
MAX_CACHED_NAMES = 1000


def listxattr(fs: UnionFS, node: Node) -> list[bytes]:
    names = os.listxattr(fs.real_path(node), follow_symlinks=False)
    return [os.fsencode(n) for n in names if not _hidden(fs, n)]


async def setxattr(fs: UnionFS, node: Node, name: bytes, value: bytes) -> None:
    text = _xattr_name(fs, name)
    fs.check_writable()
    await copy_up(fs, node, metadata_only=True)
    os.setxattr(fs.upper_path(node), text, value, follow_symlinks=False)


async def removexattr(fs: UnionFS, node: Node, name: bytes) -> None:
    text = _xattr_name(fs, name)
    fs.check_writable()
    # Nothing to remove means no copy-up, as on the kernel.
    if text not in os.listxattr(fs.real_path(node), follow_symlinks=False):
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
    await copy_up(fs, node, metadata_only=True)
    os.removexattr(fs.upper_path(node), text, follow_symlinks=False)


def statfs(fs: UnionFS) -> pyfuse3.StatvfsData:
    top = fs.stack.roots[0] or fs.stack.roots[1]
    assert top is not None
    st = os.statvfs(top)
    data = pyfuse3.StatvfsData()
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail"):
        setattr(data, field, getattr(st, field))
    data.f_namemax = min(os.statvfs(r).f_namemax for r in fs.stack.roots if r is not None)
    return data
