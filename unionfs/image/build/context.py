"""What COPY and ADD copy: their sources (in the context, minus ignored paths, or in another
stage's or image's rootfs), where each lands, the cache digest of all that, and the copy itself
into a step's mounted rootfs.

Paths inside a rootfs are resolved as a chroot would (``resolve_in_root``): a symlink in the
image is followed within the rootfs, never out to the host.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass

from unionfs.image.build.ignore import IgnoreRules
from unionfs.image.container.copy import resolve_in_root  # cp's: one way to resolve in a rootfs
from unionfs.image.errors import ImageError

_WILDCARDS = set("*?[")


@dataclass
class Entry:
    """One path to copy: ``source`` on the host, ``target`` inside the rootfs (absolute);
    ``top`` when it is the source named by the instruction itself (a directory there is the
    destination, made with default attributes, not copied)."""

    source: str
    target: str
    top: bool = False


def _has_wildcard(text: str) -> bool:
    return bool(_WILDCARDS & set(text))


def _match_sources(root: str, pattern: str, rules: IgnoreRules | None) -> list[str]:
    """The paths (relative to ``root``) a source names, wildcards expanded element by
    element; ignored paths left out."""
    clean = posixpath.normpath("/" + pattern).lstrip("/")
    if not _has_wildcard(clean):
        return [clean] if os.path.lexists(os.path.join(root, clean)) and not (
            rules and clean and rules.ignored(clean) and not (
                os.path.isdir(os.path.join(root, clean)) and rules.may_include_below(clean))) \
            else []
    found = [""]
    for element in clean.split("/"):
        following = []
        for base in found:
            directory = os.path.join(root, base)
            if not _has_wildcard(element):
                if os.path.lexists(os.path.join(directory, element)):
                    following.append(posixpath.join(base, element))
                continue
            if not os.path.isdir(directory):
                continue
            following += [posixpath.join(base, name) for name in sorted(os.listdir(directory))
                          if fnmatch.fnmatchcase(name, element)]
        found = following
    return [p for p in found if not (rules and rules.ignored(p))]


def collect(root: str, sources: list[str], dest: str, *, rules: IgnoreRules | None,
            dest_is_dir_in_image: bool, what: str) -> list[Entry]:
    """The entries of a COPY/ADD of ``sources`` (relative to ``root``) to ``dest`` (absolute,
    in the rootfs)."""
    matched: list[str] = []
    for pattern in sources:
        paths = _match_sources(root, pattern, rules)
        if not paths:
            raise ImageError(f"{what}: file not found in build context or excluded by "
                             f".dockerignore: stat {pattern}: file does not exist")
        matched += paths
    into_dir = dest.endswith("/") or len(matched) > 1 or dest_is_dir_in_image
    entries: list[Entry] = []
    for rel in matched:
        full = os.path.join(root, rel)
        if os.path.isdir(full) and not os.path.islink(full):
            entries.append(Entry(full, dest, top=True))
            entries += _walk(root, rel, dest, rules)
        else:
            target = posixpath.join(dest, posixpath.basename(rel) or ".") if into_dir else dest
            entries.append(Entry(full, target))
    return entries


def _walk(root: str, rel: str, dest: str, rules: IgnoreRules | None) -> list[Entry]:
    entries: list[Entry] = []
    base = os.path.join(root, rel)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        inner = os.path.relpath(dirpath, base)
        kept_dirs = []
        for name in dirnames:
            sub = posixpath.normpath(posixpath.join(rel, inner, name))
            if rules and rules.ignored(sub):
                if rules.may_include_below(sub):
                    kept_dirs.append(name)  # walked for re-included paths, not copied itself
                continue
            kept_dirs.append(name)
            entries.append(Entry(os.path.join(dirpath, name),
                                 posixpath.normpath(posixpath.join(dest, inner, name))))
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            sub = posixpath.normpath(posixpath.join(rel, inner, name))
            if rules and rules.ignored(sub):
                continue
            entries.append(Entry(os.path.join(dirpath, name),
                                 posixpath.normpath(posixpath.join(dest, inner, name))))
    return entries


def digest(entries: list[Entry], chmod: int | None) -> str:
    """The cache digest of a copy: every target's name, type, mode, size, content and link
    target (owners are the instruction's --chown, part of its text)."""
    h = hashlib.sha256()
    for entry in entries:
        st = os.lstat(entry.source)
        mode = st.st_mode if chmod is None else (st.st_mode & ~0o7777) | chmod
        h.update(f"{entry.target}\0{entry.top}\0{mode:o}\0{st.st_size}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(entry.source).encode() + b"\0")
        elif stat.S_ISREG(st.st_mode):
            with open(entry.source, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        h.update(b"\n")
    return h.hexdigest()


def make_parents(root: str, path: str, owner: tuple[int, int]) -> list[str]:
    """Creates the missing directories of ``path`` (inside the rootfs), 0755, ``owner``;
    returns them (relative to the rootfs)."""
    made = []
    current = ""
    for name in [p for p in path.split("/") if p]:
        current = posixpath.join(current, name)
        host = resolve_in_root(root, "/" + current)
        if os.path.isdir(host):
            continue
        if os.path.lexists(host):
            raise ImageError(f"cannot create directory /{current}: a file is in the way")
        os.mkdir(host, 0o755)
        os.chmod(host, 0o755)
        os.lchown(host, *owner)
        made.append(os.path.relpath(host, root))
    return made


def is_archive(path: str) -> bool:
    """Whether ADD extracts this local file: a tar, plain or compressed (gzip, bzip2, xz)."""
    if not os.path.isfile(path):
        return False
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def layer_of_copy(root: str, entries: list[Entry], owner: tuple[int, int], chmod: int | None,
                  also_dirs: list[tuple[str, tuple[int, int]]], out, *,
                  archives: tuple[str, ...] | list[str] = (), dest: str = "/") -> int:
    """The layer a copy of ``entries`` makes, written as a tar to ``out`` directly from the
    sources (the files are not written twice: into a mount, then from its upper): only the new
    entries and the directories the copy creates (0755, ``owner``); a directory the image has
    keeps its own attributes (the layer names it only if the copy replaces them). ``root`` is
    the mounted rootfs, read to resolve paths and see what exists. ``also_dirs``: more
    directories to create if missing (the WORKDIR), with their owners. ``archives``: ADD's
    local archives, their members (owners, modes and times as recorded) under ``dest``.
    Returns the count of entries written."""
    import time

    from unionfs.image.archive.tarwriter import Entry as TarEntry
    from unionfs.image.archive.tarwriter import TarWriter

    now = time.time_ns()
    planned: dict[str, tuple[TarEntry, str | None]] = {}
    written: set[str] = set()

    def in_root(path: str) -> str:
        """A directory's path inside the rootfs, symlinks followed (within it)."""
        return os.path.relpath(resolve_in_root(root, path), root)

    def missing_dirs(rel: str, dir_owner: tuple[int, int]) -> list[TarEntry]:
        made = []
        current = ""
        for name in [p for p in rel.split("/") if p and p != "."]:
            current = posixpath.join(current, name)
            if current in planned or current in written or os.path.isdir(
                    os.path.join(root, current)):
                continue
            if os.path.lexists(os.path.join(root, current)):
                raise ImageError(f"cannot create directory /{current}: a file is in the way")
            made.append(TarEntry((current + "/").encode(), tarfile.DIRTYPE, mode=0o755,
                                 uid=dir_owner[0], gid=dir_owner[1], mtime_ns=now))
            written.add(current)
        return made

    def plan_dirs(rel: str, dir_owner: tuple[int, int]) -> None:
        for made in missing_dirs(rel, dir_owner):
            name = made.name.decode().rstrip("/")
            written.discard(name)
            planned[name] = (made, None)

    for entry in entries:
        parent = in_root(posixpath.dirname(entry.target.rstrip("/")) or "/")
        plan_dirs(parent, owner)
        if entry.top:
            plan_dirs(in_root(entry.target), owner)
            continue
        rel = posixpath.join(parent, posixpath.basename(entry.target.rstrip("/"))) \
            if parent != "." else posixpath.basename(entry.target.rstrip("/"))
        st = os.lstat(entry.source)
        mode = (st.st_mode & 0o7777) if chmod is None else chmod
        made = TarEntry(rel.encode(), tarfile.REGTYPE, mode=mode, uid=owner[0], gid=owner[1],
                        mtime_ns=st.st_mtime_ns)
        source: str | None = None
        if stat.S_ISDIR(st.st_mode):
            made.type, made.name = tarfile.DIRTYPE, (rel + "/").encode()
        elif stat.S_ISLNK(st.st_mode):
            made.type, made.linkname = tarfile.SYMTYPE, os.fsencode(os.readlink(entry.source))
            made.mode = 0o777
        elif stat.S_ISREG(st.st_mode):
            made.size, source = st.st_size, entry.source
        elif stat.S_ISFIFO(st.st_mode):
            made.type = tarfile.FIFOTYPE
        else:
            continue  # devices and sockets are not copied
        planned.pop(rel, None)  # a later source for the same target wins, in its order
        planned[rel] = (made, source)
    for path, dir_owner in also_dirs:
        plan_dirs(in_root(path), dir_owner)
    count = len(planned)
    with TarWriter(out) as tar:
        for made, source in planned.values():
            if source is None:
                tar.add(made)
            else:
                with open(source, "rb") as f:
                    tar.add(made, f)
        written.update(planned)
        for archive in archives:
            count += _archive_entries(tar, archive, in_root(dest), missing_dirs, now)
    return count


def _archive_entries(tar, archive: str, base: str, missing_dirs, now: int) -> int:
    """ADD of a local archive: its members under ``base`` (a path inside the rootfs, ``.``
    for its root), as recorded; names are cleaned, so none leaves ``base``."""
    from unionfs.image.archive.tarwriter import Entry as TarEntry

    def inside(name: str) -> str:
        clean = posixpath.normpath("/" + name).lstrip("/")
        return posixpath.normpath(posixpath.join(base, clean)) if clean else ""

    count = 0
    for made in missing_dirs(base, (0, 0)):
        tar.add(made)
        count += 1
    with tarfile.open(archive) as source:
        for member in source:
            rel = inside(member.name)
            if not rel or rel == ".":
                continue
            for made in missing_dirs(posixpath.dirname(rel), (0, 0)):
                tar.add(made)
                count += 1
            entry = TarEntry(rel.encode(), tarfile.REGTYPE, mode=member.mode & 0o7777,
                             uid=member.uid, gid=member.gid,
                             mtime_ns=int(member.mtime) * 10**9 if member.mtime else now)
            data = None
            if member.isdir():
                entry.type, entry.name = tarfile.DIRTYPE, (rel + "/").encode()
            elif member.isreg():
                entry.size, data = member.size, source.extractfile(member)
            elif member.issym():
                entry.type, entry.linkname = tarfile.SYMTYPE, os.fsencode(member.linkname)
            elif member.islnk():
                entry.type, entry.linkname = tarfile.LNKTYPE, inside(member.linkname).encode()
            elif member.ischr() or member.isblk() or member.isfifo():
                entry.type = member.type
                entry.devmajor, entry.devminor = member.devmajor, member.devminor
            else:
                continue
            tar.add(entry, data)
            count += 1
    return count
