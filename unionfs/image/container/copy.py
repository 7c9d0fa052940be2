"""Copying between a container's rootfs and the host (``pyunion cp``), as a tar stream.

The container's files are reached through its rootfs mount (mounted for the copy if the
container is not running). A path inside the container is resolved as the container would:
a symbolic link is followed relative to the rootfs, never out of it. Writing into the
container goes through the same checks: a member whose path, once resolved, would leave the
destination (through ``..`` or a link) is refused before anything is written.

Modes are always kept. Owners follow docker: files copied into a container become root's,
files copied out become the caller's, unless ``archive`` (``cp -a``) keeps the source's.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from unionfs.image.errors import ImageError, NotFound

MAX_LINKS = 40


def resolve_in_root(root: str, path: str, *, follow_last: bool = True) -> str:
    """The host path of ``path`` in the tree at ``root``, symbolic links followed as if
    ``root`` were ``/``, as a chroot would (``..`` after a link goes up from its target, and
    stops at ``root``). The last component need not exist. ``cp`` and ``build`` (COPY, WORKDIR,
    USER's /etc files) use it."""
    def link_target(components: list[str]) -> str | None:
        candidate = os.path.join(root, *components)
        return os.readlink(candidate) if os.path.islink(candidate) else None

    return os.path.join(root, *follow_links(path, link_target, follow_last=follow_last))


def follow_links(path: str, link_target: Callable[[list[str]], str | None], *,
                 follow_last: bool = True) -> list[str]:
    """The components of ``path`` with symbolic links followed as a chroot would (see
    ``resolve_in_root``), wherever the tree is: ``link_target(components)`` is the target of
    the link those components name, None if they name anything else or nothing. A tree on
    disk (``resolve_in_root``) and an image's TOCs (``early``) both use it. ImageError after
    ``MAX_LINKS`` links."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        if name == ".":
            continue
        target = link_target([*resolved, name]) if follow_last or parts else None
        if target is not None:
            links += 1
            if links > MAX_LINKS:
                raise ImageError(f"too many levels of symbolic links in {path}")
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(name)
    return resolved


def archive(source: str, name: str, out: BinaryIO, *, contents_only: bool = False,
            owner: tuple[int, int] | None = None) -> None:
    """Writes a tar stream of ``source`` (a file or a tree, links not followed below it) to
    ``out``, its top named ``name``; only what is in a directory if ``contents_only``.
    ``owner`` replaces every entry's uid and gid."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        def add(path: str, arcname: str) -> None:
            info = tar.gettarinfo(path, arcname)
            if owner is not None:
                info.uid, info.gid = owner
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if info.isdir():
                for child in sorted(os.listdir(path)):
                    add(os.path.join(path, child), posixpath.join(arcname, child))

        if contents_only and os.path.isdir(source):
            for child in sorted(os.listdir(source)):
                add(os.path.join(source, child), child)
        else:
            add(source, name)


def extract(stream: BinaryIO, destination: str, *, owner: tuple[int, int] | None = None,
            keep_owners: bool = True) -> None:
    """Unpacks a tar stream into the existing directory ``destination``: every member's path
    must stay in it once resolved (links already there or made by the stream included), a
    hard link's target too. ``owner`` replaces the members' owners; else they are kept where
    ``keep_owners`` (and we may: as root)."""
    top = os.path.realpath(destination)
    may_chown = os.geteuid() == 0
    directories: list[tarfile.TarInfo] = []
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except tarfile.TarError as e:
        raise ImageError(f"not a tar archive: {e}") from None
    with tar:
        try:
            for member in tar:
                _check_member(top, member)
                if owner is not None:
                    member.uid, member.gid = owner
                elif not keep_owners or not may_chown:
                    member.uid, member.gid = os.geteuid(), os.getegid()
                _replace_if_kind_differs(os.path.join(top, member.name), member)
                tar.extract(member, top, set_attrs=not member.isdir(), numeric_owner=True)
                if member.isdir():
                    directories.append(member)
        except tarfile.TarError as e:
            raise ImageError(f"bad tar archive: {e}") from None
        for member in reversed(directories):  # after their contents, as tar's extractall
            path = os.path.join(top, member.name)
            with contextlib.suppress(OSError):
                if may_chown:
                    os.lchown(path, member.uid, member.gid)
                os.chmod(path, member.mode)
                os.utime(path, (member.mtime, member.mtime))


def _check_member(top: str, member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise ImageError(f"refused: the archive's member {name!r} leaves the destination")
    where = os.path.realpath(os.path.join(top, name))
    if os.path.commonpath([top, where]) != top:
        raise ImageError(f"refused: the archive's member {name!r} leads out of the "
                         "destination through a symbolic link")
    if member.islnk():
        target = os.path.realpath(os.path.join(top, member.linkname))
        if member.linkname.startswith("/") or os.path.commonpath([top, target]) != top:
            raise ImageError(f"refused: the hard link {name!r} points out of the destination")
    if member.isdev() and os.geteuid() != 0:
        raise ImageError(f"cannot make the device {name!r} as an ordinary user")


def _replace_if_kind_differs(path: str, member: tarfile.TarInfo) -> None:
    """A file where the archive has a directory or the other way round goes first (as tar
    --recursive-unlink does for that entry); same kinds are overwritten in place."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode) and not member.isdir():
        raise ImageError(f"cannot overwrite the directory {member.name} with a non-directory")
    if not stat.S_ISDIR(st.st_mode) and member.isdir():
        os.unlink(path)
    elif member.issym() or member.islnk():
        os.unlink(path)


@contextlib.contextmanager
def piped(write) -> Iterator[BinaryIO]:
    """A readable stream of what ``write(stream)`` writes, in a thread."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def producer() -> None:
        with open(write_fd, "wb") as out:
            try:
                write(out)
            except BaseException as e:  # noqa: BLE001 - reported by the consumer
                failure.append(e)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    with open(read_fd, "rb") as stream:
        try:
            yield stream
            stream.read()  # what the consumer left, so that the producer ends
        finally:
            thread.join()
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise failure[0]


def plan(source: str, source_text: str, destination: str, destination_text: str,
         dest_exists_as_dir: bool, dest_exists: bool) -> tuple[str, str, bool]:
    """docker cp's rules: (the directory to unpack into, the name the source takes there,
    whether only a directory's contents go)."""
    if not os.path.lexists(source):
        raise NotFound(f"no such file or directory: {source_text}")
    source_is_dir = os.path.isdir(source) and not os.path.islink(source)
    if dest_exists_as_dir:
        contents_only = source_is_dir and (source_text.endswith("/.")
                                           or source_text == ".")
        return destination, posixpath.basename(source_text.rstrip("/")) or "/", contents_only
    if dest_exists:
        if source_is_dir:
            raise ImageError(f"cannot copy a directory to the file {destination_text}")
        return os.path.dirname(destination), os.path.basename(destination), False
    if destination_text.endswith("/") and not source_is_dir:
        raise NotFound(f"no such directory: {destination_text}")
    parent = os.path.dirname(destination)
    if not os.path.isdir(parent):
        raise NotFound(f"no such directory: {posixpath.dirname(destination_text) or '/'}")
    return parent, os.path.basename(destination), False
