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
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from unionfs.fs import override
from unionfs.fs.ondisk import OCI_OPAQUE_MARKER as OPAQUE_MARKER
from unionfs.fs.ondisk import WHITEOUT_PREFIX, is_private_xattr, is_whiteout, read_dir_markers


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in sorted(names):
        if is_private_xattr(name) or name in override.NAMES:
            continue
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found


def _info(name: str, st: os.stat_result, path: str, owner: tuple[int, int, int]
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid = owner
    info.uname = info.gname = ""
    info.mtime = st.st_mtime_ns // 10**9
    pax = {"mtime": _ns_text(st.st_mtime_ns)}
    for key, value in _xattrs(path).items():
        pax["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info


def _ns_text(ns: int) -> str:
    seconds, fraction = divmod(ns, 10**9)
    return f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".") if fraction else str(seconds)


Skip = Callable[[str, os.stat_result], bool]
Replacement = Callable[[str, str], "str | None"]


def write_layer_tar(root: str, out: BinaryIO, *, convert_whiteouts: bool = False,
                    skip: Skip | None = None, replace_dir: Replacement | None = None) -> int:
    """Writes the tree under ``root`` as a layer tar to ``out``; returns the entry count.

    ``skip(rel, st)`` leaves an entry (and what is below it) out. ``replace_dir(rel, path)``
    may name another directory whose whole contents stand for this one (a redirected overlay
    directory, read through the merged view), written as an opaque directory.
    """
    count = 0
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for rel, path, st, opaque in _walk(root, skip, replace_dir):
            count += _add(tar, rel, path, st, links, convert_whiteouts, opaque)
    return count


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


def _add(tar: tarfile.TarFile, rel: str, path: str, st: os.stat_result,
         links: dict[tuple[int, int], str], convert_whiteouts: bool, opaque: bool) -> int:
    mode = st.st_mode
    if convert_whiteouts and is_whiteout(st):
        parent, _, name = rel.rpartition("/")
        info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent
                               else WHITEOUT_PREFIX + name)
        info.mtime = st.st_mtime_ns // 10**9
        tar.addfile(info)
        return 1
    rdev = st.st_rdev
    recorded = None if stat.S_ISLNK(mode) or is_whiteout(st) else override.read(path)
    if recorded is not None:  # written by an ordinary user: the true owner, mode and type
        mode, uid, gid, rdev = override.effective(st, recorded)
    else:
        uid, gid = st.st_uid, st.st_gid
    info = _info(rel, st, path, (stat.S_IMODE(mode), uid, gid))
    added = 1
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        if opaque or (convert_whiteouts and
                      read_dir_markers(path, follow_redirects=False).opaque):
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mtime = info.mtime
            tar.addfile(marker)
            added += 1
    elif stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type = tarfile.LNKTYPE
            info.linkname = links[key]
            tar.addfile(info)
        else:
            if st.st_nlink > 1:
                links[key] = rel
            info.size = st.st_size
            with open(path, "rb") as f:
                tar.addfile(info, f)
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        tar.addfile(info)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(rdev), os.minor(rdev)
        tar.addfile(info)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    else:
        return 0  # sockets are not archived
    return added
