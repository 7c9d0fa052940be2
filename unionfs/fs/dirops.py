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

from unionfs.fs import ondisk, override, syscalls
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
    parent_mode, _, parent_gid, _ = fs.visible_attrs(parent, fs.stat_of(parent))
    if parent_mode & stat.S_ISGID:
        return uid, parent_gid, True
    return uid, gid, False


async def create_object(fs: UnionFS, parent: Node, name: str, ctx: pyfuse3.RequestContext,
                        mode: int, make: Callable[[str], None], rdev: int = 0) -> Node:
    """Makes a new object at ``name`` with ``make(real_path)`` and gives it the caller's owner
    (``mode`` and ``rdev`` are what users see of it: see ``override_stat``)."""
    fs.check_writable()
    fs.check_new_name(name)
    if fs.resolve(parent, name) is not None:  # (no node for a mere existence check)
        raise _error(errno.EEXIST)
    await copy_up(fs, parent)
    dest = fs.stack.upper_path(join(fs.path(parent), name))
    uid, gid, setgid_dir = owner_for(fs, parent, ctx.uid, ctx.gid)
    if setgid_dir and stat.S_ISDIR(mode):
        mode |= stat.S_ISGID
    def make_owned(path: str) -> None:
        make(path)
        if fs.config.override_stat:
            _record_owner(fs, path, uid, gid, mode, rdev)
        else:
            _set_owner(path, uid, gid, mode)

    existing = lstat_or_none(dest)
    if existing is None:
        make_owned(dest)
    elif ondisk.is_whiteout(existing):
        _replace_whiteout(fs, dest, mode, make_owned)
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


def _record_owner(fs: UnionFS, path: str, uid: int, gid: int, mode: int, rdev: int) -> None:
    """``_set_owner`` with ``override_stat``: the owner and mode go to the xattr."""
    if stat.S_ISLNK(mode):
        return
    os.chmod(path, override.stored_mode(mode))
    override.write(path, fs.config.uid_mapping.stored(uid), fs.config.gid_mapping.stored(gid),
                   mode, rdev)


def _replace_whiteout(fs: UnionFS, dest: str, mode: int,
                      make_owned: Callable[[str], None]) -> None:
    """Puts a new object where a whiteout stands, in one step; a directory becomes opaque."""
    tmp = fs.temp_path()
    make_owned(tmp)
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
    kept = -1
    if node.upper:
        remaining = os.lstat(dest).st_nlink - 1
        kept = fs.keep_while_known(node, dest)
        try:
            if needs_whiteout:
                _whiteout_over(fs, dest)
            else:
                os.unlink(dest)
        except BaseException:
            _close(kept)
            raise
    else:
        fs.format.make_whiteout(dest)
    _forget_name(fs, node, parent, name, remaining, kept)


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


def _forget_name(fs: UnionFS, node: Node, parent: Node, name: str, remaining: int,
                 kept: int = -1) -> None:
    """Updates the table after ``name`` stopped naming ``node``; ``kept`` is an fd of its
    upper object from before (``keep_while_known``), kept if no name now leads to it."""
    if node.parent is parent and node.name == name:
        node.parent = None
    if node.parent is None and node.kept_fd < 0:
        node.kept_fd = kept
    else:
        _close(kept)
    if remaining == 0:
        fs.table.mark_dead(node)


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


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
    same_dir = old_parent is new_parent
    await _prepare_move(fs, src, same_dir=same_dir)
    if dst is not None and dst.is_dir and not dst.lowers and merged_names(fs, dst):
        raise _error(errno.ENOTEMPTY)  # (what the upper's own rename would answer)
    await copy_up(fs, old_parent)
    await copy_up(fs, new_parent)
    src_needs_whiteout = fs.lower_has(old_parent, old_name)
    src_path = fs.stack.upper_path(join(fs.path(old_parent), old_name))
    dst_path = fs.stack.upper_path(join(fs.path(new_parent), new_name))
    dst_st = lstat_or_none(dst_path)
    if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
        _empty_whiteouts(dst_path)
    if src.is_dir:
        _redirect_before_move(fs, src, src_path, old_name, same_dir=same_dir)
    kept = fs.keep_while_known(dst, dst_path) if dst is not None else -1
    try:
        _move(fs, src, src_path, dst_path, dst_st, src_needs_whiteout)
    except BaseException:
        _close(kept)
        raise
    src.parent, src.name = new_parent, new_name
    if dst is not None:
        remaining = dst_st.st_nlink - 1 if dst_st is not None and not dst.is_dir else 0
        _forget_name(fs, dst, new_parent, new_name, remaining, kept)
    if src.is_dir:
        _opaque_after_move(fs, src, dst_path)
        if not same_dir:
            fs.invalidate_listing(src)  # its ".." entry names another directory now


def _move(fs: UnionFS, src: Node, src_path: str, dst_path: str,
          dst_st: os.stat_result | None, src_needs_whiteout: bool) -> None:
    """The rename in the upper, leaving a whiteout at the old name where a lower has it."""
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


def _check_replace(fs: UnionFS, src: Node, dst: Node) -> None:
    """What is checked before anything moves. As on the kernel, a pure upper directory's
    emptiness is left to the rename itself, after the source's checks (see rename)."""
    if src.is_dir and not dst.is_dir:
        raise _error(errno.ENOTDIR)
    if dst.is_dir and not src.is_dir:
        raise _error(errno.EISDIR)
    if dst.is_dir and dst.lowers and merged_names(fs, dst):
        raise _error(errno.ENOTEMPTY)


async def _prepare_move(fs: UnionFS, node: Node, *, same_dir: bool) -> None:
    """Copies up what a move needs: the object, or for a merged directory per redirect_dir.

    A merged directory moved to another parent needs an absolute redirect; where that would
    be longer than the kernel's ``redirect_max`` the kernel refuses with EXDEV (``mv`` then
    copies), and so do we, so that every upper we write is one the kernel could have written.
    """
    if node.is_dir and node.lowers:
        mode = fs.config.redirect_dir
        if mode in ("off", "follow", "nofollow"):
            raise _error(errno.EXDEV)
        if mode == "copy":
            await _copy_tree_up(fs, node)
            return
        origin = os.fsencode("/" + node.lowers[0][1])
        if not same_dir and len(origin) > ondisk.REDIRECT_MAX:
            raise _error(errno.EXDEV)
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


def _redirect_before_move(fs: UnionFS, node: Node, real: str, old_name: str, *,
                          same_dir: bool) -> None:
    """A directory with lower content keeps it after a move through a redirect, written
    before the move as the kernel does: a crash between the two steps leaves the directory
    whole under one of its names (the redirect is right at either).

    The redirect is the kernel's: the old name for a move within the parent, the lower path
    from the root for a move elsewhere; one already there that still applies is kept.
    """
    if not node.lowers:
        return
    current = ondisk.read_redirect(real)
    if current is not None and (same_dir or current.startswith("/")):
        return
    fs.format.set_redirect(real, old_name if same_dir else "/" + node.lowers[0][1])
    fs.redirects_changed()


def _opaque_after_move(fs: UnionFS, node: Node, real: str) -> None:
    """A moved directory without lower content hides what the lowers have at its new name."""
    if not node.lowers and node.parent is not None and fs.lower_has(node.parent, node.name):
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
    same_dir = a_parent is b_parent
    await _prepare_move(fs, a, same_dir=same_dir)
    await _prepare_move(fs, b, same_dir=same_dir)
    a_path = fs.upper_path(a)
    b_path = fs.upper_path(b)
    for node, real, old_name in ((a, a_path, a_name), (b, b_path, b_name)):
        if node.is_dir:
            _redirect_before_move(fs, node, real, old_name, same_dir=same_dir)
    syscalls.renameat2(a_path, b_path, syscalls.RENAME_EXCHANGE)
    a.parent, a.name, b.parent, b.name = b_parent, b_name, a_parent, a_name
    for node, real in ((a, b_path), (b, a_path)):
        if node.is_dir:
            _opaque_after_move(fs, node, real)
            if not same_dir:
                fs.invalidate_listing(node)  # its ".." entry names another directory now
