"""Layer compression, recognised by magic bytes (a media type can lie): gzip, zstd or none."""

from __future__ import annotations

import hashlib
import zlib
from typing import BinaryIO

import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


def detect(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` for a stream starting with ``head``."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> None:
        pass


class _Unzstd:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._eof_seen = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._d.decompress(data))
            if self._d.eof:
                data = self._d.unused_data
                self._d = zstandard.ZstdDecompressor().decompressobj()
                self._eof_seen = True
            else:
                self._eof_seen = False
                data = b""
        return b"".join(out)

    def finish(self) -> None:
        if not self._eof_seen:
            raise zstandard.ZstdError("truncated zstd stream")


class DecompressingReader:
    """A file-like reader of the decompressed bytes of ``raw`` (which is read in chunks).

    ``on_raw`` sees every compressed chunk (to hash the blob as stored) and ``on_plain`` every
    decompressed chunk (to hash the diff_id); both are checked by the caller at the end.
    """

    def __init__(self, raw: BinaryIO, on_raw=None, on_plain=None) -> None:
        self._raw = raw
        self._on_raw = on_raw
        self._on_plain = on_plain
        head = raw.read(CHUNK)
        self.kind = detect(head)
        self._decoder = {"gzip": _GzipDecoder, "zstd": _Unzstd, "none": _Identity}[self.kind]()
        self._pending = head
        self._buffer = b""
        self._offset = 0
        self._eof = False

    def _fill(self) -> bool:
        while not self._eof:
            chunk, self._pending = (self._pending, b"") if self._pending else (
                self._raw.read(CHUNK), b"")
            if not chunk:
                self._eof = True
                self._decoder.finish()
                return False
            if self._on_raw:
                self._on_raw(chunk)
            plain = self._decoder.feed(chunk)
            if plain:
                if self._on_plain:
                    self._on_plain(plain)
                self._buffer = self._buffer[self._offset:] + plain
                self._offset = 0
                return True
        return False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer[self._offset:]]
            self._buffer, self._offset = b"", 0
            while self._fill():
                parts.append(self._buffer)
                self._buffer = b""
            return b"".join(parts)
        while len(self._buffer) - self._offset < size and self._fill():
            pass
        data = self._buffer[self._offset:self._offset + size]
        self._offset += len(data)
        return data

    def drain(self) -> None:
        """Reads to the end of the stream (tar's trailing zero blocks and padding included)."""
        while self._fill():
            self._buffer, self._offset = b"", 0
        self._buffer, self._offset = b"", 0


class _GzipDecoder:
    """gzip members one after another; the stream must end at a member's end."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)
        self._in_member = False

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_member = True
            out.append(self._d.decompress(data))
            if self._d.eof:
                data = self._d.unused_data
                self._d = zlib.decompressobj(wbits=31)
                self._in_member = False
            else:
                data = b""
        return b"".join(out)

    def finish(self) -> None:
        if self._in_member:
            raise zlib.error("truncated gzip stream")


def compress_gzip(level: int = 1):
    """A gzip compressor object (``compress``/``flush``) writing one gzip member."""
    return zlib.compressobj(level, zlib.DEFLATED, 31)


class HashingGzipFile:
    """A write-only file: hashes the plain tar (diff_id) and writes it gzip-compressed."""

    def __init__(self, out) -> None:
        self._out = out
        self._z = compress_gzip(1)
        self.plain = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.plain.update(data)
        self._out.write(self._z.compress(data))
        return len(data)

    def finish(self) -> None:
        self._out.write(self._z.flush())
