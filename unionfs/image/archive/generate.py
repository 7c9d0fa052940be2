"""Generating a layer tar from a trusted directory (``import`` of a rootfs, ``commit`` of an upper).

Output is reproducible: entries sorted by name, PAX format with nanosecond mtimes, numeric
owners, xattrs as ``SCHILY.xattr.*`` (overlay-private ones dropped), hard links as links to the
first name seen. Owners, modes and device nodes recorded in ``user.containers.override_stat``
(layers and uppers an ordinary user wrote) are written as what they record. Kernel-overlay
whiteouts (0/0 character devices) become ``.wh.NAME`` entries and opaque directories a
``.wh..wh..opq`` entry, so an overlay upper turns into an OCI layer.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from tarfile import BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE
from typing import BinaryIO

from unionfs.fs import override
from unionfs.fs.ondisk import OCI_OPAQUE_MARKER as OPAQUE_MARKER
from unionfs.fs.ondisk import WHITEOUT_PREFIX, is_private_xattr, is_whiteout, read_dir_markers
from unionfs.image.archive.tarwriter import Entry, EntryWriter, Sink, TarWriter


def _xattr_names(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def _xattrs(path: str, names: list[str]) -> dict[bytes, bytes]:
    found = {}
    for name in sorted(names):
        if is_private_xattr(name) or name in override.NAMES:
            continue
        try:
            found[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found


Skip = Callable[[str, os.stat_result], bool]
Mirror = Callable[[Entry, "BinaryIO | None"], None]
Replacement = Callable[[str, str], "str | None"]
IdTranslation = Callable[[int, int], tuple[int, int]]


def write_layer_tar(root: str, out: Sink, *, convert_whiteouts: bool = False,
                    skip: Skip | None = None, replace_dir: Replacement | None = None,
                    real_owner: IdTranslation | None = None, mirror: Mirror | None = None) -> int:
    """Writes the tree under ``root`` as a layer tar to ``out``; returns the entry count
    (``write_layer_entries``)."""
    with TarWriter(out) as writer:
        return write_layer_entries(root, writer, convert_whiteouts=convert_whiteouts, skip=skip,
                                   replace_dir=replace_dir, real_owner=real_owner,
                                   mirror=mirror)


def write_layer_entries(root: str, writer: EntryWriter, *, convert_whiteouts: bool = False,
                        skip: Skip | None = None, replace_dir: Replacement | None = None,
                        real_owner: IdTranslation | None = None,
                        mirror: Mirror | None = None) -> int:
    """Hands the tree under ``root`` to ``writer`` as layer entries (a ``TarWriter``, or an
    ``estargz.EstargzWriter``); returns the entry count.

    ``skip(rel, st)`` leaves an entry (and what is below it) out. ``replace_dir(rel, path)``
    may name another directory whose whole contents stand for this one (a redirected overlay
    directory, read through the merged view), written as an opaque directory.
    ``real_owner(uid, gid)`` gives the owner to write for an object that records none (an
    ordinary user's container: the user's own files are its root's).
    ``mirror(entry, data)`` is handed every entry as it is written, with a regular file's
    content rewound (``commit`` unpacks the layer from these instead of from the tar).
    """
    count = 0
    links: dict[tuple[int, int], bytes] = {}
    tar = writer if mirror is None else _Mirrored(writer, mirror)
    for rel, path, st, opaque in _walk(root, skip, replace_dir):
        count += _add(tar, os.fsencode(rel), path, st, links, convert_whiteouts, opaque,
                      real_owner)
    return count


class _Mirrored:
    """A TarWriter whose entries also go to a mirror, each file's data read again from its
    start (from the page cache: it was just read)."""

    def __init__(self, writer: EntryWriter, mirror: Mirror) -> None:
        self._writer, self._mirror = writer, mirror

    def add(self, entry: Entry, data: BinaryIO | None = None) -> None:
        self._writer.add(entry, data)
        if data is not None:
            data.seek(0)
        self._mirror(entry, data)


def _walk(root: str, skip: Skip | None, replace_dir: Replacement | None):
    """(relative name, path, lstat, forced opaque) for everything under ``root``:
    depth-first, sorted."""
    stack = [(root, "", iter(sorted(os.listdir(root))))]
    while stack:
        directory, rel_dir, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        rel = f"{rel_dir}/{name}" if rel_dir else name
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if skip is not None and skip(rel, st):
            continue
        replacement = replace_dir(rel, path) if replace_dir and stat.S_ISDIR(st.st_mode) \
            else None
        if replacement is not None:
            path, st = replacement, os.lstat(replacement)
        yield rel, path, st, replacement is not None
        if stat.S_ISDIR(st.st_mode):
            stack.append((path, rel, iter(sorted(os.listdir(path)))))


def _add(tar: EntryWriter, rel: bytes, path: str, st: os.stat_result,
         links: dict[tuple[int, int], bytes], convert_whiteouts: bool, opaque: bool,
         real_owner: IdTranslation | None) -> int:
    mode = st.st_mode
    if convert_whiteouts and is_whiteout(st):
        parent, _, name = rel.rpartition(b"/")
        marker = WHITEOUT_PREFIX.encode() + name
        tar.add(Entry(parent + b"/" + marker if parent else marker, REGTYPE,
                      mtime_ns=st.st_mtime_ns // 10**9 * 10**9))
        return 1
    rdev = st.st_rdev
    names = _xattr_names(path)
    recorded = None
    if not stat.S_ISLNK(mode) and any(name in override.NAMES for name in names):
        recorded = override.read(path)
    if recorded is not None:  # written by an ordinary user: the true owner, mode and type
        mode, uid, gid, rdev = override.effective(st, recorded)
    elif real_owner is not None:
        uid, gid = real_owner(st.st_uid, st.st_gid)
    else:
        uid, gid = st.st_uid, st.st_gid
    entry = Entry(rel, REGTYPE, mode=stat.S_IMODE(mode), uid=uid, gid=gid,
                  mtime_ns=st.st_mtime_ns, xattrs=_xattrs(path, names))
    if stat.S_ISDIR(mode):
        entry.type, entry.name = DIRTYPE, rel + b"/"
        tar.add(entry)
        if opaque or (convert_whiteouts and
                      read_dir_markers(path, follow_redirects=False).opaque):
            tar.add(Entry(rel + b"/" + OPAQUE_MARKER.encode(), REGTYPE,
                          mtime_ns=st.st_mtime_ns // 10**9 * 10**9))
            return 2
    elif stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            entry.type, entry.linkname = LNKTYPE, links[key]
            tar.add(entry)
        else:
            if st.st_nlink > 1:
                links[key] = rel
            entry.size = st.st_size
            with open(path, "rb") as f:
                tar.add(entry, f)
    elif stat.S_ISLNK(mode):
        entry.type, entry.linkname = SYMTYPE, os.fsencode(os.readlink(path))
        tar.add(entry)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.type = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
        entry.devmajor, entry.devminor = os.major(rdev), os.minor(rdev)
        tar.add(entry)
    elif stat.S_ISFIFO(mode):
        entry.type = FIFOTYPE
        tar.add(entry)
    else:
        return 0  # sockets are not archived
    return 1
