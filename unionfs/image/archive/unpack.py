"""Unpacking one layer tar (hostile input) into a fresh layer directory, in a form pyunion mounts.

Every name is resolved component by component from the layer's root with ``O_NOFOLLOW`` directory
descriptors, so nothing is ever created, changed or followed outside the layer: ``..`` and
absolute names are refused, a path through a symlink (planted by the same archive or not) is
refused, and hard links may only name an earlier file of the same layer.

Whiteouts are written in one of two forms:

* ``overlay`` (as root): ``.wh.NAME`` becomes a 0/0 character device ``NAME`` and
  ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr, so kernel overlayfs can mount a stack
  of store layers too;
* ``oci`` (an ordinary user, who cannot make devices): the ``.wh.`` files are kept as they are,
  which the pyunion mount reads as whiteouts.

A whiteout hides names of the layers below only, never an entry of its own layer; a directory
that replaces a whited-out name in the same layer is made opaque (its lower contents are gone).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import BinaryIO

import zstandard

from unionfs.fs import override
from unionfs.fs.ondisk import OCI_OPAQUE_MARKER as OPAQUE_MARKER
from unionfs.fs.ondisk import (
    WHITEOUT_PREFIX,
    is_private_xattr,
    is_whiteout,
    read_dir_markers,
)
from unionfs.image.archive.compression import DecompressingReader
from unionfs.image.errors import ImageError
from unionfs.image.limits import Limits

COPY_CHUNK = 1 << 20
# tarfile's stream reader slices its whole buffer on every read, a 512-byte header included: a
# 1 MiB buffer cost 160 µs an entry (parsing 10,000 small files: 2.0 s against 0.43 s at 64 KiB).
TAR_BUFFER = 1 << 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FD_CACHE_SIZE = 128


class LayerError(ImageError):
    pass


@dataclass
class LayerDigests:
    """What streaming a layer blob measured: its digest as stored and its diff_id."""

    blob_digest: str
    blob_size: int
    diff_id: str
    tar_size: int
    compression: str
    entries: int = 0


DataOpener = Callable[[], "BinaryIO | None"]


@dataclass
class _DirAttrs:
    path: str
    member: tarfile.TarInfo


@dataclass
class _Counter:
    limit: int
    what: str
    count: int = 0

    def add(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise LayerError(f"{self.what} exceeds the limit of {self.limit:,}")


def normalize_name(name: str) -> str:
    """The entry's path relative to the layer root ('' for the root); LayerError if it escapes."""
    if name.startswith("/"):
        raise LayerError(f"entry {name!r} has an absolute path")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerError(f"entry {name!r} has a '..' component (it would escape the layer)")
        parts.append(part)
    return "/".join(parts)


def _ns_times(member: tarfile.TarInfo) -> tuple[int, int]:
    pax = member.pax_headers
    mtime = _pax_time(pax.get("mtime")) if "mtime" in pax else int(member.mtime) * 10**9
    atime = _pax_time(pax.get("atime")) if "atime" in pax else mtime
    return atime, mtime


def _pax_time(value: str | None) -> int:
    try:
        return int(Decimal(value or "0") * 10**9)
    except ArithmeticError:
        return 0


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    found = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            if is_private_xattr(name):
                continue  # overlay markers in a tar would let a layer plant redirects
            found[name] = value.encode("utf-8", "surrogateescape")
    return found


@dataclass
class LayerWriter:
    """Applies the entries of one layer tar under ``root`` (a new, empty directory)."""

    root: str
    whiteout_format: str  # "overlay" or "oci"
    limits: Limits
    parents: list[str] = field(default_factory=list)  # layer dirs below, top-most first
    before_finish: Callable[[], None] | None = None     # waits until ``parents`` are complete
    as_root: bool = field(default_factory=lambda: os.geteuid() == 0)
    # a directory holding this very layer's files already (a committed snapshot of containerd
    # that unpacked it, unionfs/image/snapshotter/sharing.py): regular files are made hard
    # links of its files instead of written, once their attributes are checked (root only)
    files_from: str | None = None

    def __post_init__(self) -> None:
        self._root_fd = os.open(self.root, _DIR_FLAGS)
        self._fds: dict[str, int] = {}
        self._files: set[str] = set()      # non-directories made by this layer (link targets)
        self._made: set[str] = set()       # every name made by this layer
        self._whiteouts: set[str] = set()  # overlay-form whiteouts made by this layer
        self._dirs: list[_DirAttrs] = []
        self._implicit: set[str] = {""}    # directories made only as parents of entries
        self._opaque_xattr = "trusted.overlay.opaque" if self.as_root else "user.overlay.opaque"
        if self.files_from is not None and not self.as_root:
            raise LayerError("files are linked from elsewhere only into a store of root's")

    def close(self) -> None:
        self._drop_fds()
        os.close(self._root_fd)

    # ---------------------------------------------------------------------- walking

    def _drop_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _dir_fd(self, path: str, *, create: bool, entry: str) -> int:
        """A descriptor of the directory ``path`` in the layer, never through a symlink."""
        if path == "":
            return self._root_fd
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        parent, _, name = path.rpartition("/")
        parent_fd = self._dir_fd(parent, create=create, entry=entry)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise LayerError(
                    f"entry {entry!r}: {path!r} does not exist in this layer") from None
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            self._made.add(path)
            self._implicit.add(path)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if path in self._whiteouts and create:  # a whited-out name becomes a new directory
                os.unlink(name, dir_fd=parent_fd)
                self._whiteouts.discard(path)
                os.mkdir(name, 0o755, dir_fd=parent_fd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                self._set_opaque(fd)
            else:
                kind = "a symlink" if e.errno == errno.ELOOP else "not a directory"
                raise LayerError(f"entry {entry!r}: {path!r} is {kind} "
                                 "(a layer may not write through it)") from None
        if len(self._fds) >= _FD_CACHE_SIZE:
            self._drop_fds()
        self._fds[path] = fd
        return fd

    def _forget_below(self, path: str) -> None:
        if any(p == path or p.startswith(path + "/") for p in self._fds):
            self._drop_fds()

    # ---------------------------------------------------------------------- entries

    def apply(self, tar: tarfile.TarFile, counter: _Counter) -> None:
        """Applies every entry of a streamed tar, then finishes the layer."""
        while (member := tar.next()) is not None:
            tar.members.clear()  # a streamed tar need not remember millions of members
            counter.add(1)
            self.add(member, functools.partial(tar.extractfile, member))
        self.finish()

    def finish(self) -> None:
        """After the last entry: directories get their attributes (``before_finish`` first)."""
        if self.before_finish is not None:
            self.before_finish()
        self._finish_dirs()

    def add(self, member: tarfile.TarInfo, open_data: DataOpener) -> None:
        """Applies one entry; ``open_data()`` gives a regular file's content (read at once).

        The tar stream's entries come through here, and so do the entries ``commit`` generates
        from an upper (``archive.generate.write_layer_tar``'s mirror), so that a committed layer
        is unpacked exactly as its tar would be, without parsing the tar back."""
        path = normalize_name(member.name)
        if path == "":
            if member.isdir():
                self._dirs.append(_DirAttrs("", member))
                self._implicit.discard("")
            return
        parent, _, name = path.rpartition("/")
        if any(part.startswith(WHITEOUT_PREFIX) for part in parent.split("/") if part):
            raise LayerError(f"entry {member.name!r} is inside a whiteout name")
        if name.startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(member, parent, name)
            return
        parent_fd = self._dir_fd(parent, create=True, entry=member.name)
        self._clear_for(member, parent_fd, path, name)
        self._create(member, open_data, parent_fd, path, name)
        self._made.add(path)

    def _under_own_file(self, path: str) -> bool:
        """Whether ``path`` or a parent of it is a non-directory this layer made."""
        parts = path.split("/") if path else []
        return any("/".join(parts[:i + 1]) in self._files for i in range(len(parts)))

    def _apply_whiteout(self, member: tarfile.TarInfo, parent: str, name: str) -> None:
        if self._under_own_file(parent):
            # umoci writes whiteouts below a directory it replaced with a file; that file
            # already hides everything below it, as containers/storage concludes too
            return
        parent_fd = self._dir_fd(parent, create=True, entry=member.name)
        if name == OPAQUE_MARKER:
            if self.whiteout_format == "overlay":
                self._set_opaque(parent_fd)
            else:
                self._write_marker(parent_fd, name, member)
            return
        hidden = name[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
            raise LayerError(f"entry {member.name!r} is not a valid whiteout")
        hidden_path = f"{parent}/{hidden}" if parent else hidden
        if self.whiteout_format == "oci":
            self._write_marker(parent_fd, name, member)
            return
        if hidden_path in self._made:
            # A whiteout hides lower layers only, never this layer's own entry; a directory
            # of this layer no longer merges with the lower one it replaces.
            if hidden_path not in self._files:
                self._set_opaque(self._dir_fd(hidden_path, create=False, entry=member.name))
            return
        self._remove_existing(parent_fd, hidden, hidden_path)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
        if self.as_root:
            os.chown(hidden, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        self._whiteouts.add(hidden_path)

    def _write_marker(self, parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o000, dir_fd=parent_fd)
        os.close(fd)

    def _set_opaque(self, dir_fd: int) -> None:
        os.setxattr(f"/proc/self/fd/{dir_fd}", self._opaque_xattr, b"y")

    def _clear_for(self, member: tarfile.TarInfo, parent_fd: int, path: str, name: str) -> None:
        """Makes room for ``member``: a directory over a directory keeps it (attributes only);
        anything else over an existing name replaces it."""
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if member.isdir() and stat.S_ISDIR(st.st_mode):
            return
        was_whiteout = path in self._whiteouts
        self._remove_existing(parent_fd, name, path)
        if was_whiteout and member.isdir():
            self._whiteouts.add(path)  # _create makes the new directory opaque

    def _remove_existing(self, parent_fd: int, name: str, path: str) -> None:
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget_below(path)
            shutil.rmtree(name, dir_fd=parent_fd)
            prefix = path + "/"
            self._files = {p for p in self._files if not p.startswith(prefix)}
            self._made = {p for p in self._made if not p.startswith(prefix)}
            self._dirs = [d for d in self._dirs if not d.path.startswith(prefix)
                          and d.path != path]
            self._implicit = {p for p in self._implicit if not p.startswith(prefix)
                              and p != path}
        else:
            os.unlink(name, dir_fd=parent_fd)
        self._files.discard(path)
        self._whiteouts.discard(path)

    def _create(self, member: tarfile.TarInfo, open_data: DataOpener, parent_fd: int,
                path: str, name: str) -> None:
        if member.isreg():
            self._create_file(member, open_data, parent_fd, name)
            self._files.add(path)
        elif member.isdir():
            if not _exists(parent_fd, name):
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            if path in self._whiteouts:
                self._whiteouts.discard(path)
                fd = self._dir_fd(path, create=False, entry=member.name)
                self._set_opaque(fd)
            self._dirs.append(_DirAttrs(path, member))
            self._implicit.discard(path)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent_fd)
            self._set_attrs(member, parent_fd, name, symlink=True)
            self._files.add(path)
        elif member.islnk():
            self._create_hardlink(member, parent_fd, path, name)
        elif member.ischr() or member.isblk():
            if self.as_root:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                         dir_fd=parent_fd)
            else:  # an empty file, its xattr says what it is (see unionfs/fs/override.py)
                override.make_device_stand_in(name, dir_fd=parent_fd)
            self._set_attrs(member, parent_fd, name)
            self._files.add(path)
        elif member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
            self._set_attrs(member, parent_fd, name)
            self._files.add(path)
        else:
            raise LayerError(f"entry {member.name!r} has an unsupported type {member.type!r}")

    def _create_file(self, member: tarfile.TarInfo, open_data: DataOpener, parent_fd: int,
                     name: str) -> None:
        if self.files_from is not None:
            self._link_file(member, parent_fd, name)
            return
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent_fd)
        try:
            source = open_data()
            if source is not None and member.size:
                _copy_to_fd(source, fd, member.size)
            self._set_fd_attrs(member, fd)
        finally:
            os.close(fd)

    def _link_file(self, member: tarfile.TarInfo, parent_fd: int, name: str) -> None:
        """The entry's file as a hard link of the same path below ``files_from`` (reached
        without following a symlink), if that is a regular file with the entry's size, owner,
        mode, mtime and xattrs; LayerError if not."""
        path = normalize_name(member.name)
        parent, _, own_name = path.rpartition("/")
        assert self.files_from is not None
        source_fd = os.open(self.files_from, _DIR_FLAGS)
        try:
            for part in parent.split("/") if parent else []:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=source_fd)
                os.close(source_fd)
                source_fd = next_fd
            st = os.stat(own_name, dir_fd=source_fd, follow_symlinks=False)
            found = (stat.S_IFMT(st.st_mode), st.st_size, st.st_uid, st.st_gid,
                     stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            wanted = (stat.S_IFREG, member.size, member.uid, member.gid, member.mode & 0o7777,
                      _ns_times(member)[1])
            at = f"/proc/self/fd/{source_fd}/{own_name}"
            xattrs = {key: os.getxattr(at, key, follow_symlinks=False)
                      for key in os.listxattr(at, follow_symlinks=False)}
            if found != wanted or xattrs != _xattrs(member):
                raise LayerError(f"entry {member.name!r}: the file to link differs from it")
            os.link(own_name, name, src_dir_fd=source_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
        finally:
            os.close(source_fd)

    def _create_hardlink(self, member: tarfile.TarInfo, parent_fd: int, path: str,
                         name: str) -> None:
        target = normalize_name(member.linkname)
        if target not in self._files:
            raise LayerError(f"entry {member.name!r} is a hard link to {member.linkname!r}, "
                             "which is not an earlier file of the same layer")
        target_parent, _, target_name = target.rpartition("/")
        target_fd = self._dir_fd(target_parent, create=False, entry=member.name)
        os.link(target_name, name, src_dir_fd=target_fd, dst_dir_fd=parent_fd,
                follow_symlinks=False)
        self._files.add(path)

    # ---------------------------------------------------------------------- attributes

    def _set_fd_attrs(self, member: tarfile.TarInfo, fd: int) -> None:
        if self.as_root:
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
        else:
            self._record_owner(member, fd)
            os.fchmod(fd, override.stored_mode(_st_mode(member)))
        for key, value in _xattrs(member).items():  # after chown (it drops capabilities)
            self._setxattr(member, f"/proc/self/fd/{fd}", key, value, follow=True)
        os.utime(fd, ns=_ns_times(member))

    def _set_attrs(self, member: tarfile.TarInfo, parent_fd: int, name: str,
                   symlink: bool = False) -> None:
        if self.as_root:
            os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
            if not symlink:
                os.chmod(name, member.mode & 0o7777, dir_fd=parent_fd)
        elif not symlink:
            mode = _st_mode(member)
            if stat.S_ISREG(os.lstat(name, dir_fd=parent_fd).st_mode):  # (a device stand-in)
                self._record_owner(member, f"/proc/self/fd/{parent_fd}/{name}")
            os.chmod(name, override.stored_mode(mode), dir_fd=parent_fd)
        for key, value in _xattrs(member).items():
            self._setxattr(member, f"/proc/self/fd/{parent_fd}/{name}", key, value, follow=False)
        os.utime(name, ns=_ns_times(member), dir_fd=parent_fd, follow_symlinks=False)

    def _record_owner(self, member: tarfile.TarInfo, target: str | int) -> None:
        """An ordinary user keeps owner, mode and device numbers in the override xattr."""
        rdev = os.makedev(member.devmajor, member.devminor) if member.isdev() else 0
        try:
            override.write(target, member.uid, member.gid, _st_mode(member), rdev)
        except OSError as e:
            raise LayerError(f"entry {member.name!r}: cannot record its owner in "
                             f"{override.XATTR}: {e.strerror}") from None

    def _setxattr(self, member: tarfile.TarInfo, path: str, key: str, value: bytes,
                  follow: bool) -> None:
        if not self.as_root and not key.startswith("user."):
            return  # trusted.* and security.* need privileges an ordinary user lacks
        try:
            os.setxattr(path, key, value, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.EPERM and not follow and key.startswith("user."):
                return  # user.* xattrs are not allowed on symlinks and special files
            raise LayerError(f"entry {member.name!r}: cannot set xattr {key}: "
                             f"{e.strerror}") from None

    def _finish_dirs(self) -> None:
        """Directory attributes last, deepest first (making children changed their mtimes).

        A directory the tar never names (only made as a parent of an entry) takes the
        attributes of the same directory in the layers below, as if the layer had been
        applied onto them: otherwise its fresh owner, mode and mtime would override the
        lower directory's in the merged view (a ``/tmp`` of mode 0755, say).
        """
        for path in sorted(self._implicit, key=lambda p: p.count("/"), reverse=True):
            below = find_lower_dir(self.parents, path)
            if below is not None:
                fd = self._root_fd if path == "" else self._dir_fd(path, create=False,
                                                                   entry=path)
                _copy_dir_attrs(below, fd, self.as_root)
        for item in sorted(self._dirs, key=lambda d: d.path.count("/"), reverse=True):
            if item.path == "":
                fd = self._root_fd
                self._set_fd_attrs(item.member, fd)
                continue
            fd = self._dir_fd(item.path, create=False, entry=item.member.name)
            self._set_fd_attrs(item.member, fd)


_TAR_TYPES = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
              tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
              tarfile.FIFOTYPE: stat.S_IFIFO}


def _st_mode(member: tarfile.TarInfo) -> int:
    """The st_mode (type and permissions) a tar entry describes."""
    return _TAR_TYPES.get(member.type, stat.S_IFREG) | (member.mode & 0o7777)


def _is_whiteout_in(layer: str, parent: str, name: str) -> bool:
    """Whether ``layer`` hides ``parent/name`` (either whiteout form)."""
    directory = os.path.join(layer, parent) if parent else layer
    try:
        if is_whiteout(os.lstat(os.path.join(directory, name))):
            return True
    except OSError:
        pass
    return os.path.lexists(os.path.join(directory, WHITEOUT_PREFIX + name))


def _is_opaque_dir(path: str) -> bool:
    """Either opaque form: the xattr (as the mount reads it) or the OCI marker file."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    return read_dir_markers(path, follow_redirects=False).opaque or \
        os.path.lexists(os.path.join(path, OPAQUE_MARKER))


def find_lower_dir(layers: list[str], path: str) -> str | None:
    """The directory ``path`` as the stack ``layers`` (top-most first) shows it: the path of
    the top-most layer's copy, or None if no layer shows it as a directory."""
    found = find_in_stack(layers, path)
    return found if found is not None and os.path.isdir(found) and \
        not os.path.islink(found) else None


def find_in_stack(layers: list[str], path: str) -> str | None:
    """Where the merged view of ``layers`` (top-most first) finds ``path``: the top-most
    layer's copy, or None if it is absent or hidden by a whiteout or an opaque directory."""
    parts = path.split("/") if path else []
    for layer in layers:
        current = layer
        hidden = opaque_above = False
        for i, part in enumerate(parts):
            if _is_whiteout_in(layer, "/".join(parts[:i]), part):
                hidden = True
                break
            current = os.path.join(current, part)
            if i < len(parts) - 1 and _is_opaque_dir(current) and os.path.isdir(current):
                opaque_above = True
        if hidden:
            return None
        try:
            st = os.lstat(current)
        except OSError:
            if opaque_above:
                return None
            continue
        if is_whiteout(st):
            return None  # a whiteout of the name itself
        return current
    return None


def _copy_dir_attrs(source: str, fd: int, as_root: bool) -> None:
    st = os.lstat(source)
    if as_root:
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(OSError):
        for key in os.listxattr(source, follow_symlinks=False):
            if is_private_xattr(key) or (not as_root and
                                                          not key.startswith("user.")):
                continue
            os.setxattr(fd, key, os.getxattr(source, key, follow_symlinks=False))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _copy_to_fd(source: BinaryIO, fd: int, size: int) -> None:
    remaining = size
    while remaining > 0:
        chunk = source.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise LayerError("unexpected end of data inside a file")
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        remaining -= len(chunk)


def unpack_layer(blob: BinaryIO, target: str, *, whiteout_format: str, limits: Limits,
                 what: str, parents: list[str] | None = None,
                 before_finish: Callable[[], None] | None = None,
                 files_from: str | None = None) -> LayerDigests:
    """Streams ``blob`` (compressed or not) into ``target`` (an empty directory) and returns its
    measured digests. The caller compares them with the descriptor and the config's diff_id.
    ``files_from``: regular files linked from there (``LayerWriter.files_from``).

    Raises LayerError (with ``what`` naming the layer) for any malformed or hostile input.
    """
    blob_hash, plain_hash = hashlib.sha256(), hashlib.sha256()
    sizes = {"blob": 0}
    plain = _Counter(limits.max_layer_bytes, f"{what}: uncompressed size")

    def on_raw(chunk: bytes) -> None:
        blob_hash.update(chunk)
        sizes["blob"] += len(chunk)

    def on_plain(chunk: bytes) -> None:
        plain.add(len(chunk))
        plain_hash.update(chunk)

    entries = _Counter(limits.max_layer_entries, f"{what}: number of entries")
    writer = LayerWriter(target, whiteout_format, limits, parents or [], before_finish,
                         files_from=files_from)
    reader: DecompressingReader | None = None
    try:
        reader = DecompressingReader(blob, on_raw, on_plain, background=True)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=TAR_BUFFER) as tar:  # type: ignore[call-overload]
            writer.apply(tar, entries)
            end_of_members = tar.offset
        reader.drain()
        if plain.count < end_of_members + tarfile.BLOCKSIZE:
            # tarfile ends quietly where the data ends on a header boundary; a whole tar
            # closes with zero blocks
            raise LayerError("the tar stream is truncated (no end-of-archive marker)")
    except LayerError as e:
        raise LayerError(f"{what}: {e}" if not str(e).startswith(what) else str(e)) from None
    except (tarfile.TarError, zlib.error, zstandard.ZstdError, EOFError) as e:
        raise LayerError(f"{what}: corrupt or truncated layer ({e})") from None
    except OSError as e:
        raise LayerError(f"{what}: cannot unpack: {e.strerror or e}") from None
    finally:
        writer.close()
        if reader is not None:
            reader.close()
    return LayerDigests(
        blob_digest="sha256:" + blob_hash.hexdigest(), blob_size=sizes["blob"],
        diff_id="sha256:" + plain_hash.hexdigest(), tar_size=plain.count,
        compression=reader.kind, entries=entries.count)
