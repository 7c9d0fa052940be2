"""Namespace changes (the kernel's ``dir.c``): create, link, unlink, rmdir, rename.

Every change lands in the upper in the kernel overlayfs format: a removed lower name leaves a
whiteout, a directory made where a whiteout stood is opaque, a renamed directory with lower
content gets a redirect. Each step on disk is a single atomic rename where it can be, built in
the workdir first, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable

import pyfuse3

from unionfs.fs import ondisk, syscalls
from unionfs.fs.copyup import copy_up
from unionfs.fs.inodes import Node
from unionfs.fs.layers import Found, join, lstat_or_none
from unionfs.fs.readdir import merged_names
from unionfs.fs.state import UnionFS

SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def _error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


# --- creating ------------------------------------------------------------------------------


def owner_for(fs: UnionFS, parent: Node, uid: int, gid: int) -> tuple[int, int, bool]:
    """(uid, gid, setgid-dir) of a new object: a set-group-ID directory passes its group on."""
    parent_st = fs.stat_of(parent)
    if parent_st.st_mode & stat.S_ISGID:
        return uid, parent_st.st_gid, True
    return uid, gid, False


async def create_object(fs: UnionFS, parent: Node, name: str, ctx: pyfuse3.RequestContext,
                        mode: int, make: Callable[[str], None]) -> Node:
    """Makes a new object at ``name`` with ``make(real_path)`` and gives it the caller's owner."""
    fs.check_writable()
    fs.check_new_name(name)
    if fs.resolve(parent, name) is not None:  # (no node for a mere existence check)
        raise _error(errno.EEXIST)
    await copy_up(fs, parent)
    dest = fs.stack.upper_path(join(fs.path(parent), name))
    uid, gid, setgid_dir = owner_for(fs, parent, ctx.uid, ctx.gid)
    if setgid_dir and stat.S_ISDIR(mode):
        mode |= stat.S_ISGID
    existing = lstat_or_none(dest)
    if existing is None:
        make(dest)
        _set_owner(dest, uid, gid, mode)
    elif ondisk.is_whiteout(existing):
        _replace_whiteout(fs, dest, uid, gid, mode, make)
    else:
        raise _error(errno.EEXIST)
    # A new object has no lower part: where a lower had the name, a whiteout hid it and a
    # new directory was made opaque.
    return fs.table.node_for(Found(st=os.lstat(dest), upper=True, lowers=()), parent, name)


def _set_owner(path: str, uid: int, gid: int, mode: int) -> None:
    """Gives a new object (made by the root daemon, umask 0) the caller's owner and mode.

    The permission bits were set at creation; the special bits need a chmod, after the chown
    (which clears set-id bits) and because mkdir takes set-group-ID only from the parent.
    """
    if (uid, gid) != (os.geteuid(), os.getegid()):
        os.chown(path, uid, gid, follow_symlinks=False)
    if not stat.S_ISLNK(mode) and mode & SPECIAL_BITS:
        os.chmod(path, stat.S_IMODE(mode))


def _replace_whiteout(fs: UnionFS, dest: str, uid: int, gid: int, mode: int,
                      make: Callable[[str], None]) -> None:
    """Puts a new object where a whiteout stands, in one step; a directory becomes opaque."""
    tmp = fs.temp_path()
    make(tmp)
    _set_owner(tmp, uid, gid, mode)
    if stat.S_ISDIR(mode):
        fs.format.set_opaque(tmp)
        syscalls.renameat2(tmp, dest, syscalls.RENAME_EXCHANGE)
        os.unlink(tmp)  # now the whiteout
    else:
        os.rename(tmp, dest)


async def link(fs: UnionFS, node: Node, parent: Node, name: str) -> Node:
    fs.check_writable()
    fs.check_new_name(name)
    if node.is_dir:
        raise _error(errno.EPERM)
    if fs.resolve(parent, name) is not None:  # (no node for a mere existence check)
        raise _error(errno.EEXIST)
    await copy_up(fs, node)
    await copy_up(fs, parent)
    source = fs.upper_path(node)
    dest = fs.stack.upper_path(join(fs.path(parent), name))
    existing = lstat_or_none(dest)
    if existing is not None and ondisk.is_whiteout(existing):
        tmp = fs.temp_path()
        os.link(source, tmp)
        os.rename(tmp, dest)
    else:
        os.link(source, dest)
    found = fs.resolve(parent, name)
    assert found is not None
    return fs.table.node_for(found, parent, name)


# --- removing ------------------------------------------------------------------------------


async def unlink(fs: UnionFS, parent: Node, name: str) -> None:
    fs.check_writable()
    fs.check_name(name)
    node = fs.child(parent, name)
    if node.is_dir:
        raise _error(errno.EISDIR)
    await _before_dropping_a_link(fs, node)
    needs_whiteout = fs.lower_has(parent, name)
    await copy_up(fs, parent)
    dest = fs.stack.upper_path(join(fs.path(parent), name))
    remaining = 0
    if node.upper:
        remaining = os.lstat(dest).st_nlink - 1
        if needs_whiteout:
            _whiteout_over(fs, dest)
        else:
            os.unlink(dest)
    else:
        fs.format.make_whiteout(dest)
    _forget_name(fs, node, parent, name, remaining)


async def rmdir(fs: UnionFS, parent: Node, name: str) -> None:
    fs.check_writable()
    fs.check_name(name)
    node = fs.child(parent, name)
    if not node.is_dir:
        raise _error(errno.ENOTDIR)
    if merged_names(fs, node):
        raise _error(errno.ENOTEMPTY)
    needs_whiteout = fs.lower_has(parent, name)
    await copy_up(fs, parent)
    dest = fs.stack.upper_path(join(fs.path(parent), name))
    if node.upper:
        _remove_upper_dir(fs, dest, needs_whiteout)
    else:
        fs.format.make_whiteout(dest)
    _forget_name(fs, node, parent, name, 0)


async def _before_dropping_a_link(fs: UnionFS, node: Node) -> None:
    """A lower file with several names loses one: copy it up first, so its other names
    become upper hard links whose link count drops (as kernel overlayfs with index=on)."""
    if not node.upper and stat.S_ISREG(node.kind) and fs.stat_of(node).st_nlink > 1:
        await copy_up(fs, node)


def _whiteout_over(fs: UnionFS, dest: str) -> None:
    """Replaces the non-directory at ``dest`` by a whiteout in one step."""
    tmp = fs.temp_path()
    fs.format.make_whiteout(tmp)
    os.rename(tmp, dest)


def _remove_upper_dir(fs: UnionFS, dest: str, needs_whiteout: bool) -> None:
    """Takes an (apparently empty) upper directory away, leaving a whiteout if needed."""
    tmp = fs.temp_path()
    if needs_whiteout:
        fs.format.make_whiteout(tmp)
        syscalls.renameat2(tmp, dest, syscalls.RENAME_EXCHANGE)
    else:
        os.rename(dest, tmp)
    shutil.rmtree(tmp)  # only whiteouts were left in it


def _forget_name(fs: UnionFS, node: Node, parent: Node, name: str, remaining: int) -> None:
    """Updates the table after ``name`` stopped naming ``node``."""
    if node.parent is parent and node.name == name:
        node.parent = None
    if remaining == 0:
        fs.table.mark_dead(node)


# --- renaming ------------------------------------------------------------------------------


async def rename(fs: UnionFS, old_parent: Node, old_name: str, new_parent: Node,
                 new_name: str, flags: int) -> None:
    fs.check_writable()
    fs.check_name(old_name)
    fs.check_new_name(new_name)
    src = fs.child(old_parent, old_name)
    dst = fs.lookup(new_parent, new_name)
    if flags & pyfuse3.RENAME_EXCHANGE:
        if dst is None:
            raise _error(errno.ENOENT)
        await _exchange(fs, old_parent, old_name, src, new_parent, new_name, dst)
        return
    if dst is not None:
        if flags & pyfuse3.RENAME_NOREPLACE:
            raise _error(errno.EEXIST)
        if dst is src:
            return
        _check_replace(fs, src, dst)
        await _before_dropping_a_link(fs, dst)
    await _prepare_move(fs, src)
    await copy_up(fs, old_parent)
    await copy_up(fs, new_parent)
    src_needs_whiteout = fs.lower_has(old_parent, old_name)
    src_path = fs.stack.upper_path(join(fs.path(old_parent), old_name))
    dst_path = fs.stack.upper_path(join(fs.path(new_parent), new_name))
    dst_st = lstat_or_none(dst_path)
    if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
        _empty_whiteouts(dst_path)
    if src.is_dir and src.lowers and src.lowers[0][1] != join(fs.path(new_parent), new_name):
        # The redirect before the move, as the kernel does: a crash between the two steps
        # leaves the directory with its lower content at one of its names.
        fs.format.set_redirect(src_path, src.lowers[0][1])
    if src.is_dir and dst_st is not None and ondisk.is_whiteout(dst_st):
        # A directory cannot be renamed over the whiteout (a non-directory): swap them; the
        # whiteout is then at the old name, where it is kept if a lower has that name.
        syscalls.renameat2(src_path, dst_path, syscalls.RENAME_EXCHANGE)
        if not src_needs_whiteout:
            os.unlink(src_path)
    elif src_needs_whiteout:
        _move_leaving_whiteout(fs, src_path, dst_path)
    else:
        os.rename(src_path, dst_path)
    src.parent, src.name = new_parent, new_name
    if dst is not None:
        remaining = dst_st.st_nlink - 1 if dst_st is not None and not dst.is_dir else 0
        _forget_name(fs, dst, new_parent, new_name, remaining)
    if src.is_dir:
        _mark_moved_dir(fs, src, dst_path, new_parent, new_name)


def _check_replace(fs: UnionFS, src: Node, dst: Node) -> None:
    if src.is_dir and not dst.is_dir:
        raise _error(errno.ENOTDIR)
    if dst.is_dir and not src.is_dir:
        raise _error(errno.EISDIR)
    if dst.is_dir and merged_names(fs, dst):
        raise _error(errno.ENOTEMPTY)


async def _prepare_move(fs: UnionFS, node: Node) -> None:
    """Copies up what a move needs: the object, or for a merged directory per redirect_dir."""
    if node.is_dir and node.lowers:
        mode = fs.config.redirect_dir
        if mode in ("off", "follow", "nofollow"):
            raise _error(errno.EXDEV)
        if mode == "copy":
            await _copy_tree_up(fs, node)
            return
    await copy_up(fs, node)


async def _copy_tree_up(fs: UnionFS, node: Node) -> None:
    """Copies a whole merged directory into the upper and makes it opaque (no redirect)."""
    await copy_up(fs, node)
    for name in merged_names(fs, node):
        child = fs.child(node, name)
        if child.is_dir:
            await _copy_tree_up(fs, child)
        else:
            await copy_up(fs, child)
    fs.format.set_opaque(fs.upper_path(node))
    node.lowers = ()


def _mark_moved_dir(fs: UnionFS, node: Node, real: str, parent: Node, name: str) -> None:
    """A moved directory keeps its lower content through a redirect, or hides what is below."""
    if node.lowers:
        origin = node.lowers[0][1]
        fs.format.set_redirect(real, None if origin == fs.path(node) else origin)
        fs.redirects_changed()
    elif fs.lower_has(parent, name):
        fs.format.set_opaque(real)


def _move_leaving_whiteout(fs: UnionFS, src: str, dst: str) -> None:
    try:
        syscalls.renameat2(src, dst, syscalls.RENAME_WHITEOUT)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EPERM, errno.ENOTSUP):
            raise
        os.rename(src, dst)
        fs.format.make_whiteout(src)


def _empty_whiteouts(path: str) -> None:
    """Clears the leftover whiteouts of an empty-looking upper directory about to be replaced."""
    with os.scandir(path) as entries:
        for entry in entries:
            os.unlink(entry.path)


async def _exchange(fs: UnionFS, a_parent: Node, a_name: str, a: Node,
                    b_parent: Node, b_name: str, b: Node) -> None:
    await _prepare_move(fs, a)
    await _prepare_move(fs, b)
    a_path = fs.upper_path(a)
    b_path = fs.upper_path(b)
    syscalls.renameat2(a_path, b_path, syscalls.RENAME_EXCHANGE)
    a.parent, a.name, b.parent, b.name = b_parent, b_name, a_parent, a_name
    for node, real, parent, name in ((a, b_path, b_parent, b_name), (b, a_path, a_parent, a_name)):
        if node.is_dir:
            _mark_moved_dir(fs, node, real, parent, name)
