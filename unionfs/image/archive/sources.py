"""Where an archive's files are read from: a directory (an OCI layout) or a tar file.

Both answer the same questions by relative path, never leaving the archive: a name with ``..``
or a leading ``/`` is refused, a directory source does not follow symlinks, and a tar source
serves regular members only, each through its own descriptor (``pread``), so layers can be read
by several threads at once.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from typing import BinaryIO

from unionfs.image.errors import ImageError


def _clean(path: str) -> str:
    if path.startswith("/"):
        raise ImageError(f"archive names an absolute path {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"archive names a path outside itself: {path!r}")
    return "/".join(parts)


class Source:
    label: str

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def open(self, path: str) -> BinaryIO:
        raise NotImplementedError

    def read_json_bytes(self, path: str, limit: int) -> bytes:
        if not self.exists(path):
            raise ImageError(f"{self.label}: {path} is missing")
        size = self.size(path)
        if size > limit:
            raise ImageError(f"{self.label}: {path} is {size:,} bytes, more than the "
                             f"limit of {limit:,} for a JSON document")
        with self.open(path) as f:
            return f.read()

    def close(self) -> None:
        pass


class DirectorySource(Source):
    def __init__(self, root: str) -> None:
        self.root = root
        self.label = root

    def _full(self, path: str) -> str:
        return os.path.join(self.root, _clean(path))

    def _stat(self, path: str) -> os.stat_result | None:
        try:
            st = os.lstat(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st

    def exists(self, path: str) -> bool:
        st = self._stat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def size(self, path: str) -> int:
        st = self._stat(path)
        assert st is not None
        return st.st_size

    def open(self, path: str) -> BinaryIO:
        fd = os.open(self._full(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb", buffering=1 << 20)


class _Section(io.RawIOBase):
    """A read-only window of a file, read with pread (thread-safe, no shared offset)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._start, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._start + self._pos)
        if not data:
            raise ImageError("archive ends inside a file")
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class TarSource(Source):
    """An uncompressed tar file of an archive (docker-archive, OCI archive)."""

    def __init__(self, path: str, label: str | None = None) -> None:
        self.path = path
        self.label = label or path
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    name = _clean(member.name)
                    self._members[name] = member
                    tar.members.clear()
        except tarfile.TarError as e:
            raise ImageError(f"{self.label}: not a readable tar archive ({e})") from None
        except ImageError as e:
            raise ImageError(f"{self.label}: {e}") from None

    def _member(self, path: str) -> tarfile.TarInfo | None:
        member = self._members.get(_clean(path))
        if member is None or not member.isreg():
            return None
        return member

    def exists(self, path: str) -> bool:
        return self._member(path) is not None

    def size(self, path: str) -> int:
        member = self._member(path)
        assert member is not None
        return member.size

    def open(self, path: str) -> BinaryIO:
        member = self._member(path)
        if member is None:
            raise ImageError(f"{self.label}: {path} is missing")
        if member.sparse:
            raise ImageError(f"{self.label}: {path} is stored sparse, which is not supported")
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(fd).st_size
        if member.offset_data + member.size > size:
            os.close(fd)
            raise ImageError(f"{self.label}: truncated archive ({path} is cut short)")
        return io.BufferedReader(_Section(fd, member.offset_data, member.size), 1 << 20)
